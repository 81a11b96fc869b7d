"""The method frontier: which steering method expresses each emotion best at a small cost.

For each method (a folder of vectors, or prompting), each emotion and each setting of its grid
(strengths, and layer bands where the method has them), answers are generated on the
CALIBRATION split of emotion_query_plus and scored: EPS by two judges trained on disjoint
halves of emotion_corpus (`embedded-a`, `embedded-b`), TEC, the PPL ratio to the unsteered
answers of the same questions, and topic. Per method and emotion the setting with the highest
EPS (the mean of the judges) is chosen among those with PPL ratio <= 1.3 and topic >= 0.9
(`choose`); strength 0, the unsteered answer, is always a candidate, so a method that cannot
beat unsteered within the bounds is reported at 0. Only the chosen settings are then answered
on the HELD-OUT split, which chose nothing, and reported with standard errors.

Answers and scores go through the experiments' cached Runner (a rerun resumes); the report
(`frontier_report.py`) is summary.jsonl, calibration.jsonl, report.md, report.html and one
Pareto plot per emotion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emosteer import data
from emosteer.data import Query
from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.errors import BadInputError
from emosteer.evaluate.conditions import Condition, calibration_queries, evaluation_queries
from emosteer.evaluate.conditions import unsteered as unsteered_condition
from emosteer.evaluate.frontier_methods import METHODS, Band, Method
from emosteer.evaluate.frontier_vectors import load_method_vectors
from emosteer.evaluate.measure import JudgesRunner, log_ppls, measure
from emosteer.evaluate.runner import EvalConfig
from emosteer.vectors import EmotionVector

UNSTEERED = "unsteered"  # the held-out reference row of every emotion
UNBOUNDED = "(unbounded)"  # suffix of the held-out row of prompting as asked, rule or not


@dataclass(frozen=True)
class FrontierConfig:
    """The frontier's settings, with the reason for each default.

    Example:
        FrontierConfig(calibration_limit=4, limit=5, methods=METHODS[:2])
    """

    methods: tuple[Method, ...] = METHODS
    emotions: tuple[str, ...] = VECTOR_EMOTIONS  # the paper's five
    calibration_limit: int | None = 3  # calibration questions per EQ+ category: 18 in all
    limit: int | None = 5  # held-out questions per EQ+ category: 30 in all (SE ~0.09 at 0.5)
    judges: tuple[str, ...] = ("embedded-a", "embedded-b")  # disjoint training halves
    max_ppl_ratio: float = 1.3  # fluency bound: geometric-mean PPL at most 1.3x unsteered
    min_topic: float = 0.9  # the answer keeps to its question (unsteered scores ~0.97)
    max_repetition: float = 0.1  # share of repeated word trigrams (unsteered: 0 here)

    def __post_init__(self) -> None:
        if not self.judges:
            raise BadInputError("the frontier needs at least one judge")
        beyond = [e for e in self.emotions if e not in VECTOR_EMOTIONS]
        trained = [j for j in self.judges if j.startswith("embedded")]
        if beyond and trained:
            raise BadInputError(
                f"judge {trained[0]!r} knows only the five basic emotions, not "
                f"{', '.join(beyond)}: judge them with --judge zero-shot-a --judge zero-shot-b")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise BadInputError(f"method names repeat: {', '.join(names)}")


def judges_for(emotions: Sequence[str]) -> tuple[str, str]:
    """The two judges of a frontier over `emotions`: the trained A and B for the five basic
    emotions, the zero-shot judge's two halves for any other (docs/judge.md)."""
    if all(e in VECTOR_EMOTIONS for e in emotions):
        return ("embedded-a", "embedded-b")
    return ("zero-shot-a", "zero-shot-b")


def eval_config(cfg: FrontierConfig, **changes: Any) -> EvalConfig:
    """The Runner's settings for a frontier: judge A first, the metrics the frontier reads.

    Example:
        runner = JudgesRunner(model, tok, eval_config(cfg), "runs/frontier", cfg.judges[1:])
    """
    return EvalConfig(**{"emotions": cfg.emotions, "limit": cfg.limit, "judge": cfg.judges[0],
                         "metrics": ("ppl", "topic", "eps", "tec"), **changes})


# --- the selection rule ------------------------------------------------------------------------
def feasible(row: Mapping[str, Any], max_ppl_ratio: float = 1.3, min_topic: float = 0.9,
             max_repetition: float = 0.1) -> bool:
    """True when a setting keeps PPL within the bound, its answers on topic and out of loops
    (a row without a repetition measure passes that bound).

    Example:
        feasible({"ppl_ratio": 1.2, "topic": 0.95, "repetition": 0.0})  # True
    """
    ratio, topic = row.get("ppl_ratio"), row.get("topic")
    return (ratio is not None and ratio <= max_ppl_ratio
            and topic is not None and topic >= min_topic
            and (row.get("repetition") or 0.0) <= max_repetition)


def choose(rows: Sequence[Mapping[str, Any]], max_ppl_ratio: float = 1.3, min_topic: float = 0.9,
           score: str = "eps", max_repetition: float = 0.1) -> Mapping[str, Any] | None:
    """The setting with the highest `score` among the feasible ones, or None when none is.

    Ties go to the lower PPL ratio, then to the smaller strength.

    Args:
        rows: one measurement per setting: score, "ppl_ratio", "topic", "strength".
        max_ppl_ratio: the fluency bound.
        min_topic: the topic bound.
        score: the key maximised.
        max_repetition: the repetition cap.

    Example:
        choose([{"eps": 0.6, "ppl_ratio": 1.5, "topic": 0.95, "strength": 2},
                {"eps": 0.4, "ppl_ratio": 1.1, "topic": 0.97, "strength": 1}])  # strength 1
    """
    ok = [r for r in rows if feasible(r, max_ppl_ratio, min_topic, max_repetition)
          and r.get(score) is not None]
    if not ok:
        return None
    return max(ok, key=lambda r: (r[score], -r["ppl_ratio"], -abs(r.get("strength", 0.0))))


# --- settings ------------------------------------------------------------------------------------
def band_layers(layers: Sequence[int], band: Band) -> list[int]:
    """The layers of a fractional window of `layers` (at least one).

    Example:
        band_layers(range(30), (1 / 3, 2 / 3))  # [10, ..., 19]
    """
    layers = list(layers)
    if band is None:
        return layers
    lo, hi = band
    if not 0 <= lo < hi <= 1:
        raise BadInputError(f"band {band}: use fractions 0 <= start < stop <= 1")
    start = min(round(lo * len(layers)), len(layers) - 1)
    return layers[start:max(start + 1, round(hi * len(layers)))]


def band_name(layers: Sequence[int]) -> str:
    """"layers 10-19" for a contiguous window."""
    return f"layers {layers[0]}-{layers[-1]}"


@dataclass(frozen=True)
class Setting:
    """One point of a method's grid for one emotion: its condition and how it is described."""

    method: str
    emotion: str
    strength: float
    band: str  # "all", or "layers a-b"
    condition: Condition

    def describe(self) -> dict:
        """The setting as written into rows."""
        return {"method": self.method, "emotion": self.emotion, "strength": self.strength,
                "band": self.band}


def settings_of(method: Method, emotion: str, vector: EmotionVector | None) -> list[Setting]:
    """Every setting of a method for one emotion, strength 0 (unsteered) first.

    Example:
        [s.strength for s in settings_of(METHODS[0], "joy", joy)]  # [0, 0.5, 1, 1.5, 2]
    """
    plain = Setting(method.name, emotion, 0.0, "-", unsteered_condition((emotion,)))
    if method.prompt:
        prompt = Condition("prompt", 0.0, (emotion,), system=data.system_prompt(emotion),
                           label="prompt")
        return [plain, Setting(method.name, emotion, 0.0, "prompt", prompt)]
    if vector is None:
        raise BadInputError(f"method {method.name} needs a vector for {emotion}")
    out = [plain]
    for band in method.bands:
        layers = band_layers(vector.layers, band)
        name = "all" if band is None else band_name(layers)
        chosen = vector if band is None else vector.select(layers)
        system = data.system_prompt(emotion) if method.with_prompt else None
        out += [Setting(method.name, emotion, float(s), name,
                        Condition(method.name, float(s), (emotion,), chosen, system=system,
                                  label=f"{s:g}" + ("" if band is None else f" {name}")
                                  + (" + prompt" if system else ""),
                                  positions=method.positions,
                                  preserve_norm=method.preserve_norm))
                for s in method.strengths]
    return out


# --- the whole frontier ------------------------------------------------------------------------
@dataclass
class Frontier:
    """What `frontier` measured.

    Args:
        calibration: one row per setting on the calibration split ("feasible", "chosen").
        held_out: one row per method and emotion: its chosen setting on the held-out split;
            also "unsteered" and, with a prompting method, "prompt (unbounded)": the system
            prompt as asked, whether or not it kept the bounds on the calibration split.
        skipped: methods left out, with the reason.
        queries: "calibration" and "held_out" -> the question ids used (disjoint).
        files: report files by name (after `frontier_report.write`).
        examples: "method|emotion" -> held-out answers with each judge's label, so a number
            can be read.

    Example:
        result = frontier(runner, "runs/frontier/vectors")
        [r for r in result.held_out if r["emotion"] == "anger"]
    """

    calibration: list[dict]
    held_out: list[dict]
    skipped: dict[str, str]
    queries: dict[str, list[str]]
    files: dict[str, Path] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)  # "method|emotion" -> the
    # first EXAMPLES held-out answers of its chosen setting, with each judge's label


def plan(cfg: FrontierConfig, vectors_dir: str | Path | None
         ) -> tuple[dict[str, list[Setting]], dict[str, str]]:
    """(method -> every setting of every emotion, skipped method -> why), nothing run yet.

    Example:
        grid, skipped = plan(FrontierConfig(), "runs/frontier/vectors")
    """
    grid: dict[str, list[Setting]] = {}
    skipped: dict[str, str] = {}
    for method in cfg.methods:
        vectors: Mapping[str, EmotionVector | None] = {e: None for e in cfg.emotions}
        if not method.prompt:
            folder = Path(vectors_dir or ".") / method.source
            found = load_method_vectors(folder, cfg.emotions) if vectors_dir else None
            if found is None:
                skipped[method.name] = f"no vectors in {folder}"
                continue
            vectors = found
        grid[method.name] = [s for e in cfg.emotions for s in settings_of(method, e,
                                                                           vectors[e])]
    if not grid:
        raise BadInputError(f"no method has vectors under {vectors_dir}: build them first "
                            "(frontier_vectors.build_vectors, or `emosteer extract --out "
                            f"{vectors_dir}/<method>`)")
    return grid, skipped


def frontier(runner: JudgesRunner, vectors_dir: str | Path | None,
             cfg: FrontierConfig = FrontierConfig(),
             on_stage: Callable[[str], None] = lambda stage: None) -> Frontier:
    """Calibrate every method on the calibration split, report the choices on the held-out one.

    Args:
        runner: the cached runner (eval_config(cfg); its generation settings are used).
        vectors_dir: the folder holding one folder of vectors per method.
        cfg: the methods, emotions, question counts and bounds.
        on_stage: called with "calibration" and "held-out" as each stage starts.

    Example:
        result = frontier(runner, "runs/frontier/vectors", FrontierConfig(limit=5))
    """
    grid, skipped = plan(cfg, vectors_dir)
    seed, share = runner.cfg.seed, runner.cfg.calibration_share
    calib = calibration_queries(cfg.calibration_limit, seed, share)
    held = evaluation_queries(cfg.limit, seed, share)
    if not calib or not held:
        raise BadInputError("the frontier needs calibration and held-out questions: raise "
                            "calibration_limit / limit")
    if {q.id for q in calib} & {q.id for q in held}:  # data.split makes this impossible
        raise RuntimeError("calibration and held-out questions overlap")
    on_stage("calibration")
    calibration = _run_split(runner, grid, calib)
    chosen: dict[str, list[Setting]] = {}
    for (method, emotion), rows in by_method_and_emotion(calibration).items():
        bounds = (cfg.max_ppl_ratio, cfg.min_topic)
        pick = choose(rows, *bounds, max_repetition=cfg.max_repetition) or rows[0]  # strength 0
        for r in rows:
            r["feasible"] = feasible(r, *bounds, cfg.max_repetition)
            r["chosen"] = r is pick
        setting = next(s for s in grid[method] if s.emotion == emotion
                       and (s.strength, s.band) == (pick["strength"], pick["band"]))
        chosen.setdefault(method, []).append(setting)
    on_stage("held-out")
    reference = {UNSTEERED: [Setting(UNSTEERED, e, 0.0, "-", unsteered_condition((e,)))
                             for e in cfg.emotions]}
    for spec in cfg.methods:  # prompting as a point, whether or not it kept the bounds
        if spec.prompt and spec.name in grid:
            reference[f"{spec.name} {UNBOUNDED}"] = [
                replace(s, method=f"{spec.name} {UNBOUNDED}") for s in grid[spec.name]
                if s.band == "prompt"]
    held_out = _run_split(runner, {**reference, **chosen}, held)
    for row in held_out:
        calibrated = [r for r in calibration if r["chosen"] and
                      (r["method"], r["emotion"]) == (row["method"], row["emotion"])]
        row["feasible_on_calibration"] = calibrated[0]["feasible"] if calibrated else True
    examples = {f"{row['method']}|{row['emotion']}": _examples(
        runner, next(s for s in [*reference.get(row["method"], []), *chosen.get(row["method"], [])]
                     if s.emotion == row["emotion"]).condition, held[:EXAMPLES])
        for row in held_out}
    return Frontier(calibration, held_out, skipped,
                    {"calibration": [q.id for q in calib], "held_out": [q.id for q in held]},
                    examples=examples)


EXAMPLES = 10  # held-out answers per method and emotion printed in the report


def _examples(runner: JudgesRunner, condition: Condition, queries: Sequence[Query]
              ) -> list[dict]:
    """Each question, the answer and the label each judge gave it."""
    out = []
    for q, answer in zip(queries, runner.answers(condition, queries), strict=True):
        notes = runner.annotations_of(runner.gen_key(condition, q))
        labels = {}
        for spec, name in runner.judge_names().items():
            probs = (notes.get(name) or {}).get("probs") or {}
            labels[spec] = max(probs, key=probs.__getitem__) if probs else None
        out.append({"id": q.id, "question": q.question, "answer": answer, "labels": labels})
    return out


def _run_split(runner: JudgesRunner, grid: Mapping[str, Sequence[Setting]],
               queries: Sequence[Query]) -> list[dict]:
    """Answer and score every setting on `queries`, one measure() row each."""
    settings = [s for group in grid.values() for s in group]
    plain = unsteered_condition(())  # the reference of every PPL ratio
    conditions = list({runner.gen_key(c, queries[0]): c
                       for c in [plain, *(s.condition for s in settings)]}.values())
    runner.generate(conditions, queries)
    runner.annotate([runner.gen_key(c, q) for c in conditions for q in queries])
    baseline = log_ppls(runner, plain, queries)
    return [{**s.describe(), **measure(runner, s.condition, s.emotion, queries, baseline)}
            for s in settings]


def by_method_and_emotion(rows: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """(method, emotion) -> its rows, in order (strength 0 first, as settings_of makes them).

    Example:
        by_method_and_emotion(result.calibration)[("trained", "joy")]
    """
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["method"], r["emotion"]), []).append(r)
    return out


def engine_vectors(grid: Mapping[str, Sequence[Setting]], folder: str | Path) -> Path:
    """Write every distinct vector the grid steers with into `folder` (v000.safetensors,
    ...), so a vLLM engine serving that folder can answer every setting (each condition is
    then one served vector times its strength). A method the vLLM plugin cannot steer as the
    builtin engine does (norm-preserving addition, steering the answer only) is refused.

    Example:
        grid, _ = plan(cfg, "runs/frontier/vectors")
        engine_vectors(grid, "runs/frontier/vllm-vectors")
    """
    from emosteer.evaluate.conditions import vector_digest

    folder = Path(folder)
    seen: dict[str, EmotionVector] = {}
    for settings in grid.values():
        for s in settings:
            c = s.condition
            if c.vector is None:
                continue
            if c.preserve_norm or c.positions != "all":
                how = "norm-preserving" if c.preserve_norm else "the answer only"
                raise BadInputError(f"method {s.method} steers {how}, which the vLLM plugin "
                                    "does not do: run it with --engine builtin")
            seen.setdefault(str(vector_digest(c.vector)), c.vector)
    if not seen:
        raise BadInputError("no method of this frontier steers with a vector: --engine vllm "
                            "has nothing to serve (prompting runs on --engine builtin)")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    for k, vector in enumerate(seen.values()):
        vector.save(folder / f"v{k:03d}.safetensors")
    return folder
