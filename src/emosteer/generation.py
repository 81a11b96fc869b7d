"""Batched chat generation with left padding; the response mask marks real response tokens."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from emosteer.errors import BadInputError
from emosteer.models import context_length, forward_params

# A positive temperature below this decodes greedily, on both servers: logits divided by a
# temperature of 1e-40 overflow to inf and the probabilities to NaN; 1e-5 is vLLM's own
# "temperature is zero" epsilon, and far above where float32 overflows (~1e-36 for logits of 100).
GREEDY_BELOW = 1e-5


def sampling_temperature(temperature: float) -> float:
    """The temperature decoding uses: 0 (greedy) for any below GREEDY_BELOW, else as given.

    Example:
        >>> sampling_temperature(1e-40), sampling_temperature(0.6)
        (0.0, 0.6)
    """
    return 0.0 if temperature < GREEDY_BELOW else temperature


@dataclass(frozen=True)
class GenerateConfig:
    """How answers are decoded, everywhere (extraction, experiments, CLI, server defaults).

    Example:
        cfg = GenerateConfig(max_new_tokens=96, do_sample=False)
    """

    max_new_tokens: int = 48  # enough for two or three sentences; the paper used up to 512
    do_sample: bool = True  # greedy decoding loops on the bundled 135M model
    temperature: float = 0.6  # the authors' setting
    top_p: float = 0.9  # the authors' setting
    repetition_penalty: float = 1.15  # keeps the small model out of loops (docs/method-notes.md)
    seed: int = 0  # sampling is seeded: the same settings give the same text
    batch_size: int = 16  # fits 2 CPU cores well; raise on a GPU


@dataclass(frozen=True)
class Batch:
    """Token ids of prompt + response with masks; every tensor is (batch, pos)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # 1 on prompt and response tokens, 0 on padding
    response_mask: torch.Tensor  # 1 on response tokens only (up to, not including, the end)
    prompt_len: int  # padded prompt length: responses start here

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its tensors on `device` (a reading model's)."""
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.response_mask.to(device), self.prompt_len)


def chat_prompt(tokenizer, question: str, system: str | None) -> str:
    """One user question (after an optional system prompt) as the model's chat prompt.

    Args:
        tokenizer: its chat template renders the prompt (a plain "User: ..." layout without).
        question: the user message.
        system: a system prompt, or None for none.

    Example:
        chat_prompt(tok, "How was your day?", None)
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}]
    return render_chat(tokenizer, messages)


def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """A conversation as the prompt the model answers next (its generation prompt added).

    The tokenizer's chat template renders it; a tokenizer without one gets lines of
    "Role: content" ending with "Assistant:".

    Args:
        tokenizer: the model's tokenizer.
        messages: [{"role": "system" | "user" | "assistant", "content": text}, ...].

    Example:
        render_chat(tok, [{"role": "user", "content": "Hi"}])  # "User: Hi\nAssistant:" untemplated
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def check_context(model, counts: Sequence[int], new_tokens: int = 0, what: str = "prompt",
                  hint: str = "shorten it") -> None:
    """Refuse, before the model runs, a text whose tokens plus `new_tokens` do not fit in
    the model's context (`models.context_length`): the check the server makes per request.

    Args:
        model: the model that would read the texts.
        counts: the token count of each text (as the model would read it).
        new_tokens: tokens to be generated after each.
        what: the texts' name in the message ("question", "text"...).
        hint: what to do, ending the message.

    Example:
        check_context(model, [len(tok(p)["input_ids"]) for p in prompts], 48, "question")
    """
    limit = context_length(model)
    for i, n in enumerate(counts, 1):
        if n + new_tokens > limit:
            plus = f" + {new_tokens} new tokens" if new_tokens else ""
            raise BadInputError(f"{what} {i} is {n} tokens{plus}, over this model's context "
                                f"of {limit} tokens: {hint}")


def prompt_tokens(tokenizer, prompts: Sequence[str]) -> list[int]:
    """The token count of each prompt as `generate` reads it (no special tokens added).

    Example:
        prompt_tokens(tok, [chat_prompt(tok, "Hi", None)])  # [31]
    """
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def encode(tokenizer, prompts: list[str], device) -> dict[str, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def generate(model, tokenizer, prompts: list[str], cfg: GenerateConfig) -> Batch:
    """One batched generate() call; returns prompt + response with masks."""
    enc = encode(tokenizer, prompts, model.device)
    sampling = ({"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
                if cfg.do_sample else {"do_sample": False, "temperature": None, "top_p": None})
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=cfg.max_new_tokens,
                             repetition_penalty=cfg.repetition_penalty,
                             pad_token_id=tokenizer.pad_token_id, top_k=None, **sampling)
    prompt_len = enc["input_ids"].shape[1]
    response = out[:, prompt_len:]  # (batch, new)
    ended = torch.zeros_like(response, dtype=torch.bool)
    for eos in eos_ids(model, tokenizer):
        ended |= response == eos
    response_mask = (ended.long().cumsum(-1) == 0).long()  # tokens before the first end token
    attention_mask = torch.cat([enc["attention_mask"], response_mask], dim=1)
    full_response_mask = torch.cat([torch.zeros_like(enc["attention_mask"]), response_mask], 1)
    return Batch(out, attention_mask, full_response_mask, prompt_len)


def decode_responses(tokenizer, batch: Batch) -> list[str]:
    """Each row's response as text. An answer cut off by max_new_tokens inside a character
    (the first bytes of an emoji) would end in U+FFFD: that half character is dropped."""
    texts = []
    for ids, mask in zip(batch.input_ids, batch.response_mask, strict=False):
        text = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        texts.append(text.strip().rstrip("\ufffd").rstrip())
    return texts


def forward_kwargs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Arguments for a plain forward pass that places tokens as generate() did (left padding)."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "position_ids" in forward_params(model):
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return kwargs


def eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end an answer: the model's generation config's and the tokenizer's.

    Args:
        model, tokenizer: from `emosteer.load_model`.

    Example:
        ended = token in eos_ids(model, tok)
    """
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def generate_text(model, tokenizer, questions: list[str], vector=None, alpha: float = 1.0,
                  system: str | None = None, cfg: GenerateConfig = GenerateConfig(),
                  **steer_options) -> list[str]:
    """Answer each question, steered by alpha * vector when a vector is given.

    Seeded: the same questions and settings give the same text, steered or not, so outputs
    at different alphas differ only by the steering.

    Args:
        model, tokenizer: from `emosteer.load_model`.
        questions: user messages, one answer each.
        vector: steer by alpha * vector (None: unsteered).
        alpha: steering strength.
        system: a system prompt (None: none).
        cfg: decoding settings.
        **steer_options: passed to `emosteer.steer` (layers, positions, mode...).

    Example:
        answers = generate_text(model, tok, ["How was your day?"], joy, alpha=1.0)
    """
    from emosteer.steering import steer

    torch.manual_seed(cfg.seed)
    prompts = [chat_prompt(tokenizer, q, system) for q in questions]
    context = steer(model, vector, alpha, **steer_options) if vector is not None else nullcontext()
    answers: list[str] = []
    with context:
        for i in range(0, len(prompts), cfg.batch_size):
            batch = generate(model, tokenizer, prompts[i:i + cfg.batch_size], cfg)
            answers.extend(decode_responses(tokenizer, batch))
    return answers
