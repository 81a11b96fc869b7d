"""Experiment reports: metric tables, and one writer for report.md and report.html.

Rows are the dicts Runner.summarise returns: variant, alpha, label, target, n and one value
per metric. Tables are shaped like the paper's: one block per emotion, rows alpha, columns
PPL, topic, EPS, EAS, TEC. An experiment hands `write_report` its Sections (markdown text and
figures); report.md gets them as written, report.html renders the same markdown (markdown-it,
raw HTML off) into one self-contained page with the figures inlined.
"""

from __future__ import annotations

import base64
import html
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emosteer.evaluate.metrics import METRICS, get_metrics
from emosteer.files import write_text
from emosteer.tables import markdown_table

VARIANT_ORDER = {"unsteered": 0, "raw": 1, "centered": 2, "base": 3, "mix": 4, "auto": 5,
                 "auto-centered": 6, "prompt": 7}
DIGITS = {"ppl": 2, "topic": 2, "eps": 2, "eas": 1, "tec": 2}


def fmt(value: float | None, name: str) -> str:
    """A metric value with the digits its column uses ("-" for None).

    Example:
        fmt(12.345, "eas")  # "12.3"
    """
    if value is None:
        return "-"
    return f"{value:.{DIGITS.get(name, 2)}f}"


def header(metrics: Sequence[str]) -> list[str]:
    """Column names with the better direction: "PPL ↓", "EPS ↑".

    Example:
        header(["ppl", "eps"])  # ["PPL ↓", "EPS ↑"]
    """
    return [f"{METRICS[m].name.upper()} {'↑' if METRICS[m].higher_is_better else '↓'}"
            for m in metrics]


def _order(row: dict) -> tuple:
    return (VARIANT_ORDER.get(row["variant"], 9), row["alpha"])


def metric_table(rows: Sequence[dict], metrics: Sequence[str], first: str = "vector",
                 name: Callable[[dict], str] = lambda r: r["variant"]) -> str:
    """Summary rows as a markdown table: first column, alpha, one column per metric.

    Args:
        rows: summary rows (one target's, or means).
        metrics: the metric columns.
        first: the first column's name.
        name: what the first column shows for a row.

    Example:
        metric_table([r for r in rows if r["target"] == "joy"], ["ppl", "eps"])
    """
    def cells(r: dict) -> list[str]:
        alpha = r["label"] if r["variant"] == "prompt" or r["alpha"] != r["alpha"] \
            else f"{r['alpha']:g}"  # alpha != alpha: NaN, one alpha per emotion
        return [name(r), alpha, *[fmt(r.get(m), m) for m in metrics]]

    return markdown_table([first, "alpha", *header(metrics)],
                          [cells(r) for r in sorted(rows, key=_order)])


def sweep_tables(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, str]:
    """One table per target emotion, plus 'mean over emotions' for each (variant, alpha).

    Example:
        sweep_tables(result.rows, ["ppl", "eps"])["mean over emotions"]
    """
    targets = list(dict.fromkeys(r["target"] for r in rows))
    out = {t: metric_table([r for r in rows if r["target"] == t], metrics) for t in targets}
    out["mean over emotions"] = metric_table(mean_rows(rows, metrics), metrics)
    return out


def mean_rows(rows: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """Rows averaged over targets per (variant, alpha): PPL geometric, the rest arithmetic.

    Auto rows (one alpha per emotion) are averaged together with alpha NaN.

    Example:
        mean_rows(result.rows, ["ppl", "eps"])
    """
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


def metric_legend(metrics: Sequence[str], eas_is_proxy: bool) -> str:
    """A markdown list saying what each metric measures and which way is better.

    Example:
        metric_legend(["ppl", "eas"], eas_is_proxy=True)
    """
    lines = []
    for m in get_metrics(metrics):
        note = " (proxy: the embedded judge's one-vs-rest score x 100)" if (
            m.name == "eas" and eas_is_proxy) else ""
        lines.append(f"- **{m.name.upper()}** ({'higher' if m.higher_is_better else 'lower'} "
                     f"is better): {m.description}{note}")
    return "\n".join(lines)


def escape(text: str) -> str:
    """Text shown literally in markdown (also inside a table cell): one line, punctuation
    backslash-escaped.

    Example:
        escape("a | b *c*")  # "a \\| b \\*c\\*"
    """
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", " ".join(text.split()))


# --- one writer for report.md and report.html ----------------------------------------------
@dataclass(frozen=True)
class Section:
    """One part of a report.

    Args:
        heading: the section's title.
        text: its markdown (lists, tables, emphasis).
        figures: PNG files shown after the text (linked in report.md, inlined in the HTML).
        html_only: True for what only the page shows (e.g. sample answers).

    Example:
        Section("joy", metric_table(rows, ["eps"]), figures=(Path("runs/figures/eps.png"),))
    """

    heading: str
    text: str = ""
    figures: tuple[Path, ...] = ()
    html_only: bool = False


PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.6em 0 1.2em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}pre{{white-space:pre-wrap}}
</style></head><body><h1>{title}</h1>
{body}
</body></html>
"""


def write_report(out: str | Path, title: str, sections: Sequence[Section]) -> dict[str, Path]:
    """Write `out`/report.md and `out`/report.html (self-contained) from the same sections.

    Args:
        out: the run's folder; figure links in report.md are relative to it.
        title: the report's title.
        sections: in order.

    Example:
        write_report("runs/demo", "emosteer experiment: demo", [Section("notes", "- one")])
    """
    out = Path(out)
    md = [f"# {title}", ""]
    for s in sections:
        if not s.html_only:
            md += [f"## {s.heading}", ""] + ([s.text, ""] if s.text else [])
            md += [f"![{p.stem}]({Path(os.path.relpath(p, out)).as_posix()})" for p in s.figures]
            md += [""] if s.figures else []
    body = "\n".join(f"<h2>{html.escape(s.heading)}</h2>\n{render(s.text)}"
                     + "".join(image_tag(p) for p in s.figures) for s in sections)
    page = PAGE.format(title=html.escape(title), body=body)
    return {"markdown": write_text(out / "report.md", "\n".join(md).rstrip("\n") + "\n"),
            "html": write_text(out / "report.html", page)}


def render(markdown: str) -> str:
    """Markdown (CommonMark and tables) as HTML; raw HTML in the text is escaped.

    Example:
        render("- **EPS** is `high`")
    """
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def image_tag(path: str | Path) -> str:
    """An <img> with the PNG inlined as a data: URI (the page needs no other file).

    Example:
        image_tag(Path("runs/figures/eps.png"))
    """
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'
