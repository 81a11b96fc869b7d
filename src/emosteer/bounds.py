"""The numeric limits every steering path shares: an alpha (or mix weight) is finite and
within +-MAX_ALPHA, every product of a vector and a scale stays finite in float32, and a
vector file's values are small enough (MAX_VALUE) that no allowed alpha can overflow them."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from emosteer.errors import BadAlphaError, BadInputError

__all__ = ["FLOAT32_MAX", "MAX_ALPHA", "MAX_VALUE", "check_alpha", "check_finite", "scaled"]

MAX_ALPHA = 100.0  # the paper sweeps -1..4; beyond 100x every model emits noise
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
MAX_VALUE = FLOAT32_MAX / MAX_ALPHA  # a file's values: every allowed alpha keeps them finite


def check_alpha(alpha: float | str, what: str = "alpha") -> float:
    """alpha as a float, or a BadAlphaError saying why it cannot steer.

    Args:
        alpha: a steering strength (or a mix weight): finite, within +-MAX_ALPHA.
        what: how the message names the value ("alpha", "weight for 'joy'"...).

    Example:
        >>> check_alpha(1.5)
        1.5
    """
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise BadAlphaError(f"{what} {alpha!r} is not a number: use e.g. 1.0") from None
    if not math.isfinite(value):
        raise BadAlphaError(f"{what} is {value}: use a finite number such as 1.0 or -1.0")
    if abs(value) > MAX_ALPHA:
        raise BadAlphaError(f"{what} {value:g} is outside [-{MAX_ALPHA:g}, {MAX_ALPHA:g}]: the "
                            "paper's range is -1 to 4; 4 already saturates")
    return value


def check_finite(directions: Mapping[int, torch.Tensor], what: str, fix: str) -> None:
    """Raise BadInputError if a direction holds inf or NaN (a product or sum overflowed
    float32), naming `what` and saying `fix`."""
    for layer, v in directions.items():
        if not torch.isfinite(v).all():
            raise BadInputError(f"{what} overflows float32 at layer {layer} (its largest value "
                                f"is beyond {FLOAT32_MAX:.3g}): {fix}, or re-create the vector")


def scaled(directions: Mapping[int, torch.Tensor], scale: float,
           what: str) -> dict[int, torch.Tensor]:
    """{layer: scale * direction}, refused with a BadInputError when a product overflows
    float32: every place a scale or alpha multiplies a vector goes through here.

    Example:
        scaled(joy.directions, 2.0, "vector 'joy'")
    """
    if not math.isfinite(float(scale)):
        raise BadInputError(f"{what} cannot be scaled by {scale}: use a finite number")
    out = {k: v * float(scale) for k, v in directions.items()}
    check_finite(out, f"{what} times {_fmt(float(scale))}", "use a smaller scale")
    return out


def _fmt(x: float) -> str:
    return f"{x:g}"
