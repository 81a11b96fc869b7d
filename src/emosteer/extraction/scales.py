"""How large a site's output is (RMS norm and spread on neutral text); vectors scaled to it.

Extraction measures, per layer, the RMS norm of the site's output over the neutral answers'
tokens and its RMS distance from their mean (the spread: a layer whose output is mostly one
constant vector has a large norm but a small spread). They are saved as the metadata
site_norms and site_spreads; scale="norm" or "spread" gives each layer's vector a length of
norm_fraction x that size, so a strength means the same at every layer and in every model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from emosteer.hooks import hooked, untuple
from emosteer.models import Architecture, Site, site_modules
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Sums = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (sum w ||h||^2, sum w h)


@contextmanager
def square_norms(model: PreTrainedModel, site: Site, weights: torch.Tensor,
                 arch: Architecture | None = None) -> Iterator[Sums]:
    """Per layer, sums over positions of weights[b, pos] * ||out_l[b, pos]||^2 and of
    weights[b, pos] * out_l[b, pos], filled by the forward passes run inside (read only).

    Example:
        with square_norms(model, "attn", mask) as sums:
            model(input_ids)
    """
    sums: Sums = {}

    def make(index: int):
        def hook(module, args, output):
            hidden = untuple(output).float()  # (batch, pos, d_model)
            w = weights.to(hidden.device, torch.float32)  # (batch, pos)
            sums[index] = (torch.einsum("bp,bp->", w, hidden.pow(2).sum(-1)).cpu(),
                           torch.einsum("bp,bpd->d", w, hidden).cpu())
        return hook

    modules = site_modules(model, site, arch)
    with hooked(model, {module: make(i) for i, module in enumerate(modules)}):
        yield sums


def add_squares(squares: dict, sums: Sums, weights: torch.Tensor) -> None:
    """Add one batch's `square_norms` sums (and its token count) to the running totals."""
    squares["sum"] = squares.get("sum", 0.0) + torch.stack([sums[i][0] for i in sorted(sums)])
    squares["vec"] = squares.get("vec", 0.0) + torch.stack([sums[i][1] for i in sorted(sums)])
    squares["tokens"] = squares.get("tokens", 0.0) + float(weights.sum())


def site_stats(squares: dict) -> dict[str, list[float]]:
    """Per layer, RMS norm and RMS distance from the mean of the neutral outputs."""
    tokens = max(squares["tokens"], 1.0)
    power = squares["sum"] / tokens  # (layers,): E ||h||^2
    mean = squares["vec"] / tokens  # (layers, d): E h
    spread = (power - mean.pow(2).sum(-1)).clamp(min=0)
    return {"norm": power.sqrt().tolist(), "spread": spread.sqrt().tolist()}


def norm_scaled(vector: EmotionVector, norms: Sequence[float], fraction: float,
                label: str = "norm") -> EmotionVector:
    """Each layer's direction with length fraction x norms[layer] (a zero layer stays zero).

    Args:
        vector: the directions to rescale.
        norms: per layer, the typical norm of the site's output (metadata site_norms).
        fraction: the share of that norm strength 1 adds.
        label: what the norms are, recorded as metadata "scale" ("norm" or "spread").

    Example:
        norms = [float(x) for x in joy.meta["site_norms"].split(",")]
        joy_scaled = norm_scaled(joy, norms, 0.1)
    """
    directions = {}
    for layer, v in vector.directions.items():
        length = float(v.norm())
        directions[layer] = v * (fraction * norms[layer] / length) if length > 0 else v
    meta = {**vector.meta, "scale": label, "norm_fraction": f"{fraction:g}"}
    return EmotionVector(directions, meta)
