"""Optimised emotion vectors: per-layer vectors trained by gradient descent, the model frozen.

The data are the answers extraction already generates: for each question, the neutral answer
and the emotional answer. A BiPO-style preference objective (bi-directional preference
optimisation of a steering vector): under the neutral prompt, adding the vector should raise
the log-likelihood of the emotional answer over the neutral one, relative to the unsteered
model, and subtracting it should do the reverse. A KL penalty keeps the steered next-token
distribution on the neutral answers close to the unsteered model's, for fluency:

    m(s) = s * ([lp_sv(chosen) - lp_0(chosen)] - [lp_sv(rejected) - lp_0(rejected)])
    loss = -log sigmoid(beta * m(+1)) + kl_weight * KL(p_0 || p_v)   (even steps)
    loss = -log sigmoid(beta * m(-1))                                (odd steps)

lp is the mean log-probability per answer token. No judge takes part: the loss sees token ids
and the model's logits only.

The prompt, except its last token, is read once without steering and its KV cache reused;
steering and gradients cover the last prompt token and the answer (the first answer token is
predicted from a steered position). Answers are cut to `max_answer_tokens`: the tone shows in
the first sentence, and the cost grows with every token.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from emosteer.errors import BadInputError
from emosteer.generation import forward_kwargs
from emosteer.hooks import hooked, retuple, untuple
from emosteer.models import Architecture, Site, cache_arg, cache_of, site_modules
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Init = Literal["mean_diff", "zero"]  # start from the given vector, or from zero


@dataclass(frozen=True)
class TrainConfig:
    """How the optimiser runs; every default was chosen on the method pilot
    (docs/results.md; its rows are reproduced by `emosteer experiment frontier --method trained`).

    Example:
        TrainConfig(steps=100, lr=0.02, kl_weight=0.5)
    """

    steps: int = 150  # a few hundred steps per emotion fit in minutes on 2 CPU cores
    lr: float = 0.02  # Adam, in units of the layer's per-coordinate activation RMS
    beta: float = 2.0  # preference temperature on per-token log-likelihood margins
    kl_weight: float = 1.0  # fluency: KL(unsteered || steered) on the neutral answers
    bidirectional: bool = True  # BiPO: every other step, the negated vector must prefer the
    # neutral answer (alternating halves the cost of a step; the KL term is on + steps)
    pairs_per_step: int = 1  # questions per step (2 rows: emotional, neutral answer); with 1,
    # each prompt's KV cache is read once and kept, so a step reads only the answers
    max_answer_tokens: int = 16  # answers are cut here: the tone shows early, cost is linear
    init: Init = "mean_diff"  # start from the extracted vector (faster, stabler than zero)
    seed: int = 0  # the order of the pairs

    def __post_init__(self) -> None:
        if self.steps < 1 or self.pairs_per_step < 1 or self.max_answer_tokens < 1:
            raise BadInputError("steps, pairs_per_step and max_answer_tokens must be >= 1")
        if not (self.lr > 0 and self.beta > 0 and self.kl_weight >= 0):
            raise BadInputError("lr and beta must be > 0 and kl_weight >= 0")
        if self.init not in ("mean_diff", "zero"):
            raise BadInputError(f"init={self.init!r}: use 'mean_diff' or 'zero'")


@dataclass(frozen=True)
class PreferencePair:
    """Token ids of one question's prompt (the neutral one) and its two answers."""

    prompt: tuple[int, ...]  # the chat prompt, generation prompt included
    chosen: tuple[int, ...]  # the emotional answer (end token excluded)
    rejected: tuple[int, ...]  # the neutral answer to the same question


@dataclass
class TrainResult:
    """The trained vector and the per-step curves (mean over the step's pairs)."""

    vector: EmotionVector
    losses: list[float]
    margins: list[float]  # m(+1): the steered preference for the emotional answer
    kls: list[float]
    seconds: float


def train_vector(model: PreTrainedModel, pairs: Sequence[PreferencePair], init: EmotionVector,
                 cfg: TrainConfig = TrainConfig(), scales: Sequence[float] | None = None,
                 pad_id: int = 0, arch: Architecture | None = None) -> TrainResult:
    """Train init's layers (the same layers, the same site) on the preference pairs.

    Args:
        model: the frozen model (its weights and train/eval mode are restored on exit).
        pairs: neutral prompt, emotional answer, neutral answer (see PreferencePair).
        init: the starting vector (init="zero" keeps only its layers and metadata).
        cfg: steps, learning rate, beta, KL weight, seed...
        scales: per-layer typical activation norm at the site (vector metadata site_norms):
            the parameters are in units of norm / sqrt(hidden), so one lr suits every layer.
        pad_id: the tokenizer's padding id.
        arch: overrides the architecture table.

    Example:
        result = train_vector(model, pairs, mean_diff_vector, TrainConfig(steps=100))
        result.vector.save("joy.safetensors")
    """
    if not pairs:
        raise BadInputError("train_vector needs at least one preference pair")
    layers = init.layers
    d = init.hidden_size
    unit = torch.tensor([(scales[layer] if scales else 1.0) / math.sqrt(d) for layer in layers])
    start = torch.stack([init.directions[layer] for layer in layers]) / unit[:, None]
    theta = torch.nn.Parameter(start if cfg.init == "mean_diff" else torch.zeros_like(start))
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    order = _order(len(pairs), cfg)
    clock = time.perf_counter()
    losses, margins, kls = [], [], []
    with _frozen(model):
        # one pair per step: each prompt's prefix is read once and kept (a few MB per pair)
        prefixes = ([_Prefix.read(model, [p.prompt], pad_id) for p in pairs]
                    if cfg.pairs_per_step == 1 else None)
        reference = reference_logprobs(model, pairs, cfg.max_answer_tokens, pad_id,
                                       prefixes=prefixes)
        for step in range(cfg.steps):
            chosen = order[step]
            sign = -1.0 if cfg.bidirectional and step % 2 else 1.0
            prefix = prefixes[int(chosen[0])] if prefixes else None
            rows = _Rows.build(model, [pairs[i] for i in chosen], cfg, pad_id, [sign, sign],
                               prefix)
            loss, margin, kl = _objective(model, rows, theta * unit[:, None], layers, init.site,
                                          reference[chosen], cfg, sign, arch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if sign > 0:
                margins.append(margin)
                kls.append(kl)
    directions = {layer: (theta[i] * unit[i]).detach() for i, layer in enumerate(layers)}
    meta = {**init.meta, "method": "trained", **_train_meta(cfg, pairs, losses, margins, kls)}
    return TrainResult(EmotionVector(directions, meta), losses, margins, kls,
                       time.perf_counter() - clock)


def _order(n: int, cfg: TrainConfig) -> list[torch.Tensor]:
    """The pair indices of each step: seeded shuffles of all pairs, one after another."""
    gen = torch.Generator().manual_seed(cfg.seed)
    size = min(cfg.pairs_per_step, n)
    flat: list[int] = []
    while len(flat) < cfg.steps * size:
        flat.extend(torch.randperm(n, generator=gen).tolist())
    return [torch.tensor(flat[i * size:(i + 1) * size]) for i in range(cfg.steps)]


def _train_meta(cfg: TrainConfig, pairs: Sequence[PreferencePair], losses: list[float],
                margins: list[float], kls: list[float]) -> dict[str, str]:
    def tail(xs: list[float], first: bool) -> str:
        k = max(1, len(xs) // 10)
        part = xs[:k] if first else xs[-k:]
        return f"{sum(part) / len(part):.4g}"

    h = hashlib.sha256()
    for p in pairs:
        h.update(repr((p.prompt, p.chosen, p.rejected)).encode())
    return {"train_objective": "bipo" if cfg.bidirectional else "preference",
            "train_steps": str(cfg.steps), "train_lr": f"{cfg.lr:g}",
            "train_beta": f"{cfg.beta:g}", "train_kl_weight": f"{cfg.kl_weight:g}",
            "train_pairs_per_step": str(cfg.pairs_per_step),
            "train_max_answer_tokens": str(cfg.max_answer_tokens), "train_init": cfg.init,
            "train_seed": str(cfg.seed), "train_pairs": str(len(pairs)),
            "train_data_sha256": h.hexdigest(),
            "train_loss_start": tail(losses, True), "train_loss_end": tail(losses, False),
            "train_margin_end": tail(margins, False), "train_kl_end": tail(kls, False)}


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients and eval mode inside; the flags and mode restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


# --- rows: prompt prefix once, then last prompt token + answer ---------------------------------
@dataclass
class _Prefix:
    """Left-padded prompts and the KV cache of all but their last token (read unsteered)."""

    ids: torch.Tensor  # (prompts, P)
    mask: torch.Tensor  # (prompts, P)
    past: Any  # cache of ids[:, :-1], or None (a one-token prompt, or a model without cache)

    @classmethod
    def read(cls, model, prompts: Sequence[Sequence[int]], pad_id: int) -> _Prefix:
        device = next(model.parameters()).device
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        past = None
        if width > 1 and cache_arg(model) is not None:
            with torch.no_grad():
                out = model(**forward_kwargs(model, ids[:, :-1], mask[:, :-1]), use_cache=True)
            past = cache_of(out)
        return cls(ids, mask, past)


@dataclass
class _Rows:
    """`per` rows per prompt of a prefix: each the last prompt token and one answer."""

    prefix: _Prefix
    per: int  # rows per prompt: answer r belongs to prompt r // per
    ids: torch.Tensor  # (rows, 1 + T): last prompt token, answer, right padding
    own: torch.Tensor  # (rows, 1 + T): 1 on real tokens of ids
    signs: torch.Tensor  # (rows,) the steering sign of each row (+1, -1, 0)

    @property
    def target(self) -> torch.Tensor:  # (rows, T): 1 where ids[:, 1:] is an answer token
        return self.own[:, 1:]

    @classmethod
    def build(cls, model, pairs: Sequence[PreferencePair], cfg: TrainConfig, pad_id: int,
              signs: Sequence[float] = (1.0, 1.0), prefix: _Prefix | None = None) -> _Rows:
        """Rows per pair: the chosen, then the rejected answer (signs: their steering)."""
        answers = [[p.chosen, p.rejected][k % 2][:cfg.max_answer_tokens]
                   for p in pairs for k in range(len(signs))]
        prefix = prefix or _Prefix.read(model, [p.prompt for p in pairs], pad_id)
        return cls.of(prefix, answers, signs, pad_id)

    @classmethod
    def of(cls, prefix: _Prefix, answers: Sequence[Sequence[int]], signs: Sequence[float],
           pad_id: int) -> _Rows:
        per = len(signs)
        width = max(1, max(map(len, answers)))
        ids = torch.full((len(answers), 1 + width), pad_id, dtype=torch.long)
        own = torch.zeros_like(ids)
        for r, a in enumerate(answers):
            ids[r, 0] = prefix.ids[r // per, -1]
            ids[r, 1:1 + len(a)] = torch.tensor(list(a), dtype=torch.long)
            own[r, :1 + len(a)] = 1
        device = prefix.ids.device
        signs_t = torch.tensor(list(signs) * prefix.ids.shape[0], dtype=torch.float32)
        return cls(prefix, per, ids.to(device), own.to(device), signs_t)

    def logits(self, model) -> torch.Tensor:
        """(rows, T, vocab): the logits that predict answer slots 1..T (a fresh cache copy)."""
        pre_ids = self.prefix.ids[:, :-1].repeat_interleave(self.per, 0)
        mask = torch.cat([self.prefix.mask[:, :-1].repeat_interleave(self.per, 0), self.own], 1)
        if self.prefix.past is None:  # no cache: read the prefix again, with this part
            ids = torch.cat([pre_ids, self.ids], 1)
            out = model(**forward_kwargs(model, ids, mask), use_cache=False)
            return out.logits[:, -self.ids.shape[1]:-1].float()
        past = copy.deepcopy(self.prefix.past)
        if self.per > 1:
            past.batch_repeat_interleave(self.per)
        kwargs = forward_kwargs(model, self.ids, mask)
        if "position_ids" in kwargs:  # positions count the prefix too
            kwargs["position_ids"] = kwargs["position_ids"][:, -self.ids.shape[1]:]
        kwargs[str(cache_arg(model))] = past
        return model(**kwargs, use_cache=True).logits[:, :-1].float()

    def rejected(self) -> _Rows:
        """Unsteered rows of the rejected (neutral) answers only (row 1 of each prompt's)."""
        rows = slice(1, None, self.per)
        return _Rows(self.prefix, 1, self.ids[rows], self.own[rows],
                     torch.zeros(self.prefix.ids.shape[0]))


@contextmanager
def _adding(model, directions: torch.Tensor, layers: Sequence[int], site: Site,
            signs: torch.Tensor, arch: Architecture | None) -> Iterator[None]:
    """Row b gets signs[b] * directions[i] added at the site of layers[i] (autograd-friendly)."""
    modules = site_modules(model, site, arch)
    if site == "residual":  # the stream carries earlier additions: add increments (steering.py)
        directions = torch.cat([directions[:1], directions[1:] - directions[:-1]])

    def make(i: int):
        def hook(module, args, output):
            hidden = untuple(output)  # (batch, pos, d_model)
            add = signs.to(hidden.device)[:, None, None] * directions[i].to(hidden.device)
            return retuple(output, hidden + add.to(hidden.dtype))
        return hook

    with hooked(model, {modules[layer]: make(i) for i, layer in enumerate(layers)}):
        yield


def _answer_logprobs(logits: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """Mean log-probability per answer token of each row: (rows,)."""
    logp = torch.log_softmax(logits, -1).gather(-1, rows.ids[:, 1:, None])[..., 0]
    count = rows.target.sum(-1).clamp(min=1)
    return (logp * rows.target).sum(-1) / count


@torch.no_grad()
def reference_logprobs(model: PreTrainedModel, pairs: Sequence[PreferencePair],
                       max_answer_tokens: int, pad_id: int = 0, chunk: int = 8,
                       prefixes: Sequence[_Prefix] | None = None) -> torch.Tensor:
    """Unsteered mean log-probability per token of (chosen, rejected) answers: (pairs, 2).

    Args:
        model: the unsteered model.
        pairs: the preference pairs.
        max_answer_tokens: answers are cut to this many tokens, as in training.
        pad_id: the tokenizer's padding id.
        chunk: pairs per forward pass.
        prefixes: each pair's prompt prefix, already read (then one pair per pass).

    Example:
        ref = reference_logprobs(model, pairs, 24)  # ref[:, 0] - ref[:, 1]: unsteered margin
    """
    cfg = TrainConfig(max_answer_tokens=max_answer_tokens)
    out = []
    if prefixes is not None:
        for pair, prefix in zip(pairs, prefixes, strict=True):
            rows = _Rows.build(model, [pair], cfg, pad_id, [0.0, 0.0], prefix)
            out.append(_answer_logprobs(rows.logits(model), rows).view(-1, 2).cpu())
        return torch.cat(out)
    for i in range(0, len(pairs), chunk):
        rows = _Rows.build(model, pairs[i:i + chunk], cfg, pad_id, signs=[0.0, 0.0])
        out.append(_answer_logprobs(rows.logits(model), rows).view(-1, 2).cpu())
    return torch.cat(out)


def _objective(model, rows: _Rows, directions: torch.Tensor, layers: Sequence[int], site: Site,
               reference: torch.Tensor, cfg: TrainConfig, sign: float,
               arch) -> tuple[torch.Tensor, float, float]:
    """(loss, mean m(sign), KL) for one batch of rows steered by sign * the vector."""
    with _adding(model, directions, layers, site, rows.signs, arch):
        logits = rows.logits(model)
    gain = _answer_logprobs(logits, rows).view(-1, 2) - reference.to(logits.device)
    margin = sign * (gain[:, 0] - gain[:, 1])  # steered minus unsteered preference
    loss = -F.logsigmoid(cfg.beta * margin).mean()
    kl = torch.zeros(())
    if sign > 0 and cfg.kl_weight > 0:
        with torch.no_grad():  # the unsteered distribution on the rejected (neutral) answers
            base = rows.rejected().logits(model)
        kl = _kl(base, logits[1::2], rows.target[1::2])
        loss = loss + cfg.kl_weight * kl
    return loss, float(margin.detach().mean()), float(kl.detach())


def _kl(base: torch.Tensor, steered: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(base || steered), logits (rows, T, vocab)."""
    p = torch.log_softmax(base, -1)
    q = torch.log_softmax(steered, -1)
    per_pos = (p.exp() * (p - q)).sum(-1)  # (rows, T)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1)
