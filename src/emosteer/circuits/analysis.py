"""Directions, component scores and causal checks, from last-token reads of the model.

Everything here works on batched tensors: attributing every head and neuron takes the reads of
a few forward passes, and each causal condition is one batched one-token forward pass on top
of a shared KV cache of the prompts (the edits touch only the last position, so the prompt
before it is computed once).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emosteer.circuits.components import KINDS, Edit, Parts, contributions, editing, unit_mask
from emosteer.extraction.capture import reading
from emosteer.generation import forward_kwargs
from emosteer.models import cache_arg, cache_of


# --- directions ------------------------------------------------------------------------------
def emotion_means(states: torch.Tensor, labels: Sequence[str], emotions: Sequence[str]
                  ) -> torch.Tensor:
    """Mean of states (n, ...) per emotion: (emotions, ...)."""
    return torch.stack([states[[i for i, x in enumerate(labels) if x == e]].mean(0)
                        for e in emotions])


def directions(residual: torch.Tensor, labels: Sequence[str], emotions: Sequence[str]
               ) -> torch.Tensor:
    """Per emotion and layer: mean last-token state minus the mean over emotions, unit length.

    residual: (n, layers, d); returns (emotions, layers, d).
    """
    means = emotion_means(residual, labels, emotions)
    centred = means - means.mean(0, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per emotion and layer between two sets of directions: (emotions, layers)."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def cross_emotion_cosine(dirs: torch.Tensor) -> torch.Tensor:
    """Mean cosine between different emotions' directions, per layer: the chance level."""
    e = dirs.shape[0]
    cos = torch.einsum("eld,fld->lef", dirs, dirs)
    off = ~torch.eye(e, dtype=torch.bool)
    return cos[:, off].mean(-1)


# --- component scores ------------------------------------------------------------------------
def component_scores(p: Parts, deltas: dict[str, torch.Tensor], dirs: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """How much each head and neuron writes the emotion: (emotions, layers, components) per kind.

    deltas[kind]: (emotions, layers, in) = mean projection input under the emotion minus the
    mean over emotions. A component's score is its share of that shift along the layer's
    emotion direction (the analytic decomposition of components.py).
    """
    out = {}
    for kind in KINDS:
        group = p.head_dim if kind == "head" else 1
        out[kind] = torch.stack([
            torch.stack([contributions(p.modules(kind)[layer], deltas[kind][e, layer],
                                       dirs[e, layer], group).cpu()
                         for layer in range(p.n_layers)])
            for e in range(dirs.shape[0])])
    return out


def top_components(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The k largest (layer, index) of a (layers, components) score table."""
    flat = scores.flatten()
    idx = torch.topk(flat, min(k, flat.numel())).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in idx]


def random_like(picked: list[tuple[int, int]], size: int, rng: random.Random
                ) -> list[tuple[int, int]]:
    """As many random components as `picked` holds in each layer, none of them picked."""
    taken = set(picked)
    out = []
    for layer in sorted({layer for layer, _ in picked}):
        count = sum(1 for x, _ in picked if x == layer)
        pool = [(layer, i) for i in range(size) if (layer, i) not in taken]
        out.extend(rng.sample(pool, min(count, len(pool))))
    return out


# --- causal checks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Readout:
    """The emotion score s of a last-token state: 0 at the mean over emotions, 1 at the emotion.

    s_e(h) = (h . d_e - mean_all . d_e) / ((mean_e - mean_all) . d_e) at layer `layer`.
    """

    layer: int
    dirs: torch.Tensor  # (emotions, d)
    offset: torch.Tensor  # (emotions,)
    scale: torch.Tensor  # (emotions,)

    @classmethod
    def fit(cls, residual: torch.Tensor, labels: Sequence[str], emotions: Sequence[str],
            dirs: torch.Tensor, layer: int) -> Readout:
        means = emotion_means(residual[:, layer], labels, emotions)  # (emotions, d)
        d = dirs[:, layer]
        offset = (means.mean(0, keepdim=True) * d).sum(-1)
        return cls(layer, d, offset, (means * d).sum(-1) - offset)

    def score(self, final: torch.Tensor, emotion_index: torch.Tensor) -> torch.Tensor:
        """final: (rows, d) states at the readout layer; emotion_index: (rows,) -> (rows,)."""
        d = self.dirs[emotion_index]
        return ((final * d).sum(-1) - self.offset[emotion_index]) / self.scale[emotion_index]


class LastToken:
    """Prompts whose prefix is computed once; each condition re-runs only the last token."""

    def __init__(self, model, tokenizer, prompts: Sequence[str], p: Parts, readout: Readout,
                 chunk: int = 64, arch=None):
        self.model, self.p, self.readout, self.arch = model, p, readout, arch
        self.chunks = []
        device = next(model.parameters()).device
        for i in range(0, len(prompts), chunk):
            enc = tokenizer(list(prompts[i:i + chunk]), return_tensors="pt", padding=True,
                            add_special_tokens=False)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            kwargs = forward_kwargs(model, ids[:, :-1], mask[:, :-1])
            with torch.no_grad():
                out = model(**kwargs, use_cache=True)
            self.chunks.append((i, ids, mask, cache_of(out)))
        self.rows = len(prompts)
        self.croppable = self._can_crop()

    def _can_crop(self) -> bool:
        """Whether the cache can be cut back to the prefix after a step (no copy per condition).

        Tried on a copy: a cache type without crop (or whose crop fails, as sliding-window
        layers may) is copied before every condition instead.
        """
        _, ids, mask, cache = self.chunks[0]
        trial = copy.deepcopy(cache)
        try:
            self._step(ids, mask, trial, {})
            trial.crop(-1)  # drop the one token the step added
            return trial.get_seq_length() == cache.get_seq_length()
        except Exception:  # any failure: fall back to copying, which always works
            return False

    def _step(self, ids, mask, cache, edits) -> torch.Tensor:
        kwargs = forward_kwargs(self.model, ids, mask)
        last = {k: v[:, -1:] if k != "attention_mask" else v for k, v in kwargs.items()}
        weights = {"w": torch.ones(ids.shape[0], 1)}
        with editing(self.p, edits, last_only=True), \
                reading(self.model, "residual", weights, self.arch) as sums:
            self.model(**last, **{str(cache_arg(self.model)): cache}, use_cache=True)
        return sums[self.readout.layer]

    @torch.no_grad()
    def finals(self, edits: dict[tuple[str, int], Edit] | None = None) -> torch.Tensor:
        """Readout-layer states of the last token under the edits (rows of the full set)."""
        out = []
        for start, ids, mask, cache in self.chunks:
            n = ids.shape[0]
            part = {key: Edit(_rows(e.keep, start, n), _rows(e.add, start, n))
                    for key, e in (edits or {}).items()}
            if self.croppable:
                try:
                    out.append(self._step(ids, mask, cache, part))
                finally:
                    cache.crop(-1)  # back to the prefix, errors included
            else:
                out.append(self._step(ids, mask, copy.deepcopy(cache), part))
        return torch.cat(out)

    def scores(self, emotion_index: torch.Tensor, edits=None) -> torch.Tensor:
        return self.readout.score(self.finals(edits), emotion_index)


def _rows(t: torch.Tensor, start: int, n: int) -> torch.Tensor:
    return t if t.shape[0] == 1 else t[start:start + n]


def component_edits(p: Parts, picks: Sequence[list[tuple[str, int, int]]], mode: str,
                    deltas: dict[str, torch.Tensor] | None = None,
                    emotion_index: Sequence[int] | None = None, strength: float = 1.0
                    ) -> dict[tuple[str, int], Edit]:
    """Per-row edits: row r ablates (zeroes) or enhances its components picks[r].

    picks[r]: (kind, layer, index) triples. Enhancing adds strength x the emotion's mean input
    shift (deltas[kind][emotion_index[r], layer]) on those components' features.
    """
    rows = len(picks)
    masks: dict[tuple[str, int], torch.Tensor] = {}
    for r, row in enumerate(picks):
        for kind in KINDS:
            for layer in {x for k, x, _ in row if k == kind}:
                idx = torch.tensor([i for k, x, i in row if k == kind and x == layer])
                key = (kind, layer)
                if key not in masks:
                    masks[key] = torch.zeros(rows, p.size(kind) * (p.head_dim if kind == "head"
                                                                   else 1))
                masks[key][r] = unit_mask(p, kind, idx)
    edits = {}
    for (kind, layer), mask in masks.items():
        if mode == "ablate":
            edits[(kind, layer)] = Edit(1.0 - mask, torch.zeros_like(mask))
        else:
            if deltas is None or emotion_index is None:
                raise ValueError("enhancing needs deltas and emotion_index")
            shift = torch.stack([deltas[kind][e, layer] for e in emotion_index])
            edits[(kind, layer)] = Edit(torch.ones_like(mask), strength * mask * shift)
    return edits


def sublayer_edits(p: Parts, kind: str, layer: int, deltas: dict[str, torch.Tensor],
                   emotion_index: Sequence[int], strength: float = 1.0
                   ) -> dict[tuple[str, int], Edit]:
    """Per-row edits adding a whole sublayer's mean emotion shift at one layer."""
    shift = torch.stack([deltas[kind][e, layer] for e in emotion_index])
    return {(kind, layer): Edit(torch.ones(1, shift.shape[1]), strength * shift)}


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the 95% normal confidence interval."""
    n = values.numel()
    mean = float(values.mean())
    sd = float(values.std()) if n > 1 else 0.0
    return mean, 1.96 * sd / math.sqrt(max(n, 1))
