"""Layer bands: which contiguous window of layers to steer, found by a cheap scan.

Each window of the vector is added alone (alpha 1) while the model reads a few preference
pairs teacher-forced (train.py's rows, no generation, no judge): the window's score is how
much it raises the emotional answers over the neutral ones, minus what it costs in KL on the
neutral answers. The circuits paper steers layers 11-20 of 28; the scan measures it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from emosteer.errors import BadInputError
from emosteer.models import Architecture
from emosteer.train import (
    PreferencePair,
    TrainConfig,
    _adding,
    _answer_logprobs,
    _kl,
    _Rows,
    reference_logprobs,
)
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def steered_gain(model: PreTrainedModel, pairs: Sequence[PreferencePair], vector: EmotionVector,
                 layers: Sequence[int], max_answer_tokens: int = 24, pad_id: int = 0,
                 reference: torch.Tensor | None = None, arch: Architecture | None = None
                 ) -> tuple[float, float]:
    """(mean margin gain m(+1), mean KL on the neutral answers) when vector steers `layers`.

    A teacher-forced measurement, no generation: how much adding the vector at those layers
    raises the emotional answers over the neutral ones, and what it costs in KL.

    Args:
        model: the model (unsteered outside this call).
        pairs: preference pairs (a few suffice).
        vector: the vector whose `layers` are added at alpha 1.
        layers: the layers to steer.
        max_answer_tokens: answers are cut to this many tokens.
        pad_id: the tokenizer's padding id.
        reference: reference_logprobs(model, pairs, ...) if already computed.
        arch: overrides the architecture table.

    Example:
        gain, kl = steered_gain(model, pairs[:8], joy, range(8, 18))
    """
    cfg = TrainConfig(max_answer_tokens=max_answer_tokens, bidirectional=False)
    if reference is None:
        reference = reference_logprobs(model, pairs, max_answer_tokens, pad_id)
    directions = torch.stack([vector.directions[layer] for layer in layers])
    with torch.no_grad():
        rows = _Rows.build(model, pairs, cfg, pad_id)
        base = rows.logits(model)[1::2]
        with _adding(model, directions, list(layers), vector.site, rows.signs, arch):
            logits = rows.logits(model)
        gain = _answer_logprobs(logits, rows).view(-1, 2) - reference.to(logits.device)
        kl = _kl(base, logits[1::2], rows.target[1::2])
    return float((gain[:, 0] - gain[:, 1]).mean()), float(kl)


def scan_bands(model: PreTrainedModel, pairs: Sequence[PreferencePair], vector: EmotionVector,
               width: int, kl_weight: float = 1.0, max_answer_tokens: int = 24,
               pad_id: int = 0, arch: Architecture | None = None) -> list[dict]:
    """Score every window of `width` consecutive layers of the vector (width 1: every layer).

    score = margin gain - kl_weight * KL, from steered_gain on the pairs. Cheap: one
    teacher-forced forward pass of the pairs per window, no generation, no judge.

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
    reference = reference_logprobs(model, pairs, max_answer_tokens, pad_id)
    out = []
    for i in range(len(layers) - width + 1):
        window = layers[i:i + width]
        gain, kl = steered_gain(model, pairs, vector, window, max_answer_tokens, pad_id,
                                reference, arch)
        out.append({"start": window[0], "stop": window[-1] + 1, "gain": gain, "kl": kl,
                    "score": gain - kl_weight * kl})
    return out


def best_band(scan: Sequence[dict]) -> tuple[int, int]:
    """(start, stop) of the best-scoring window of a scan_bands result (earliest on ties)."""
    best = max(scan, key=lambda r: r["score"])
    return best["start"], best["stop"]
