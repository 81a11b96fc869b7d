"""Where an extraction's answers come from (ExtractConfig.answers): the model's own, answering
under the emotion's prompt ("generated"); ours, read teacher-forced ("written",
data/written_answers.jsonl); or begun by us and continued by the model ("prefill": our
answer's first sentence; "fewshot": two of our exchanges before the question). Each gives a
Batch of neutral rows, then emotional rows, of the same questions, as `generate` makes it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from emosteer import data
from emosteer.errors import BadInputError
from emosteer.generation import Batch, chat_prompt, generate, render_chat

if TYPE_CHECKING:
    from emosteer.extraction.extract import ExtractConfig

__all__ = ["answer_batch", "first_sentence", "teacher_forced", "written_batch"]


def answer_batch(model, tokenizer, emotion: str, chunk: list[data.Query],
                 cfg: ExtractConfig) -> Batch:
    """Neutral rows, then emotion rows, of the same queries (cfg.answers): generated, written
    by us, or begun by us (prefill, few-shot) and generated on.

    Example:
        batch = answer_batch(model, tok, "joy", queries[:8], ExtractConfig(answers="prefill"))
    """
    if cfg.answers == "written":
        return written_batch(model, tokenizer, chunk)
    written = data.written_answers() if cfg.answers != "generated" else {}
    prompts, openings = [], []
    elicit = cfg.spec(emotion).elicit if cfg.dataset == "emotion_specs" else None
    for asked in (None, emotion):
        for q in chunk:  # prefill, few-shot: our text carries the emotion, not the prompt
            user, system = data.elicitation(cfg.dataset, q.question,
                                            asked if cfg.answers == "generated" else None,
                                            elicit)
            messages = [{"role": "system", "content": system}] if system else []
            if cfg.answers == "fewshot":
                messages += _examples(written, q, asked is not None)
            prompt = render_chat(tokenizer, [*messages, {"role": "user", "content": user}])
            opening = ""
            if cfg.answers == "prefill":
                answer = written[q.id]
                opening = first_sentence(answer.emotional if asked else answer.neutral)
            prompts.append(prompt + opening)
            openings.append(opening)
    batch = generate(model, tokenizer, prompts, cfg.generation)
    if cfg.answers == "prefill":  # our opening is part of the answer that is read
        batch = _opening_in_response(tokenizer, batch, openings)
    return batch


def written_batch(model, tokenizer, chunk: list[data.Query]) -> Batch:
    """Our neutral answers, then our emotional ones, each after the neutral prompt (left
    padded, answers right padded): a Batch as generate() makes, read teacher-forced."""
    written = data.written_answers()
    missing = [q.id for q in chunk if q.id not in written]
    if missing:
        raise BadInputError(f"no written answers for {', '.join(missing[:3])}: "
                            "data/written_answers.jsonl answers every emotion_query question")
    texts = [written[q.id].neutral for q in chunk] + [written[q.id].emotional for q in chunk]
    return teacher_forced(model, tokenizer, [q.question for q in chunk] * 2, texts)


def teacher_forced(model, tokenizer, questions: list[str], answers: list[str]) -> Batch:
    """Each answer after its question under the neutral prompt (prompts left padded, answers
    right padded): a Batch as generate() makes it, its response mask over the answers."""
    prompts = [tokenizer(chat_prompt(tokenizer, *data.elicitation("emotion_query", q, None)),
                         add_special_tokens=False)["input_ids"] for q in questions]
    ids_of = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in answers]
    p, a = max(map(len, prompts)), max(map(len, ids_of))
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(answers), p + a), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    resp = torch.zeros_like(ids)
    for i, (prompt, answer) in enumerate(zip(prompts, ids_of, strict=True)):
        ids[i, p - len(prompt):p] = torch.tensor(prompt)
        ids[i, p:p + len(answer)] = torch.tensor(answer)
        att[i, p - len(prompt):p + len(answer)] = 1
        resp[i, p:p + len(answer)] = 1
    device = model.device
    return Batch(ids.to(device), att.to(device), resp.to(device), p)


def first_sentence(text: str) -> str:
    """The answer's first sentence, with its end mark ("Ugh, not again! The..." -> "Ugh, not
    again!")."""
    ends = [i for i, c in enumerate(text) if c in ".!?" and (i + 1 == len(text)
                                                             or text[i + 1] == " ")]
    return text[:ends[0] + 1] if ends else text


def _examples(written: dict[str, data.WrittenAnswer], query: data.Query,
              emotional: bool) -> list[dict[str, str]]:
    """Two exchanges from our written answers to other questions of the same emotion."""
    pool = [q for q in data.load_queries("emotion_query", [query.emotion])
            if q.id != query.id and q.id in written]
    picked = random.Random(query.id).sample(pool, 2)
    return [m for q in picked for m in (
        {"role": "user", "content": q.question},
        {"role": "assistant",
         "content": written[q.id].emotional if emotional else written[q.id].neutral})]


def _opening_in_response(tokenizer, batch: Batch, openings: list[str]) -> Batch:
    """Mark each row's prefilled opening (the last tokens of its prompt) as response."""
    resp = batch.response_mask.clone()
    p = batch.prompt_len
    for i, opening in enumerate(openings):
        n = len(tokenizer(opening, add_special_tokens=False)["input_ids"]) if opening else 0
        resp[i, p - n:p] = 1
    return Batch(batch.input_ids, batch.attention_mask, resp, p)
