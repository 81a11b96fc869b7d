"""Scorers that need no emotion judge: fluency (perplexity) and topic consistency (embeddings)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from emosteer.generation import chat_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Perplexity:
    """Negative log-likelihood of each answer given its question, under an unsteered LM.

    The answer is scored after the chat prompt (question only, no system prompt), so PPL
    measures how natural the answer is as a reply, the same way for every condition. Never call
    it inside a steering block: the reference model must be unsteered.

    Args:
        model: the reference LM.
        tokenizer: its tokenizer.
        batch_size: answers per forward pass.

    Example:
        Perplexity(model, tok).score(["Hi?"], ["Hello there!"])  # [{"nll": ..., "tokens": 4}]
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 batch_size: int = 8):
        from emosteer.models import model_id

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.version = f"ppl:{model_id(model)}"

    @torch.no_grad()
    def score(self, questions: Sequence[str], answers: Sequence[str]) -> list[dict]:
        """[{"nll": summed NLL in nats, "tokens": answer tokens}] per pair (tokens 0: empty)."""
        out: list[dict] = []
        tok = self.tokenizer
        for i in range(0, len(questions), self.batch_size):
            rows = []
            chunk = zip(questions[i:i + self.batch_size], answers[i:i + self.batch_size],
                        strict=True)
            for q, a in chunk:
                prompt = tok(chat_prompt(tok, q, None), add_special_tokens=False)["input_ids"]
                answer = tok(a, add_special_tokens=False)["input_ids"] if a.strip() else []
                rows.append((list(prompt), list(answer)))
            out.extend(self._batch(rows))
        return out

    def _batch(self, rows: list[tuple[list[int], list[int]]]) -> list[dict]:
        width = max(len(p) + len(a) for p, a in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (batch, pos), left padded
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)  # answer positions
        for r, (p, a) in enumerate(rows):
            seq = p + a
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
            target[r, width - len(a):] = len(a) > 0
        device = next(self.model.parameters()).device
        from emosteer.generation import forward_kwargs

        logits = self.model(**forward_kwargs(self.model, ids.to(device),
                                             mask.to(device))).logits.float().cpu()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, pos-1, vocab)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]  # (batch, pos-1): token t+1 from t
        keep = target[:, 1:]
        return [{"nll": float(nll[r][keep[r]].sum()), "tokens": int(keep[r].sum())}
                for r in range(len(rows))]


def perplexity(nll: float, tokens: int) -> float | None:
    """exp(nll / tokens): the perplexity of summed NLL over `tokens` (None without tokens).

    Example:
        perplexity(math.log(2) * 4, 4)  # 2.0
    """
    return math.exp(nll / tokens) if tokens > 0 else None


class TopicSimilarity:
    """Topic consistency from MiniLM embeddings, calibrated against other questions.

    For an answer a to question q, the score is the share of reference questions p (all of
    emotion_query_plus except q) with cos(q, a) > cos(p, a): 1.0 when the answer is closer to
    its own question than to any other, 0.5 on average for an answer paired with a random
    question, whatever the raw cosine level. An empty answer scores 0.

    Args:
        reference: the questions an answer is compared with (default: all of EQ+).

    Example:
        TopicSimilarity().score(["How do I bake bread?"], ["Mix flour, water and salt..."])
    """

    def __init__(self, reference: Sequence[str] | None = None):
        from emosteer import data

        if reference is None:
            reference = [q.question for q in data.load_queries("emotion_query_plus")]
        self.reference = list(dict.fromkeys(reference))
        digest = hashlib.sha256("\n".join(self.reference).encode()).hexdigest()[:12]
        self.version = f"topic:minilm-rank:{digest}"
        self._ref: torch.Tensor | None = None

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        """One score in [0, 1] per (question, answer)."""
        from emosteer.judges.embedded import embed

        if self._ref is None:
            self._ref = embed(self.reference)
        ref = self._ref  # (refs, dim)
        q = embed(list(questions))  # (n, dim)
        a = embed([x or " " for x in answers])
        own = (q * a).sum(-1)  # (n,)
        other = a @ ref.T  # (n, refs)
        scores = []
        for i, question in enumerate(questions):
            keep = torch.tensor([r != question for r in self.reference])
            wins = (own[i] > other[i][keep]).float().mean()
            scores.append(float(wins) if answers[i].strip() else 0.0)
        return scores
