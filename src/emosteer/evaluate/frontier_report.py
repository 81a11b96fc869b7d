"""The frontier's run (`run`: the experiment, then its report) and its report: JSONL rows,
held-out tables with standard errors, Pareto plots.

Files in the run's folder: summary.jsonl (the held-out rows), calibration.jsonl (every
setting tried, with "feasible" and "chosen"), figures/pareto-<emotion>.png, and report.md /
report.html from the same sections (report.write_report).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emosteer.evaluate import frontier as F
from emosteer.evaluate import report
from emosteer.evaluate.frontier import UNBOUNDED, UNSTEERED, Frontier, FrontierConfig, Method
from emosteer.evaluate.measure import JudgesRunner
from emosteer.evaluate.report import Section
from emosteer.files import write_text
from emosteer.plots import pyplot, save_figure
from emosteer.tables import markdown_table

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.evaluate.runner import Answerer

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#ff7f0e", "#7f7f7f")


def setting_name(row: Mapping) -> str:
    """How a chosen setting is shown: "1.5", "2 (layers 10-19)", "prompt", "0" (unsteered).

    Example:
        setting_name({"strength": 2.0, "band": "layers 10-19"})  # "2 (layers 10-19)"
    """
    if row["band"] == "prompt":
        return "prompt"
    band = "" if row["band"] in ("all", "-") else f" ({row['band']})"
    return f"{row['strength']:g}{band}"


def pm(value: float | None, se: float | None, digits: int = 2) -> str:
    """"0.53 ± 0.09" ("-" when there is no value; no ± without a standard error).

    Example:
        pm(0.5333, 0.0912)  # "0.53 ± 0.09"
    """
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def method_means(rows: Sequence[Mapping], judges: Sequence[str]) -> dict:
    """Means over emotions of one method's rows: EPS per judge with the SE of the mean,
    PPL ratio (geometric), topic.

    Example:
        method_means([r for r in result.held_out if r["method"] == "trained"], cfg.judges)
    """
    out: dict = {"n_emotions": len(rows)}
    for spec in judges:
        values = [r[f"eps:{spec}"] for r in rows if r.get(f"eps:{spec}") is not None]
        ses = [r[f"eps_se:{spec}"] or 0.0 for r in rows if r.get(f"eps:{spec}") is not None]
        out[f"eps:{spec}"] = statistics.fmean(values) if values else None
        out[f"eps_se:{spec}"] = math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else None
        out[f"min_eps:{spec}"] = min(values) if values else None
    ratios = [r["ppl_ratio"] for r in rows if r.get("ppl_ratio")]
    out["ppl_ratio"] = statistics.geometric_mean(ratios) if ratios else None
    topics = [r["topic"] for r in rows if r.get("topic") is not None]
    out["topic"] = statistics.fmean(topics) if topics else None
    return out


def _methods(result: Frontier) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in result.held_out))


def summary_table(result: Frontier, judges: Sequence[str], emotions: Sequence[str]) -> str:
    """Held out, one row per method: EPS by each judge ("A / B") per emotion, and the means.

    Example:
        summary_table(result, cfg.judges, cfg.emotions)
    """
    rows = []
    for method in _methods(result):
        mine = {r["emotion"]: r for r in result.held_out if r["method"] == method}
        means = method_means(list(mine.values()), judges)
        cells = [" / ".join(report.fmt(mine[e].get(f"eps:{j}"), "eps") for j in judges)
                 if e in mine else "-" for e in emotions]
        mean = " / ".join(pm(means[f"eps:{j}"], means[f"eps_se:{j}"]) for j in judges)
        rows.append([method, *cells, mean,
                     " / ".join(report.fmt(means[f"min_eps:{j}"], "eps") for j in judges),
                     report.fmt(means["ppl_ratio"], "ppl"), report.fmt(means["topic"], "topic")])
    return markdown_table(["method", *emotions, "mean EPS (± SE)", "weakest", "PPL ratio",
                           "topic"], rows)


def emotion_table(result: Frontier, judges: Sequence[str], emotion: str) -> str:
    """Held out, one emotion: per method the chosen setting, EPS by each judge, TEC (first
    judge), PPL ratio and topic, each with its standard error.

    Example:
        emotion_table(result, cfg.judges, "anger")
    """
    rows = []
    for r in result.held_out:
        if r["emotion"] != emotion:
            continue
        flag = "" if r.get("feasible_on_calibration", True) else " (none within bounds)"
        rows.append([r["method"], setting_name(r) + flag,
                     *[pm(r.get(f"eps:{j}"), r.get(f"eps_se:{j}")) for j in judges],
                     report.fmt(r.get(f"tec:{judges[0]}"), "tec"),
                     pm(r.get("ppl_ratio"), r.get("ppl_ratio_se")),
                     pm(r.get("topic"), r.get("topic_se")), _repetition(r)])
    return markdown_table(["method", "chosen setting", *[f"EPS {j}" for j in judges],
                           f"TEC {judges[0]}", "PPL ratio", "topic", "repetition"], rows)


def _repetition(row: Mapping) -> str:
    value = row.get("repetition")
    return "-" if value is None else f"{value:.2f}"


def examples_table(result: Frontier, judges: Sequence[str], emotion: str) -> str:
    """The first held-out answers of each method's chosen setting for one emotion, with the
    label each judge read (so anyone can see what an EPS means).

    Example:
        examples_table(result, cfg.judges, "anger")
    """
    rows = []
    for key, answers in result.examples.items():
        method, _, which = key.partition("|")
        if which != emotion:
            continue
        for a in answers:
            text = " ".join(a["answer"].split()).replace("|", "\\|")
            rows.append([method, a["id"], text,
                         " / ".join(str(a["labels"].get(j)) for j in judges)])
    return markdown_table(["method", "question", "answer", " / ".join(judges)], rows)


def calibration_table(result: Frontier, judges: Sequence[str], emotion: str) -> str:
    """Every setting tried for one emotion on the calibration split (* over a bound, ✓ chosen).

    Example:
        calibration_table(result, cfg.judges, "joy")
    """
    rows = []
    for r in result.calibration:
        if r["emotion"] != emotion or (r["band"] == "-" and r["method"] != _first(result)):
            continue  # strength 0 is the same answers for every method: shown once
        name = UNSTEERED if r["band"] == "-" else r["method"]
        rows.append([name, setting_name(r) + ("" if r.get("feasible") else " *"),
                     report.fmt(r.get("eps"), "eps"),
                     *[report.fmt(r.get(f"eps:{j}"), "eps") for j in judges],
                     report.fmt(r.get("ppl_ratio"), "ppl"), report.fmt(r.get("topic"), "topic"),
                     _repetition(r), "✓" if r.get("chosen") and r["band"] != "-" else ""])
    return markdown_table(["method", "setting", "EPS (mean of judges)",
                           *[f"EPS {j}" for j in judges], "PPL ratio", "topic", "repetition",
                           "chosen"], rows)


def _first(result: Frontier) -> str:
    return result.calibration[0]["method"]


# --- figures -----------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x, higher y), by increasing x.

    Example:
        pareto_front([(1.0, 0.1), (1.2, 0.5), (1.3, 0.4)])  # [(1.0, 0.1), (1.2, 0.5)]
    """
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_pareto(result: Frontier, cfg: FrontierConfig, judges: Sequence[str], emotion: str,
                path: Path) -> Path:
    """EPS against PPL ratio for one emotion: left, every setting on the calibration split
    (one line per method through its Pareto front, prompting a star); right, the chosen
    settings on the held-out split with standard errors (filled: first judge, hollow: second).

    Example:
        plot_pareto(result, cfg, cfg.judges, "joy", Path("runs/frontier/figures/pareto-joy.png"))
    """
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    colours = {m.name: PALETTE[i % len(PALETTE)] for i, m in enumerate(cfg.methods)}
    colours[UNSTEERED] = "#444444"
    colours.update({f"{m.name} {UNBOUNDED}": colours[m.name] for m in cfg.methods if m.prompt})
    for method in dict.fromkeys(r["method"] for r in result.calibration):
        rows = [r for r in result.calibration if r["method"] == method and r["emotion"] == emotion
                and r.get("ppl_ratio") is not None and r.get("eps") is not None]
        prompts = [(r["ppl_ratio"], r["eps"]) for r in rows if r["band"] == "prompt"]
        if prompts:  # prompting is a point, not a line
            left.plot(*zip(*prompts, strict=True), "*", ms=13, color=colours[method],
                      label=method)
            continue
        pts = [(r["ppl_ratio"], r["eps"]) for r in rows]
        if not pts:
            continue
        left.plot(*zip(*pts, strict=True), ".", ms=5, alpha=0.45, color=colours[method])
        left.plot(*zip(*pareto_front(pts), strict=True), "-", marker="o", ms=4,
                  color=colours[method], label=method)
    for r in (r for r in result.held_out if r["emotion"] == emotion):
        if r.get("ppl_ratio") is None:
            continue
        for k, spec in enumerate(judges[:2]):
            right.errorbar(r["ppl_ratio"], r[f"eps:{spec}"], yerr=r[f"eps_se:{spec}"] or 0,
                           xerr=r.get("ppl_ratio_se") or 0,
                           marker="*" if r["band"] == "prompt" else "os"[k], ms=7,
                           mfc=colours.get(r["method"]) if k == 0 else "white",
                           color=colours.get(r["method"]), capsize=2, lw=0.8,
                           label=r["method"] if k == 0 else None)
    for ax, title in ((left, "calibration: every setting"),
                      (right, f"held out: chosen settings ({' filled, '.join(judges[:2])} "
                              "hollow)" if len(judges) > 1 else "held out: chosen settings")):
        ax.axvline(cfg.max_ppl_ratio, color="#999999", ls="--", lw=0.9)
        ax.set_xlabel("PPL ratio to unsteered (lower is better)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    left.set_ylabel(f"EPS {emotion}")
    left.legend(fontsize=7, frameon=False, loc="best")
    right.legend(fontsize=7, frameon=False, loc="best")
    fig.suptitle(f"{emotion}: EPS against fluency cost (dashed: the {cfg.max_ppl_ratio:g}x "
                 "bound)", fontsize=11)
    return save_figure(fig, path)


# --- the files -----------------------------------------------------------------------------------
def write(result: Frontier, cfg: FrontierConfig, out: str | Path, judges: Sequence[str],
          settings: str = "") -> dict[str, Path]:
    """summary.jsonl, calibration.jsonl, the Pareto plots and report.md / report.html.

    Args:
        result: what frontier() measured.
        cfg: its settings.
        out: the run's folder.
        judges: the judge specs, in the rows' order (first: the runner's judge).
        settings: markdown lines describing the run (model, generation, timings).

    Example:
        files = write(result, cfg, "runs/frontier", cfg.judges)
    """
    out = Path(out)
    files = {
        "summary": write_text(out / "summary.jsonl", "".join(
            json.dumps({"experiment": "frontier", "split": "held_out", **r}) + "\n"
            for r in result.held_out)),
        "calibration": write_text(out / "calibration.jsonl", "".join(
            json.dumps({"experiment": "frontier", "split": "calibration", **r}) + "\n"
            for r in result.calibration))}
    emotions = list(dict.fromkeys(r["emotion"] for r in result.held_out))
    plots = [plot_pareto(result, cfg, judges, e, out / "figures" / f"pareto-{e}.png")
             for e in emotions]
    sections = [Section("settings", _settings(result, cfg, judges, settings)),
                Section("held out: EPS by method (" + " / ".join(judges) + ")",
                        summary_table(result, judges, emotions)),
                *[Section(f"held out: {e}", emotion_table(result, judges, e))
                  for e in emotions],
                Section("Pareto plots", figures=tuple(plots)),
                *[Section(f"held-out answers: {e}", examples_table(result, judges, e))
                  for e in emotions if any(k.endswith(f"|{e}") for k in result.examples)],
                *[Section(f"calibration: {e}", calibration_table(result, judges, e))
                  for e in emotions]]
    files.update(report.write_report(out, "emosteer experiment: frontier", sections))
    files.update({p.stem: p for p in plots})
    result.files = files
    return files


def _settings(result: Frontier, cfg: FrontierConfig, judges: Sequence[str], extra: str) -> str:
    lines = [f"- {len(result.queries['calibration'])} calibration questions choose each "
             f"setting; {len(result.queries['held_out'])} held-out questions (disjoint, "
             "never used to choose) report it",
             f"- rule: per method and emotion, the highest EPS (mean of {', '.join(judges)}) "
             f"with PPL ratio ≤ {cfg.max_ppl_ratio:g}, topic ≥ {cfg.min_topic:g} and repeated "
             f"trigrams ≤ {cfg.max_repetition:g} on the calibration split; strength 0 "
             "(unsteered) is always a candidate",
             "- ± is one standard error: EPS and topic from the per-answer values, the PPL "
             "ratio from the per-question differences of log PPL against the unsteered answers",
             "- methods: " + "; ".join(_grid(m) for m in cfg.methods
                                       if m.name not in result.skipped)]
    lines += [f"- skipped {name}: {why}" for name, why in result.skipped.items()]
    return "\n".join(lines + ([extra] if extra else []))


def _grid(method: Method) -> str:
    if method.prompt:
        return f"{method.name} (the emotion asked for in the system prompt)"
    strengths = ", ".join(f"{s:g}" for s in method.strengths)
    bands = "" if method.bands == (None,) else f" x {len(method.bands)} layer bands"
    extra = (" + the emotion's system prompt" if method.with_prompt else "") + (
        ", norm kept" if method.preserve_norm else "")
    return f"{method.name} (vectors {method.source}/, strengths {strengths}{bands}{extra})"


def run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        vectors_dir: str | Path | None, out: str | Path, cfg: FrontierConfig = FrontierConfig(),
        progress: bool = True, engine: Answerer | None = None, **eval_changes: Any
        ) -> Frontier:
    """The whole experiment: a JudgesRunner with caches in `out`, frontier.frontier(), the
    report.

    Args:
        model: the model steered (and the PPL reference, unsteered).
        tokenizer: its tokenizer.
        vectors_dir: one folder of vectors per method (see frontier_vectors).
        out: caches and report files.
        cfg: methods, emotions, question counts, judges, bounds.
        progress: show progress bars.
        engine: generate the answers there (a VllmAnswerer, `vllm_answerer`); the model
            still scores perplexity.
        eval_changes: EvalConfig fields to change (generation, seed, calibration_share).

    Example:
        result = run(model, tok, "runs/frontier/vectors", "runs/frontier")
        print(result.files["markdown"])
    """
    runner = JudgesRunner(model, tokenizer, F.eval_config(cfg, **eval_changes), out,
                          cfg.judges[1:], progress=progress, engine=engine)
    start = time.perf_counter()
    result = F.frontier(runner, vectors_dir, cfg)
    g = runner.cfg.generation
    notes = [f"- model `{runner.model_id}`; judges {', '.join(cfg.judges)}; PPL under the same "
             f"model, unsteered; generation {g.max_new_tokens} new tokens, "
             + (f"sampling T={g.temperature:g} top_p={g.top_p:g}" if g.do_sample else "greedy")
             + f", seed {g.seed}",
             f"- this run: {time.perf_counter() - start:.0f} s, "
             f"{runner.timings.get('answers_generated', 0):g} answers generated"]
    write(result, cfg, out, list(runner.judge_names()), "\n".join(notes))
    return result
