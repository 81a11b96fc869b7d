"""The experiments' figures: a metric against alpha (sweep, EV_base) and the mix heatmaps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from emosteer.evaluate.metrics import METRICS
from emosteer.plots import COLOURS, pyplot, save_figure

STYLES = {"raw": "-", "centered": "--", "base": "-", "mix": ":"}
SWEPT = ("unsteered", "raw", "centered", "base", "prompt")  # variants a sweep plot shows


def sweep_figures(rows: Sequence[dict], metrics: Sequence[str], folder: Path) -> list[Path]:
    """One plot_sweep figure per metric, `folder`/<metric>.png.

    Args:
        rows: summary rows; auto and mix rows are left out.
        metrics: one figure each.
        folder: where the PNGs go.

    Example:
        sweep_figures(result.rows, ["eps", "ppl"], Path("runs/sweep/figures"))
    """
    shown = [r for r in rows if r["variant"] in SWEPT]
    return [plot_sweep(shown, m, folder / f"{m}.png") for m in metrics]


def plot_sweep(rows: Sequence[dict], metric: str, path: Path, title: str = "") -> Path:
    """metric against alpha, one panel per vector variant (raw, centred, ...), one colour per
    emotion; alpha 0 is the unsteered answer; the prompting baseline is a star at the right.

    Args:
        rows: summary rows.
        metric: the metric plotted.
        path: the PNG written.
        title: the figure's title (default: the metric against alpha).

    Example:
        plot_sweep(result.rows, "eps", Path("runs/sweep/figures/eps.png"))
    """
    plt = pyplot()
    variants = [v for v in STYLES if any(r["variant"] == v for r in rows)] or ["raw"]
    fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants) + 0.8, 4.0),
                             dpi=110, sharey=True, squeeze=False)
    m = METRICS[metric]
    for ax, v in zip(axes[0], variants, strict=True):
        _sweep_panel(ax, rows, metric, v)
        ax.set_title(f"{v} vectors" if len(variants) > 1 else (title or f"{v} vectors"),
                     fontsize=10)
    axes[0][0].set_ylabel(f"{m.name.upper()} ({'higher' if m.higher_is_better else 'lower'} "
                          "is better)")
    axes[0][-1].legend(fontsize=8, frameon=False, loc="best")
    fig.suptitle(title or f"{m.name.upper()} against alpha", fontsize=11)
    return save_figure(fig, path)


def _sweep_panel(ax, rows: Sequence[dict], metric: str, variant: str) -> None:
    alphas = sorted({r["alpha"] for r in rows if r["variant"] in (variant, "unsteered")})
    right = (max(alphas) if alphas else 0) + 1.0
    has_prompt = any(r["variant"] == "prompt" for r in rows)
    for t in dict.fromkeys(r["target"] for r in rows):
        pts = sorted((r["alpha"], r[metric]) for r in rows
                     if r["target"] == t and r["variant"] in (variant, "unsteered")
                     and r.get(metric) is not None)
        if pts:
            ax.plot(*zip(*pts, strict=True), "-", marker="o", ms=4, color=COLOURS.get(t),
                    label=t)
        prompt = [r[metric] for r in rows if r["target"] == t and r["variant"] == "prompt"
                  and r.get(metric) is not None]
        if prompt:
            ax.plot([right], prompt[:1], marker="*", ms=11, mfc="none", color=COLOURS.get(t),
                    linestyle="none")
    ticks = alphas + ([right] if has_prompt else [])
    ax.set_xticks(ticks, [f"{a:g}" for a in alphas] + (["prompt"] if has_prompt else []))
    ax.axvline(0, color="#bbbbbb", lw=0.8, zorder=0)
    ax.set_xlabel("alpha (steering strength)")
    ax.grid(alpha=0.3)
    if metric in ("eps", "tec", "topic"):
        ax.set_ylim(-0.03, 1.03)
    if metric == "ppl":
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_mix(rows: Sequence[dict], first: str, second: str, weights: Sequence[float],
             path: Path, metric: str = "tec") -> Path:
    """Heatmaps of the metric for each of the two emotions over the weight grid, and the
    additivity gap: f(w1, w2) - f(w1, 0) - f(0, w2) + f(0, 0).

    Args:
        rows: the mix experiment's summary rows.
        first: the emotion whose weight is the row.
        second: the emotion whose weight is the column.
        weights: the grid.
        path: the PNG written.
        metric: the metric shown.

    Example:
        plot_mix(result.rows, "joy", "sadness", [0, 1, 2], Path("runs/mix/figures/mix.png"))
    """
    plt = pyplot()
    grids = {t: mix_grid(rows, first, second, weights, t, metric) for t in (first, second)}
    gap = {t: additivity_gap(g) for t, g in grids.items()}
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3), dpi=110)
    panels = [(grids[first], f"{metric.upper()} {first}"), (grids[second],
              f"{metric.upper()} {second}"), (gap[first], f"gap {first}"),
              (gap[second], f"gap {second}")]
    for ax, (grid, title) in zip(axes, panels, strict=True):
        data = [[v if v is not None else float("nan") for v in row] for row in grid]
        cmap = "viridis" if "gap" not in title else "coolwarm"
        lim = {"vmin": 0, "vmax": 1} if "gap" not in title else {"vmin": -0.5, "vmax": 0.5}
        im = ax.imshow(data, origin="lower", cmap=cmap, **lim)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v is None else f"{v:.2f}", ha="center", va="center",
                        fontsize=8, color="white" if "gap" not in title else "black")
        ax.set_xticks(range(len(weights)), [f"{w:g}" for w in weights])
        ax.set_yticks(range(len(weights)), [f"{w:g}" for w in weights])
        ax.set_xlabel(f"weight of {second}")
        ax.set_ylabel(f"weight of {first}")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def mix_grid(rows: Sequence[dict], first: str, second: str, weights: Sequence[float],
             target: str, metric: str) -> list[list[float | None]]:
    """grid[i][j]: the metric for `target` at weights (first=weights[i], second=weights[j]).

    Example:
        mix_grid(result.rows, "joy", "sadness", [0, 1], "joy", "tec")
    """
    by_label = {r["label"]: r for r in rows if r["target"] == target}
    return [[(by_label.get(f"{first}={w1:g},{second}={w2:g}") or {}).get(metric)
             for w2 in weights] for w1 in weights]


def additivity_gap(grid: list[list[float | None]]) -> list[list[float | None]]:
    """f(i, j) - f(i, 0) - f(0, j) + f(0, 0): zero where the two effects simply add.

    Example:
        additivity_gap([[0.0, 0.2], [0.3, 0.5]])[1][1]  # 0.0
    """
    def gap(i: int, j: int) -> float | None:
        both, first, second, neither = grid[i][j], grid[i][0], grid[0][j], grid[0][0]
        if both is None or first is None or second is None or neither is None:
            return None
        return both - first - second + neither

    return [[gap(i, j) for j in range(len(grid))] for i in range(len(grid))]
