"""The paper's experiments on emotion_query_plus: alpha sweep, mixes, EV_base, prompting.

Each experiment crosses Conditions (conditions.py) with evaluation questions, runs them through
the cached Runner (runner.py) and writes its report (report.py): summary.jsonl, report.md and a
self-contained report.html. Each experiment builds its own sections; what every report has
(settings, metric legend, sample answers) is added by `_write`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emosteer.data import Query
from emosteer.evaluate import figures, report
from emosteer.evaluate.conditions import (
    DATASET,
    Condition,
    base_conditions,
    calibration_queries,
    centered,
    evaluation_queries,
    mix_conditions,
    prompt_conditions,
    sweep_conditions,
    unsteered,
)
from emosteer.evaluate.metrics import ANY
from emosteer.evaluate.report import Section
from emosteer.evaluate.runner import AutoAlpha, Runner
from emosteer.files import write_text
from emosteer.tables import markdown_table
from emosteer.vectors import EmotionVector


@dataclass
class Result:
    """What an experiment returns.

    Args:
        rows: one summary row per condition and target.
        files: "summary", "markdown", "html" and one entry per figure -> path.
        notes: the facts the report states (question count, calibration, sanity checks).

    Example:
        result = prompting(runner)
        print(result.files["html"])
    """

    rows: list[dict]
    files: dict[str, Path]
    notes: dict = field(default_factory=dict)


def choose_alpha(runner: Runner, vector: EmotionVector, emotion: str,
                 queries: Sequence[Query], auto: AutoAlpha, variant: str = "raw") -> dict:
    """The smallest candidate alpha whose EPS reaches the target with PPL within the bound.

    Measured on `queries` (the calibration split). When no candidate reaches the target, the
    one with the best EPS within the bound is taken, and the result says so.

    Args:
        runner: runs the candidates (answers are cached like any others).
        vector: the emotion's vector.
        emotion: the emotion scored.
        queries: calibration questions.
        auto: the candidates, the EPS target and the PPL bound.
        variant: the vector variant named in the conditions.

    Example:
        pick = choose_alpha(runner, vectors["joy"], "joy", calibration_queries(4), AutoAlpha())
        pick["alpha"], pick["reached"]
    """
    base = unsteered((emotion,))
    candidates = [Condition(variant, a, (emotion,), vector, label=f"{a:g}")
                  for a in auto.candidates]
    rows = runner.run([base, *candidates], queries)
    ppl0 = rows[0].get("ppl")
    measured: list[dict[str, Any]] = []
    for c, row in zip(candidates, rows[1:], strict=True):
        within = ppl0 is None or row.get("ppl") is None or row["ppl"] <= auto.max_ppl_ratio * ppl0
        measured.append({"alpha": c.alpha, "eps": row.get("eps"), "ppl": row.get("ppl"),
                         "within_ppl": within})
    ok = [m for m in measured if m["within_ppl"] and (m["eps"] or 0) >= auto.target_eps]
    if ok:
        best, reached = ok[0], True
    else:
        fluent = [m for m in measured if m["within_ppl"]] or measured[:1]
        best, reached = max(fluent, key=lambda m: (m["eps"] or 0, -m["alpha"])), False
    return {"emotion": emotion, "alpha": best["alpha"], "reached": reached,
            "unsteered_ppl": ppl0, "candidates": measured}


# --- whole experiments, with their reports -----------------------------------------------------
def alpha_sweep(runner: Runner, vectors: dict[str, EmotionVector],
                variants: Sequence[str] = ("raw",), prompting: bool = True,
                auto: bool = False) -> Result:
    """The paper's table: each emotion at each alpha, with the prompting baseline and, with
    auto, the alpha calibrated on the calibration split (never on the reported questions).

    Args:
        runner: the cached runner (its cfg names emotions, alphas, questions, metrics).
        vectors: emotion -> vector ("base" too for the centred variant, else the mean).
        variants: "raw" and/or "centered".
        prompting: add the system-prompt baseline.
        auto: add each emotion at the alpha chosen by `choose_alpha`.

    Example:
        result = alpha_sweep(runner, vectors, ("raw", "centered"), auto=True)
    """
    cfg = runner.cfg
    emotions = list(cfg.emotions)
    queries = _queries(runner)
    conditions = sweep_conditions(vectors, emotions, cfg.alphas, variants, prompting)
    notes: dict = {"queries": len(queries)}
    if auto:
        calib = calibration_queries(cfg.auto.limit, cfg.seed, cfg.calibration_share)
        assert not {q.id for q in calib} & {q.id for q in queries}
        notes["calibration"] = []
        for variant in variants:
            chosen = vectors if variant == "raw" else centered(vectors, emotions)
            for emotion in emotions:
                pick = choose_alpha(runner, chosen[emotion], emotion, calib, cfg.auto, variant)
                notes["calibration"].append({**pick, "variant": variant,
                                             "queries": len(calib)})
                name = "auto" if variant == "raw" else f"auto-{variant}"
                conditions.append(Condition(name, pick["alpha"], (emotion,), chosen[emotion],
                                            label=f"{pick['alpha']:g}"))
    rows = runner.run(conditions, queries)
    notes.update(_sanity(runner, conditions[0], queries))
    sections = _sweep_sections(runner, rows, rows)
    if notes.get("calibration"):
        sections.insert(-1, Section("alpha auto (chosen on the calibration split)",
                                    _calibration_table(notes["calibration"], cfg.auto)))
    return _write(runner, "alpha-sweep", rows, sections, conditions, queries, notes)


def prompting(runner: Runner) -> Result:
    """Only the baseline: the emotion asked for in the system prompt, against unsteered.

    Example:
        result = prompting(runner)
    """
    cfg = runner.cfg
    queries = _queries(runner)
    conditions = [unsteered(cfg.emotions), *prompt_conditions(cfg.emotions)]
    rows = runner.run(conditions, queries)
    notes = {"queries": len(queries), **_sanity(runner, conditions[0], queries)}
    return _write(runner, "prompting", rows, _sweep_sections(runner, rows, rows), conditions,
                  queries, notes)


def base(runner: Runner, vectors: dict[str, EmotionVector]) -> Result:
    """EV_base at each alpha: does the shared part raise emotion in general, and which?

    Args:
        runner: the cached runner.
        vectors: must hold "base" (base.safetensors).

    Example:
        result = base(runner, vectors)
    """
    cfg = runner.cfg
    queries = _queries(runner)
    conditions = base_conditions(vectors, cfg.alphas, cfg.emotions)
    rows = runner.run(conditions, queries)
    sections = _sweep_sections(runner, rows, [r for r in rows if r["target"] == ANY])
    return _write(runner, "base", rows, sections, conditions, queries, {"queries": len(queries)})


def mix_experiment(runner: Runner, vectors: dict[str, EmotionVector], first: str, second: str,
                   weights: Sequence[float] = (0.0, 1.0, 2.0)) -> Result:
    """w1 * first + w2 * second over a grid; the additivity gap shows whether effects add.

    Args:
        runner: the cached runner.
        vectors: emotion -> vector.
        first: the first emotion.
        second: the second emotion.
        weights: the grid of weights tried for each (include 0 for the gap).

    Example:
        result = mix_experiment(runner, vectors, "joy", "sadness", (0, 1, 2))
    """
    queries = _queries(runner)
    conditions = mix_conditions(vectors, first, second, weights)
    rows = runner.run(conditions, queries)
    metrics = [m.name for m in runner.metrics]
    figure = figures.plot_mix(rows, first, second, weights, runner.out / "figures" / "mix.png")
    sections = [Section(t, report.metric_table([r for r in rows if r["target"] == t], metrics,
                                               first="weights", name=lambda r: r["label"]))
                for t in (first, second)]
    sections.append(Section("figures", figures=(figure,)))
    notes = {"queries": len(queries), "pair": [first, second], "weights": list(weights)}
    return _write(runner, "mix", rows, sections, conditions, queries, notes)


def _queries(runner: Runner) -> list[Query]:
    cfg = runner.cfg
    return evaluation_queries(cfg.limit, cfg.seed, cfg.calibration_share)


def _sweep_sections(runner: Runner, rows: list[dict], plotted: list[dict]) -> list[Section]:
    """One table per target and one of means, then one figure per metric."""
    metrics = [m.name for m in runner.metrics]
    tables = report.sweep_tables(rows, metrics)
    plots = figures.sweep_figures(plotted, metrics, runner.out / "figures")
    return ([Section(target, table) for target, table in tables.items()]
            + [Section("figures", figures=tuple(plots))])


def _sanity(runner: Runner, plain: Condition, queries: Sequence[Query]) -> dict:
    """What the judge makes of unsteered answers, and the topic score of a shuffled pairing."""
    notes: dict = {}
    keys = [runner.gen_key(plain, q) for q in queries]
    judged = [j for k in keys if (j := runner.annotations_of(k).get("judge")) is not None]
    if judged and len(judged) == len(keys):
        labels = [max(j["probs"], key=j["probs"].__getitem__) for j in judged]
        notes["unsteered_labels"] = {lab: labels.count(lab) / len(labels)
                                     for lab in sorted(set(labels), key=labels.count,
                                                       reverse=True)}
    if runner.needs("topic") and runner.cfg.topic == "embedding":
        answers = runner.answers(plain, queries)
        questions = [q.question for q in queries]
        shifted = questions[1:] + questions[:1]  # every answer paired with another question
        notes["topic_matched"] = statistics.fmean(runner.topic.score(questions, answers))
        notes["topic_shuffled"] = statistics.fmean(runner.topic.score(shifted, answers))
    return notes


def _write(runner: Runner, name: str, rows: list[dict], sections: list[Section],
           conditions: Sequence[Condition], queries: Sequence[Query], notes: dict) -> Result:
    """summary.jsonl, report.md and report.html: settings, metrics, the experiment's own
    sections, sample answers."""
    out = runner.out
    metrics = [m.name for m in runner.metrics]
    files: dict[str, Path] = {"summary": write_text(
        out / "summary.jsonl", "".join(json.dumps({"experiment": name, **r}) + "\n"
                                       for r in rows))}
    judge_proxy = runner.needs("judge") and runner.judge.eas_is_proxy
    every = [Section("settings", _settings(runner, queries, notes)),
             Section("metrics", report.metric_legend(metrics, judge_proxy)),
             *sections,
             Section("sample answers", _samples(runner, conditions, queries), html_only=True)]
    files.update(report.write_report(out, f"emosteer experiment: {name}", every))
    files.update({p.stem: p for s in sections for p in s.figures})
    return Result(rows, files, notes)


def _settings(runner: Runner, queries: Sequence[Query], notes: dict) -> str:
    g = runner.cfg.generation
    cats: dict[str, int] = {}
    for q in queries:
        cats[q.emotion] = cats.get(q.emotion, 0) + 1
    lines = [f"- model: `{runner.model_id}`; judge: `{runner.judge_spec}`; topic: "
             f"{runner.cfg.topic}; PPL under the same model, unsteered",
             f"- {len(queries)} questions of {DATASET} (seed {runner.cfg.seed}; "
             + ", ".join(f"{k} {v}" for k, v in cats.items())
             + f"), none from the calibration split ({runner.cfg.calibration_share:.0%})",
             f"- generation: {g.max_new_tokens} new tokens, "
             + (f"sampling T={g.temperature:g} top_p={g.top_p:g}" if g.do_sample
                else "greedy")
             + f", repetition penalty {g.repetition_penalty}, seed {g.seed}"]
    if "unsteered_labels" in notes:
        lines.append("- judge on the unsteered answers: " + ", ".join(
            f"{k} {v:.0%}" for k, v in notes["unsteered_labels"].items()))
    if "topic_shuffled" in notes:
        lines.append(f"- topic control: unsteered answers score {notes['topic_matched']:.2f} "
                     f"with their own question, {notes['topic_shuffled']:.2f} with another")
    t = runner.timings
    if t:
        lines.append("- this run: " + ", ".join(
            f"{k.removesuffix('_s')} {v:.0f} s" if k.endswith("_s") else f"{k} {v:g}"
            for k, v in t.items()))
    return "\n".join(lines)


def _calibration_table(picks: list[dict], auto: AutoAlpha) -> str:
    def eps(p: dict) -> str:
        return ", ".join(f"{c['alpha']:g}: {c['eps']:.2f}" + ("" if c["within_ppl"] else "*")
                         for c in p["candidates"] if c["eps"] is not None)

    table = markdown_table(
        ["vector", "emotion", "chosen alpha", "reached", "EPS by alpha (calibration)"],
        [[p["variant"], p["emotion"], f"{p['alpha']:g}", "yes" if p["reached"] else "no",
          eps(p)] for p in picks])
    return (f"Target EPS ≥ {auto.target_eps:g} with PPL ≤ {auto.max_ppl_ratio:g} x unsteered; "
            "candidates " + ", ".join(f"{a:g}" for a in auto.candidates) + ".\n\n"
            + table + "\n\n\\* PPL above the bound.")


def _samples(runner: Runner, conditions: Sequence[Condition], queries: Sequence[Query],
             per_category: int = 1) -> str:
    """The first question of each category, answered under every condition."""
    shown: dict[str, int] = {}
    parts = []
    for q in queries:
        if shown.get(q.emotion, 0) >= per_category:
            continue
        shown[q.emotion] = shown.get(q.emotion, 0) + 1
        rows = []
        for c in conditions:
            record = runner.record(c, q)
            if record is not None:
                name = f"{c.variant} {c.targets[0] if c.variant != 'unsteered' else ''} {c.label}"
                rows.append([report.escape(name), report.escape(record["answer"])])
        parts.append(f"### {report.escape(q.question)}\n\n"
                     + markdown_table(["condition", "answer"], rows, align=("left", "left")))
    return "\n\n".join(parts)
