"""Layer bands: which contiguous window of layers to steer, found by a cheap scan.

Each window of the vector is added alone (alpha 1) while the model reads a few preference
pairs teacher-forced (train.py's rows, no generation, no judge): the window's score is how
much it raises the emotional answers over the neutral ones, minus what it costs in KL on the
neutral answers. The circuits paper steers layers 11-20 of 28; the scan measures it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch

from emosteer.errors import BadInputError
from emosteer.extraction.train import (
    PreferencePair,
    TrainConfig,
    _adding,
    _answer_logprobs,
    _kl,
    _Rows,
)
from emosteer.models import Architecture
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Band = tuple[int, int] | Literal["auto"] | None  # layers start..stop-1, scanned, or all


class _Probe:
    """Pairs read once unsteered (their log-probabilities and the neutral answers' logits),
    then once per steering tried."""

    def __init__(self, model, pairs: Sequence[PreferencePair], max_answer_tokens: int,
                 pad_id: int, arch: Architecture | None):
        cfg = TrainConfig(max_answer_tokens=max_answer_tokens, bidirectional=False)
        self.model, self.arch = model, arch
        with torch.no_grad():
            self.rows = _Rows.build(model, pairs, cfg, pad_id)  # chosen, rejected per pair
            plain = self.rows.logits(model)
        self.reference = _answer_logprobs(plain, self.rows).view(-1, 2)
        self.base = plain[1::2]  # (pairs, T, vocab): the neutral answers, unsteered

    def gain(self, vector: EmotionVector, layers: Sequence[int]) -> tuple[float, float]:
        directions = torch.stack([vector.directions[layer] for layer in layers])
        with torch.no_grad(), _adding(self.model, directions, list(layers), vector.site,
                                      torch.ones_like(self.rows.signs), self.arch):
            logits = self.rows.logits(self.model)
        gain = _answer_logprobs(logits, self.rows).view(-1, 2) - self.reference
        kl = _kl(self.base, logits[1::2], self.rows.target[1::2])
        return float((gain[:, 0] - gain[:, 1]).mean()), float(kl)


def steered_gain(model: PreTrainedModel, pairs: Sequence[PreferencePair], vector: EmotionVector,
                 layers: Sequence[int], max_answer_tokens: int = 24, pad_id: int = 0,
                 arch: Architecture | None = None) -> tuple[float, float]:
    """(mean margin gain m(+1), mean KL on the neutral answers) when vector steers `layers`.

    A teacher-forced measurement, no generation: how much adding the vector at those layers
    raises the emotional answers over the neutral ones (per-token log-likelihood, relative
    to the unsteered model), and what it costs in KL.

    Args:
        model: the model (unsteered outside this call).
        pairs: preference pairs (a few suffice).
        vector: the vector whose `layers` are added at alpha 1.
        layers: the layers to steer.
        max_answer_tokens: answers are cut to this many tokens.
        pad_id: the tokenizer's padding id.
        arch: overrides the architecture table.

    Example:
        gain, kl = steered_gain(model, pairs[:8], joy, range(8, 18))
    """
    return _Probe(model, pairs, max_answer_tokens, pad_id, arch).gain(vector, layers)


def scan_bands(model: PreTrainedModel, pairs: Sequence[PreferencePair], vector: EmotionVector,
               width: int, kl_weight: float = 1.0, max_answer_tokens: int = 24,
               pad_id: int = 0, arch: Architecture | None = None) -> list[dict]:
    """Score every window of `width` consecutive layers of the vector (width 1: every layer).

    score = margin gain - kl_weight * KL (steered_gain). Cheap: the pairs are read once
    unsteered, then once per window, teacher-forced; no generation, no judge.

    Args:
        model: the model.
        pairs: a few preference pairs of the vector's emotion.
        vector: the vector whose windows are tried at alpha 1.
        width: layers per window.
        kl_weight: what a unit of KL costs in margin.
        max_answer_tokens: answers are cut to this many tokens.
        pad_id: the tokenizer's padding id.
        arch: overrides the architecture table.

    Example:
        best = max(scan_bands(model, pairs[:8], joy, 10), key=lambda r: r["score"])
        band = joy.select(range(best["start"], best["stop"]))
    """
    layers = vector.layers
    if not 1 <= width <= len(layers):
        raise BadInputError(f"band width {width} must be between 1 and {len(layers)} layers")
    probe = _Probe(model, pairs, max_answer_tokens, pad_id, arch)
    out = []
    for i in range(len(layers) - width + 1):
        window = layers[i:i + width]
        gain, kl = probe.gain(vector, window)
        out.append({"start": window[0], "stop": window[-1] + 1, "gain": gain, "kl": kl,
                    "score": gain - kl_weight * kl})
    return out


def best_band(scan: Sequence[dict]) -> tuple[int, int]:
    """(start, stop) of the best-scoring window of a scan_bands result (earliest on ties)."""
    best = max(scan, key=lambda r: r["score"])
    return best["start"], best["stop"]


def parse_band(text: str) -> Band:
    """A band as written on the command line: "8-17" (layers 8 to 17), "auto" or "all".

    Args:
        text: first-last (both included), "auto" or "all".

    Example:
        >>> parse_band("8-17")
        (8, 18)
    """
    if text in ("auto", "all"):
        return None if text == "all" else "auto"
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise BadInputError(f"band {text!r}: write first-last (e.g. 8-17), auto or all")
    return int(first), int(last) + 1


def banded(model: PreTrainedModel, vector: EmotionVector, band: Band,
           pairs: Sequence[PreferencePair], width: int, train: TrainConfig, pad_id: int = 0,
           arch: Architecture | None = None) -> tuple[EmotionVector, list[dict] | None]:
    """The vector cut to `band` (metadata "band"), and the scan that chose it if "auto".

    Args:
        model: the model (read only by the scan).
        vector: the vector to cut.
        band: (start, stop), "auto" (scan windows of `width` layers on `pairs`) or None (all).
        pairs: the preference pairs the scan reads.
        width: layers of an auto band (at most the vector's).
        train: its kl_weight and max_answer_tokens score the scan.
        pad_id: the tokenizer's padding id.
        arch: overrides the architecture table.

    Example:
        joy_band, _ = banded(model, joy, (8, 18), [], 10, TrainConfig())
    """
    scan = None
    if band == "auto":
        scan = scan_bands(model, pairs, vector, min(width, len(vector.layers)),
                          train.kl_weight, train.max_answer_tokens, pad_id, arch)
        band = best_band(scan)
    if band is not None:
        if band[1] > len(vector.layers):
            raise BadInputError(f"band {band} ends past the model's {len(vector.layers)} "
                                f"layers: use stop <= {len(vector.layers)}")
        vector = vector.select(range(*band))
        vector = replace(vector, meta={**vector.meta, "band": f"{band[0]}-{band[1] - 1}"})
    return vector, scan
