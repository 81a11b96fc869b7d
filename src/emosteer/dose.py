"""The dose guardrail: how large an addition is against the stream it is added to.

The relative dose of a (scaled) vector is its largest per-layer length divided by the RMS
norm of the site's output at that layer on neutral text (metadata `site_norms`, measured at
extraction). Past some dose a model's text breaks (loops, word salad); the method search
measures where for each shipped vector and records it as metadata `max_dose`. `steer()` and
both servers refuse an addition past it, or clamp alpha down to it when asked to.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from emosteer.errors import BadAlphaError, BadInputError

if TYPE_CHECKING:  # vectors.mix calls check_dose: the type alone, no import cycle
    from emosteer.vectors import EmotionVector


def site_norms(vector: EmotionVector) -> dict[int, float] | None:
    """layer -> the site's RMS output norm on neutral text; None when the file has none."""
    raw = vector.meta.get("site_norms")
    if not raw:
        return None
    try:
        norms = [float(x) for x in raw.split(",")]
    except ValueError as err:
        raise BadInputError(f"vector {vector.emotion!r}: site_norms is not a list of numbers"
                            ) from err
    return {i: x for i, x in enumerate(norms) if math.isfinite(x) and x > 0}


def relative_dose(vector: EmotionVector, alpha: float = 1.0) -> float | None:
    """max over layers of |alpha| * ||vector_l|| / site_norm_l; None without site_norms.

    Example:
        relative_dose(joy, 2.0)  # 0.24: at its largest layer, 24% of the stream's norm
    """
    norms = site_norms(vector)
    if not norms:
        return None
    doses = [abs(alpha) * float(d.float().norm()) / norms[layer]
             for layer, d in vector.directions.items() if layer in norms]
    return max(doses, default=None)


def max_dose(vector: EmotionVector) -> float | None:
    """The recorded limit (metadata max_dose), or None when the vector has none."""
    raw = vector.meta.get("max_dose")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise BadInputError(f"vector {vector.emotion!r}: max_dose {raw!r} is not a number"
                            ) from err
    if not (math.isfinite(value) and value > 0):
        raise BadInputError(f"vector {vector.emotion!r}: max_dose {raw!r} must be a positive "
                            "number")
    return value


def check_dose(vector: EmotionVector, alpha: float, clamp: bool = False) -> float:
    """alpha, when alpha * vector stays within the vector's max_dose; else refused, or (clamp)
    the alpha of the same sign that reaches max_dose exactly.

    Args:
        vector: the vector as it will be scaled by alpha (metadata site_norms, max_dose).
        alpha: the strength asked for.
        clamp: lower |alpha| to the limit instead of refusing.

    Example:
        alpha = check_dose(vectors["anger"], 5.0, clamp=True)  # 3.1 where the limit sits
    """
    limit = max_dose(vector)
    dose = relative_dose(vector, alpha) if limit is not None else None
    if limit is None or dose is None or dose <= limit:
        return alpha
    if clamp:
        return alpha * limit / dose
    per_unit = dose / abs(alpha)
    raise BadAlphaError(
        f"alpha {alpha:g} adds {dose:.2f} x the stream's norm with {vector.emotion!r}, past "
        f"{limit:.2f}, where this model's text breaks (max_dose): use |alpha| <= "
        f"{limit / per_unit:.2f}, or let steer() clamp it (clamp_dose=True)")
