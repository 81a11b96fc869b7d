"""Reports of experiment rows: markdown tables, PNG plots (matplotlib, Agg) and one HTML file.

Rows are the dicts Runner.summarise returns: variant, alpha, label, target, n and one value
per metric. Tables are shaped like the paper's: one block per emotion, rows alpha, columns
PPL, topic, EPS, EAS, TEC.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections.abc import Sequence
from pathlib import Path

from emosteer.evaluate.metrics import METRICS, get_metrics

VARIANT_ORDER = {"unsteered": 0, "raw": 1, "centered": 2, "base": 3, "mix": 4, "auto": 5,
                 "auto-centered": 6, "prompt": 7}
DIGITS = {"ppl": 2, "topic": 2, "eps": 2, "eas": 1, "tec": 2}


def fmt(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{value:.{DIGITS.get(name, 2)}f}"


def header(metrics: Sequence[str]) -> list[str]:
    return [f"{METRICS[m].name.upper()} {'↑' if METRICS[m].higher_is_better else '↓'}"
            for m in metrics]


def _order(row: dict) -> tuple:
    return (VARIANT_ORDER.get(row["variant"], 9), row["alpha"])


def markdown_table(rows: Sequence[dict], metrics: Sequence[str], first: str = "vector",
                   name=lambda r: r["variant"]) -> str:
    lines = ["| " + " | ".join([first, "alpha", *header(metrics)]) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for r in sorted(rows, key=_order):
        alpha = r["label"] if r["variant"] == "prompt" or r["alpha"] != r["alpha"] \
            else f"{r['alpha']:g}"  # alpha != alpha: NaN, one alpha per emotion
        cells = [name(r), alpha, *[fmt(r.get(m), m) for m in metrics]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_tables(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, str]:
    """One table per target emotion, plus 'mean' over emotions for each (variant, alpha)."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    out = {t: markdown_table([r for r in rows if r["target"] == t], metrics) for t in targets}
    out["mean over emotions"] = markdown_table(mean_rows(rows, metrics), metrics)
    return out


def mean_rows(rows: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["variant"].startswith("auto"):  # each emotion has its own calibrated alpha
            key = (r["variant"], None, "per emotion")
        else:
            key = (r["variant"], r["alpha"], r["label"] if r["variant"] == "prompt" else "")
        groups.setdefault(key, []).append(r)
    out = []
    for (variant, alpha, label), members in groups.items():
        row = {"variant": variant, "alpha": float("nan") if alpha is None else alpha,
               "label": label or f"{alpha:g}",
               "target": "mean", "n": sum(m["n"] for m in members)}
        for m in metrics:
            values = [x[m] for x in members if x.get(m) is not None]
            if m == "ppl" and values:
                row[m] = statistics.geometric_mean(values)
            else:
                row[m] = statistics.fmean(values) if values else None
        out.append(row)
    return out


# --- plots -----------------------------------------------------------------------------------
def pyplot():
    try:
        import matplotlib
    except ImportError as err:
        from emosteer.errors import EmosteerError

        raise EmosteerError("plots need matplotlib: pip install 'emosteer[eval]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out, write as PNG and free a matplotlib figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


COLOURS = {"joy": "#e6a700", "anger": "#d62728", "sadness": "#1f77b4", "fear": "#7f3fbf",
           "disgust": "#2ca02c", "surprise": "#ff7f0e", "any": "#444444"}
STYLES = {"raw": "-", "centered": "--", "base": "-", "mix": ":"}


def plot_sweep(rows: Sequence[dict], metric: str, path: Path, title: str = "") -> Path:
    """metric against alpha, one panel per vector variant (raw, centred, ...), one colour per
    emotion; alpha 0 is the unsteered answer; the prompting baseline is a star at the right."""
    plt = pyplot()
    targets = list(dict.fromkeys(r["target"] for r in rows))
    variants = [v for v in STYLES if any(r["variant"] == v for r in rows)] or ["raw"]
    has_prompt = any(r["variant"] == "prompt" for r in rows)
    fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants) + 0.8, 4.0),
                             dpi=110, sharey=True, squeeze=False)
    m = METRICS[metric]
    for ax, v in zip(axes[0], variants, strict=True):
        alphas = sorted({r["alpha"] for r in rows if r["variant"] in (v, "unsteered")})
        right = (max(alphas) if alphas else 0) + 1.0
        for t in targets:
            pts = sorted((r["alpha"], r[metric]) for r in rows
                         if r["target"] == t and r["variant"] in (v, "unsteered")
                         and r.get(metric) is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), "-", marker="o", ms=4,
                        color=COLOURS.get(t), label=t)
            prompt = [r[metric] for r in rows if r["target"] == t and r["variant"] == "prompt"
                      and r.get(metric) is not None]
            if prompt:
                ax.plot([right], prompt[:1], marker="*", ms=11, mfc="none",
                        color=COLOURS.get(t), linestyle="none")
        ticks = alphas + ([right] if has_prompt else [])
        ax.set_xticks(ticks, [f"{a:g}" for a in alphas] + (["prompt"] if has_prompt else []))
        ax.axvline(0, color="#bbbbbb", lw=0.8, zorder=0)
        ax.set_xlabel("alpha (steering strength)")
        ax.set_title(f"{v} vectors" if len(variants) > 1 else (title or f"{v} vectors"),
                     fontsize=10)
        ax.grid(alpha=0.3)
        if metric in ("eps", "tec", "topic"):
            ax.set_ylim(-0.03, 1.03)
        if metric == "ppl":
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
    axes[0][0].set_ylabel(f"{m.name.upper()} ({'higher' if m.higher_is_better else 'lower'} "
                          "is better)")
    axes[0][-1].legend(fontsize=8, frameon=False, loc="best")
    fig.suptitle(title or f"{m.name.upper()} against alpha", fontsize=11)
    return save_figure(fig, path)


def plot_mix(rows: Sequence[dict], first: str, second: str, weights: Sequence[float],
             path: Path, metric: str = "tec") -> Path:
    """Heatmaps of the metric for each of the two emotions over the weight grid, and the
    additivity gap: f(w1, w2) - f(w1, 0) - f(0, w2) + f(0, 0)."""
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
    """grid[i][j]: the metric for `target` at weights (first=weights[i], second=weights[j])."""
    by_label = {r["label"]: r for r in rows if r["target"] == target}
    return [[(by_label.get(f"{first}={w1:g},{second}={w2:g}") or {}).get(metric)
             for w2 in weights] for w1 in weights]


def additivity_gap(grid: list[list[float | None]]) -> list[list[float | None]]:
    """f(i, j) - f(i, 0) - f(0, j) + f(0, 0): zero where the two effects simply add."""
    def gap(i: int, j: int) -> float | None:
        parts = (grid[i][j], grid[i][0], grid[0][j], grid[0][0])
        if any(p is None for p in parts):
            return None
        return parts[0] - parts[1] - parts[2] + parts[3]

    return [[gap(i, j) for j in range(len(grid))] for i in range(len(grid))]


# --- HTML -----------------------------------------------------------------------------------
def html_table(markdown: str) -> str:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head, body = cells[0], cells[2:]
    out = ["<table><thead><tr>", *[f"<th>{html.escape(c)}</th>" for c in head], "</tr></thead>"]
    out.append("<tbody>")
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def image_tag(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def html_report(title: str, sections: Sequence[tuple[str, str]], path: Path) -> Path:
    """sections: (heading, body) where body is raw HTML. One file, images inlined."""
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0 1.2em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             ".answer{font-size:13px;color:#333}pre{white-space:pre-wrap}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def metric_legend(metrics: Sequence[str], eas_is_proxy: bool) -> str:
    lines = []
    for m in get_metrics(metrics):
        note = " (proxy: the embedded judge's one-vs-rest score x 100)" if (
            m.name == "eas" and eas_is_proxy) else ""
        lines.append(f"- **{m.name.upper()}** ({'higher' if m.higher_is_better else 'lower'} "
                     f"is better): {m.description}{note}")
    return "\n".join(lines)
