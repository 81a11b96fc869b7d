"""The paper's experiments on emotion_query_plus: alpha sweep, mixes, EV_base, prompting.

Each experiment is a list of Conditions (a vector and alpha, or a system prompt) crossed with
evaluation questions. Answers are generated in batches, several conditions per forward pass
(steer_rows), and cached in JSONL per (model, scaled-vector hash, system prompt, question,
generation settings); annotations (judge, perplexity, topic) are cached per answer and scorer
version. Rerunning the same command resumes; changing a setting only computes what is new.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from emosteer import data
from emosteer.data import Query
from emosteer.errors import BadInputError
from emosteer.evaluate.metrics import ANY, get_metrics
from emosteer.evaluate.store import JsonlStore, digest
from emosteer.generation import GenerateConfig, chat_prompt, decode_responses, generate
from emosteer.progress import progress_bar
from emosteer.vectors import EMOTIONS, EmotionVector

DATASET = "emotion_query_plus"  # evaluation only: extraction never reads it


@dataclass(frozen=True)
class AutoAlpha:
    candidates: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # the paper's range, finer
    target_eps: float = 0.5  # "most answers show the emotion"
    max_ppl_ratio: float = 1.5  # fluency bound: PPL at most 1.5x the unsteered PPL
    limit: int = 4  # calibration questions per EQ+ category (from the calibration split)


@dataclass(frozen=True)
class EvalConfig:
    emotions: tuple[str, ...] = EMOTIONS  # the paper's five
    alphas: tuple[float, ...] = (-1.0, 0.0, 1.0, 2.0, 4.0)  # the paper's sweep
    limit: int | None = 5  # questions per EQ+ category (5 emotions + neutral), seeded sample
    metrics: tuple[str, ...] = ("ppl", "topic", "eps", "eas", "tec")  # the paper's five
    judge: str = "embedded"  # offline MiniLM judge; "hf:facebook/bart-large-mnli" = paper's EPS
    topic: str = "embedding"  # MiniLM similarity, calibrated; "judge": the LLM judge rates it
    calibration_share: float = 0.2  # EQ+ questions set aside for --alpha auto, never reported
    seed: int = 0  # the question sample and the sampling seed
    generation: GenerateConfig = field(
        default_factory=lambda: GenerateConfig(max_new_tokens=48, batch_size=16))
    auto: AutoAlpha = field(default_factory=AutoAlpha)


@dataclass(frozen=True)
class Condition:
    """One way of answering: alpha * vector added (steer_rows), or a system prompt, or neither."""

    variant: str  # unsteered, raw, centered, prompt, base, mix, auto
    alpha: float
    targets: tuple[str, ...]  # the emotions each answer is scored for
    vector: EmotionVector | None = None  # unscaled
    system: str | None = None
    label: str = ""  # how the row is named in tables

    def steering(self) -> EmotionVector | None:
        if self.vector is None or self.alpha == 0:
            return None
        return self.vector * self.alpha

    def key(self) -> dict:
        return {"vector": vector_digest(self.steering()), "system": self.system}

    def describe(self) -> dict:
        return {"variant": self.variant, "alpha": self.alpha, "label": self.label,
                "vector": self.vector.emotion if self.vector is not None else None,
                "system": self.system}


def vector_digest(vector: EmotionVector | None) -> str | None:
    """Hash of the directions actually added (alpha applied) and where they are added."""
    if vector is None:
        return None
    import hashlib

    h = hashlib.sha256(vector.site.encode())
    for layer, direction in vector.directions.items():
        h.update(str(layer).encode())
        h.update(direction.numpy().tobytes())
    return h.hexdigest()[:20]


# --- questions ---------------------------------------------------------------------------------
def evaluation_queries(limit: int | None, seed: int = 0, share: float = 0.2,
                       categories: Sequence[str] | None = None) -> list[Query]:
    """A seeded sample of `limit` questions per category, never from the calibration split."""
    return _sample(data.split(data.load_queries(DATASET), share, seed)[0], limit, seed,
                   categories)


def calibration_queries(limit: int | None, seed: int = 0, share: float = 0.2,
                        categories: Sequence[str] | None = None) -> list[Query]:
    """A seeded sample from the calibration split: disjoint from evaluation_queries()."""
    return _sample(data.split(data.load_queries(DATASET), share, seed)[1], limit, seed,
                   categories)


def _sample(pool: list[Query], limit: int | None, seed: int,
            categories: Sequence[str] | None) -> list[Query]:
    import random

    chosen = []
    for category in categories or data.emotions_of(DATASET):
        rows = [q for q in pool if q.emotion == category]
        if limit is not None and limit < len(rows):
            rows = sorted(random.Random(f"{seed}:{category}").sample(rows, limit),
                          key=lambda q: q.id)
        chosen.extend(rows)
    return chosen


# --- conditions -----------------------------------------------------------------------------------
def centered(vectors: dict[str, EmotionVector],
             emotions: Sequence[str]) -> dict[str, EmotionVector]:
    """Each emotion minus EV_base (the saved base, else the mean of the given emotions)."""
    base = vectors.get("base")
    if base is None:
        base = sum((vectors[e] for e in emotions[1:]), start=vectors[emotions[0]]) / len(emotions)
    return {e: _named(vectors[e] - base, f"{e}-base") for e in emotions}


def _named(vector: EmotionVector, name: str) -> EmotionVector:
    return EmotionVector(vector.directions, {**vector.meta, "emotion": name})


def unsteered(targets: Sequence[str]) -> Condition:
    return Condition("unsteered", 0.0, tuple(targets), label="0 (unsteered)")


def sweep_conditions(vectors: dict[str, EmotionVector], emotions: Sequence[str],
                     alphas: Sequence[float], variants: Sequence[str] = ("raw",),
                     prompting: bool = True) -> list[Condition]:
    """The alpha sweep: each emotion's vector (raw and/or centred) at each alpha; alpha 0 once."""
    missing = [e for e in emotions if e not in vectors]
    if missing:
        raise BadInputError(f"no vector for {', '.join(missing)}: extract it first "
                            f"(`emosteer extract --emotions {','.join(missing)}`)")
    conditions = [unsteered(emotions)]
    for variant in variants:
        if variant not in ("raw", "centered"):
            raise BadInputError(f"unknown vector variant {variant!r}: use raw or centered")
        chosen = vectors if variant == "raw" else centered(vectors, emotions)
        for emotion in emotions:
            for alpha in alphas:
                if alpha != 0:
                    conditions.append(Condition(variant, float(alpha), (emotion,),
                                                chosen[emotion], label=f"{alpha:g}"))
    if prompting:
        conditions.extend(prompt_conditions(emotions))
    return conditions


def prompt_conditions(emotions: Sequence[str]) -> list[Condition]:
    """The baseline: no vector, the emotion asked for in the system prompt."""
    return [Condition("prompt", 0.0, (e,), system=data.system_prompt(e), label="prompt")
            for e in emotions]


def base_conditions(vectors: dict[str, EmotionVector], alphas: Sequence[float],
                    emotions: Sequence[str]) -> list[Condition]:
    """EV_base (mean of the emotions' vectors), scored for emotion at all and for each one."""
    if "base" not in vectors:
        raise BadInputError("no base vector (base.safetensors): `emosteer extract` writes it")
    targets = (ANY, *emotions)
    return [unsteered(targets)] + [Condition("base", float(a), targets, vectors["base"],
                                             label=f"{a:g}") for a in alphas if a != 0]


def mix_conditions(vectors: dict[str, EmotionVector], first: str, second: str,
                   weights: Sequence[float]) -> list[Condition]:
    """w1 * first + w2 * second for every pair of weights: does the effect add up?"""
    from emosteer.vectors import mix

    for name in (first, second):
        if name not in vectors:
            raise BadInputError(f"no vector for {name!r}: available are {', '.join(vectors)}")
    conditions = []
    for w1 in weights:
        for w2 in weights:
            label = f"{first}={w1:g},{second}={w2:g}"
            if w1 == 0 and w2 == 0:
                conditions.append(replace(unsteered((first, second)), label=label))
                continue
            vec = mix(vectors, {first: w1, second: w2})
            conditions.append(Condition("mix", 1.0, (first, second), vec, label=label))
    return conditions


# --- running ------------------------------------------------------------------------------------
class Runner:
    """Generates, annotates and summarises conditions x questions, with caches in `out`."""

    def __init__(self, model, tokenizer, cfg: EvalConfig, out: str | Path,
                 progress: bool = True, judge=None, ppl=None, topic=None):
        from emosteer.models import model_id

        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.out = Path(out)
        self.progress = progress
        self.model_id = model_id(model)
        self.generations = JsonlStore(self.out / "generations.jsonl")
        self.annotations = JsonlStore(self.out / "annotations.jsonl", ("key", "scorer"))
        self.metrics = get_metrics(cfg.metrics)
        self._judge, self._ppl, self._topic = judge, ppl, topic
        self.timings: dict[str, float] = {}
        if cfg.topic not in ("embedding", "judge"):
            raise BadInputError(f"topic={cfg.topic!r}: use 'embedding' or 'judge'")

    # scorers are built on first use, so a run with cached annotations loads none of them
    @property
    def judge(self):
        if self._judge is None:
            from emosteer.evaluate.judges import load_judge

            self._judge = load_judge(self.cfg.judge)
        return self._judge

    @property
    def ppl(self):
        if self._ppl is None:
            from emosteer.evaluate.scorers import Perplexity

            self._ppl = Perplexity(self.model, self.tokenizer)
        return self._ppl

    @property
    def topic(self):
        if self._topic is None:
            from emosteer.evaluate.scorers import TopicSimilarity

            self._topic = TopicSimilarity()
        return self._topic

    def gen_key(self, condition: Condition, query: Query) -> str:
        g = asdict(self.cfg.generation)
        g.pop("batch_size")  # how answers are batched doesn't name them
        return digest({"model": self.model_id, **condition.key(), "query": query.id,
                       "question": query.question, "generation": g})

    # --- generation ---
    def generate(self, conditions: Sequence[Condition], queries: Sequence[Query]) -> None:
        items = [(c, q, self.gen_key(c, q)) for c in conditions for q in queries]
        missing = [item for item in {key: (c, q, key) for c, q, key in items}.values()
                   if item[2] not in self.generations]  # a cached answer is never redone
        size = self.cfg.generation.batch_size
        todo = [missing[i:i + size] for i in range(0, len(missing), size)]
        start = time.perf_counter()
        with progress_bar(self.progress, "generating", sum(len(b) for b in todo)) as advance:
            for batch in todo:
                self._generate_batch(batch)
                advance(len(batch))
        self.timings["generate_s"] = self.timings.get("generate_s", 0) + time.perf_counter() - start
        self.timings["answers_generated"] = (self.timings.get("answers_generated", 0)
                                             + sum(len(b) for b in todo))

    def _generate_batch(self, batch: list[tuple[Condition, Query, str]]) -> None:
        from emosteer.steering import steer_rows

        cfg = self.cfg.generation
        prompts = [chat_prompt(self.tokenizer, q.question, c.system) for c, q, _ in batch]
        rows = [c.steering() for c, _, _ in batch]
        torch.manual_seed(int(digest([key for _, _, key in batch])[:8], 16) ^ cfg.seed)
        t0 = time.perf_counter()
        with steer_rows(self.model, rows):
            out = generate(self.model, self.tokenizer, prompts, cfg)
        texts = decode_responses(self.tokenizer, out)
        seconds = (time.perf_counter() - t0) / len(batch)
        self.generations.add(
            {"key": key, "model": self.model_id, "condition": c.describe(), "query": q.id,
             "category": q.emotion, "question": q.question, "answer": text,
             "seconds": round(seconds, 3)}
            for (c, q, key), text in zip(batch, texts, strict=True))

    # --- annotation ---
    def scorers(self) -> list[tuple[str, str, Callable]]:
        """(annotation name, scorer version, score(questions, answers)) for needed metrics.

        With topic "judge", topic is read from the judge's own rating: one request per answer.
        """
        needs = {m.needs for m in self.metrics}
        topic_from_judge = "topic" in needs and self.cfg.topic == "judge"
        if topic_from_judge and not self.judge.rates_topic:
            raise BadInputError(f"judge {self.cfg.judge} does not rate topic: use --topic "
                                "embedding or an openai: judge")
        out = []
        if "judge" in needs or topic_from_judge:
            j = self.judge
            out.append(("judge", f"judge:{j.spec}:{j.version}",
                        lambda qs, As: [r.to_json() for r in j.rate(qs, As)]))
        if "topic" in needs and not topic_from_judge:
            t = self.topic
            out.append(("topic", t.version, t.score))
        if "ppl" in needs:
            p = self.ppl
            out.append(("ppl", p.version, p.score))
        return out

    def annotate(self, keys: Sequence[str], batch_size: int = 32) -> None:
        keys = list(dict.fromkeys(keys))
        for name, version, score in self.scorers():
            missing = [k for k in keys if (k, version) not in self.annotations]
            start = time.perf_counter()
            shown = self.progress and bool(missing)
            with progress_bar(shown, f"scoring {name}", len(missing)) as adv:
                for i in range(0, len(missing), batch_size):
                    chunk = [self.generations.get(k) for k in missing[i:i + batch_size]]
                    values = score([r["question"] for r in chunk], [r["answer"] for r in chunk])
                    self.annotations.add({"key": r["key"], "scorer": version, "name": name,
                                          "value": v} for r, v in zip(chunk, values, strict=True))
                    adv(len(chunk))
            self.timings[f"score_{name}_s"] = (self.timings.get(f"score_{name}_s", 0)
                                               + time.perf_counter() - start)

    def annotations_of(self, key: str) -> dict:
        values = {name: (self.annotations.get(key, version) or {}).get("value")
                  for name, version, _ in self.scorers()}
        if self.cfg.topic == "judge" and values.get("judge") is not None:
            values["topic"] = values["judge"].get("topic")
        return values

    # --- summary ---
    def run(self, conditions: Sequence[Condition], queries: Sequence[Query]) -> list[dict]:
        """Generate, annotate and summarise: one row per condition and target."""
        self.generate(conditions, queries)
        self.annotate([self.gen_key(c, q) for c in conditions for q in queries])
        return self.summarise(conditions, queries)

    def summarise(self, conditions: Sequence[Condition], queries: Sequence[Query]) -> list[dict]:
        rows = []
        for c in conditions:
            annotated = [self.annotations_of(self.gen_key(c, q)) for q in queries]
            for target in c.targets:
                row = {**c.describe(), "target": target, "n": len(queries)}
                for m in self.metrics:
                    row[m.name] = m(annotated, target)
                rows.append(row)
        return rows

    def answers(self, condition: Condition, queries: Sequence[Query]) -> list[str]:
        return [self.generations.get(self.gen_key(condition, q))["answer"] for q in queries]


def choose_alpha(runner: Runner, vector: EmotionVector, emotion: str,
                 queries: Sequence[Query], auto: AutoAlpha, variant: str = "raw") -> dict:
    """The smallest candidate alpha whose EPS reaches the target with PPL within the bound.

    Measured on `queries` (the calibration split). When no candidate reaches the target, the
    one with the best EPS within the bound is taken, and the result says so.
    """
    base = unsteered((emotion,))
    candidates = [Condition(variant, a, (emotion,), vector, label=f"{a:g}")
                  for a in auto.candidates]
    rows = runner.run([base, *candidates], queries)
    ppl0 = rows[0].get("ppl")
    measured = []
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




def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# --- whole experiments, with their reports -----------------------------------------------------
@dataclass
class Result:
    rows: list[dict]
    files: dict[str, Path]
    notes: dict = field(default_factory=dict)


def alpha_sweep(runner: Runner, vectors: dict[str, EmotionVector],
                variants: Sequence[str] = ("raw",), prompting: bool = True,
                auto: bool = False) -> Result:
    """The paper's table: each emotion at each alpha, with the prompting baseline and, with
    auto, the alpha calibrated on the calibration split (never on the reported questions)."""
    cfg = runner.cfg
    emotions = list(cfg.emotions)
    queries = evaluation_queries(cfg.limit, cfg.seed, cfg.calibration_share)
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
    return _write(runner, "alpha-sweep", rows, conditions, queries, notes)


def prompting(runner: Runner) -> Result:
    """Only the baseline: the emotion asked for in the system prompt, against unsteered."""
    cfg = runner.cfg
    queries = evaluation_queries(cfg.limit, cfg.seed, cfg.calibration_share)
    conditions = [unsteered(cfg.emotions), *prompt_conditions(cfg.emotions)]
    rows = runner.run(conditions, queries)
    notes = {"queries": len(queries), **_sanity(runner, conditions[0], queries)}
    return _write(runner, "prompting", rows, conditions, queries, notes)


def base(runner: Runner, vectors: dict[str, EmotionVector]) -> Result:
    """EV_base at each alpha: does the shared part raise emotion in general, and which?"""
    cfg = runner.cfg
    queries = evaluation_queries(cfg.limit, cfg.seed, cfg.calibration_share)
    conditions = base_conditions(vectors, cfg.alphas, cfg.emotions)
    rows = runner.run(conditions, queries)
    return _write(runner, "base", rows, conditions, queries, {"queries": len(queries)})


def mix_experiment(runner: Runner, vectors: dict[str, EmotionVector], first: str, second: str,
                   weights: Sequence[float] = (0.0, 1.0, 2.0)) -> Result:
    """w1 * first + w2 * second over a grid; the additivity gap shows whether effects add."""
    cfg = runner.cfg
    queries = evaluation_queries(cfg.limit, cfg.seed, cfg.calibration_share)
    conditions = mix_conditions(vectors, first, second, weights)
    rows = runner.run(conditions, queries)
    notes = {"queries": len(queries), "pair": [first, second], "weights": list(weights)}
    return _write(runner, "mix", rows, conditions, queries, notes)


def _sanity(runner: Runner, plain: Condition, queries: Sequence[Query]) -> dict:
    """What the judge makes of unsteered answers, and the topic score of a shuffled pairing."""
    notes: dict = {}
    keys = [runner.gen_key(plain, q) for q in queries]
    judged = [runner.annotations_of(k).get("judge") for k in keys]
    if all(j is not None for j in judged):
        labels = [max(j["probs"], key=j["probs"].__getitem__) for j in judged]
        notes["unsteered_labels"] = {lab: labels.count(lab) / len(labels)
                                     for lab in sorted(set(labels), key=labels.count,
                                                       reverse=True)}
    if "topic" in {m.needs for m in runner.metrics} and runner.cfg.topic == "embedding":
        answers = [runner.generations.get(k)["answer"] for k in keys]
        questions = [q.question for q in queries]
        shifted = questions[1:] + questions[:1]  # every answer paired with another question
        import statistics

        notes["topic_matched"] = statistics.fmean(runner.topic.score(questions, answers))
        notes["topic_shuffled"] = statistics.fmean(runner.topic.score(shifted, answers))
    return notes


def _write(runner: Runner, name: str, rows: list[dict], conditions: Sequence[Condition],
           queries: Sequence[Query], notes: dict) -> Result:
    import json

    from emosteer.evaluate import report

    out = runner.out
    metrics = [m.name for m in runner.metrics]
    files: dict[str, Path] = {}
    files["summary"] = out / "summary.jsonl"
    with files["summary"].open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"experiment": name, **r}) + "\n" for r in rows)
    figures = out / "figures"
    plots: list[Path] = []
    if name == "mix":
        first, second = notes["pair"]
        plots.append(report.plot_mix(rows, first, second, notes["weights"],
                                     figures / "mix.png"))
        tables = {t: report.markdown_table([r for r in rows if r["target"] == t], metrics,
                                           first="weights", name=lambda r: r["label"])
                  for t in (first, second)}
    else:
        tables = report.sweep_tables(rows, metrics)
        sweep_rows = [r for r in rows if r["variant"] in ("unsteered", "raw", "centered",
                                                          "base", "prompt")]
        if name == "base":
            sweep_rows = [r for r in rows if r["target"] == ANY]
        for m in metrics:
            plots.append(report.plot_sweep(sweep_rows, m, figures / f"{m}.png"))
    judge_proxy = "judge" in {m.needs for m in runner.metrics} and runner.judge.eas_is_proxy
    md = [f"# emosteer experiment: {name}", "", _settings(runner, queries, notes), "",
          report.metric_legend(metrics, judge_proxy), ""]
    for target, table in tables.items():
        md += [f"## {target}", "", table, ""]
    if notes.get("calibration"):
        md += ["## alpha auto (chosen on the calibration split)", "",
               _calibration_table(notes["calibration"], runner.cfg.auto), ""]
    md += ["## figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in plots]
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md) + "\n", encoding="utf-8")
    sections = [("settings", _md_html(_settings(runner, queries, notes))),
                ("metrics", _md_html(report.metric_legend(metrics, judge_proxy)))]
    sections += [(t, report.html_table(table)) for t, table in tables.items()]
    if notes.get("calibration"):
        sections.append(("alpha auto", report.html_table(
            _calibration_table(notes["calibration"], runner.cfg.auto))))
    sections.append(("figures", "".join(report.image_tag(p) for p in plots)))
    sections.append(("sample answers", _samples(runner, conditions, queries)))
    files["html"] = report.html_report(f"emosteer {name}", sections, out / "report.html")
    files.update({p.stem: p for p in plots})
    return Result(rows, files, notes)


def _settings(runner: Runner, queries: Sequence[Query], notes: dict) -> str:
    g = runner.cfg.generation
    cats: dict[str, int] = {}
    for q in queries:
        cats[q.emotion] = cats.get(q.emotion, 0) + 1
    judge = runner._judge.spec if runner._judge is not None else runner.cfg.judge
    lines = [f"- model: `{runner.model_id}`; judge: `{judge}`; topic: "
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
    lines = [f"Target EPS ≥ {auto.target_eps:g} with PPL ≤ {auto.max_ppl_ratio:g} x unsteered; "
             "candidates " + ", ".join(f"{a:g}" for a in auto.candidates) + ".", "",
             "| vector | emotion | chosen alpha | reached | EPS by alpha (calibration) |",
             "|---|---|---|---|---|"]
    for p in picks:
        eps = ", ".join(f"{c['alpha']:g}: {c['eps']:.2f}" + ("" if c["within_ppl"] else "*")
                        for c in p["candidates"] if c["eps"] is not None)
        lines.append(f"| {p['variant']} | {p['emotion']} | {p['alpha']:g} | "
                     f"{'yes' if p['reached'] else 'no'} | {eps} |")
    lines.append("")
    lines.append("\\* PPL above the bound.")
    return "\n".join(lines)


def _md_html(text: str) -> str:
    import html
    import re

    items = []
    for line in text.splitlines():
        line = html.escape(line.removeprefix("- "))
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", line)
        line = re.sub(r"`(.+?)`", r"<code>\1</code>", line)
        items.append(f"<li>{line}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _samples(runner: Runner, conditions: Sequence[Condition], queries: Sequence[Query],
             per_category: int = 1) -> str:
    import html

    shown: dict[str, int] = {}
    chosen = []
    for q in queries:
        if shown.get(q.emotion, 0) < per_category:
            shown[q.emotion] = shown.get(q.emotion, 0) + 1
            chosen.append(q)
    parts = []
    for q in chosen:
        rows = []
        for c in conditions:
            record = runner.generations.get(runner.gen_key(c, q))
            if record is None:
                continue
            name = f"{c.variant} {c.targets[0] if c.variant != 'unsteered' else ''} {c.label}"
            rows.append(f"<tr><td>{html.escape(name)}</td><td class='answer' "
                        f"style='text-align:left'>{html.escape(record['answer'])}</td></tr>")
        parts.append(f"<h3>{html.escape(q.question)}</h3><table>{''.join(rows)}</table>")
    return "".join(parts)
