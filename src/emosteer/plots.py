"""Plotting helpers shared by the evaluation and circuits reports: matplotlib (Agg), colours.

matplotlib is optional (the `eval` extra): `pyplot()` imports it on first use and says how to
install it when it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from emosteer.errors import EmosteerError
from emosteer.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = {"joy": "#e6a700", "anger": "#d62728", "sadness": "#1f77b4", "fear": "#7f3fbf",
           "disgust": "#2ca02c", "surprise": "#ff7f0e", "any": "#444444"}
"""One colour per emotion (and "any", emotion at all), the same in every figure."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed).

    Example:
        fig, ax = pyplot().subplots()
    """
    try:
        import matplotlib
    except ImportError as err:
        raise EmosteerError("plots need matplotlib: pip install 'emosteer[eval]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write atomically as PNG and free a matplotlib figure.

    Args:
        fig: the figure; it is closed afterwards.
        path: where the PNG goes (folders are created).
        dpi: resolution.

    Example:
        fig, ax = pyplot().subplots()
        ax.plot([0, 1], [1, 2])
        save_figure(fig, Path("runs/figures/line.png"))
    """
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return path
