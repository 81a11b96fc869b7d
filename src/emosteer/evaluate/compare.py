"""`emosteer experiment compare`: prompting vs emotion-vector steering vs circuit modulation.

On held-out SEV test scenes (never used by discovery), each method answers every scene once per
emotion; the judge says which emotion each answer expresses (accuracy = share judged as the
target) and the unsteered model scores its perplexity. Prompting asks for the emotion in the
request; steering and modulation get the neutral request, with no emotion word. The steering
alpha and the circuit strength are each chosen once, on discovery scenes, as the value with
the best accuracy whose perplexity stays within `ppl_limit` x the unsteered answers'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from emosteer import data
from emosteer.circuits.circuit import EmotionCircuit, modulate
from emosteer.emotions import CIRCUIT_EMOTIONS
from emosteer.errors import BadInputError
from emosteer.evaluate.scorers import Perplexity, perplexity
from emosteer.files import write_text
from emosteer.generation import GenerateConfig, chat_prompt, decode_responses, generate
from emosteer.judges.rating import Judge
from emosteer.progress import progress_bar
from emosteer.steering import steer
from emosteer.tables import markdown_table
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Method = Literal["unsteered", "prompting", "steering", "circuit"]
METHODS: tuple[Method, ...] = ("unsteered", "prompting", "steering", "circuit")


@dataclass(frozen=True)
class CompareConfig:
    """The comparison's settings, with the reason for each default.

    Example:
        CompareConfig(emotions=("joy", "anger"), test_skeletons=5, alphas=(1.0,))
    """

    emotions: tuple[str, ...] = CIRCUIT_EMOTIONS
    test_skeletons: int | None = 20  # x 3 valences; None: the whole test split
    calibration_skeletons: int = 5  # discovery skeletons (x 3 valences = one batch of 15)
    alphas: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5)  # steering strengths tried, per emotion
    strengths: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5)  # circuit strengths, per emotion
    ppl_limit: float = 2.0  # chosen values keep perplexity within this x unsteered
    seed: int = 0
    generation: GenerateConfig = field(default_factory=lambda: GenerateConfig(
        max_new_tokens=40))

    def __post_init__(self) -> None:
        if not self.alphas or not self.strengths or self.ppl_limit <= 1:
            raise BadInputError("compare needs at least one alpha, one strength and "
                                "ppl_limit > 1")


@dataclass
class _Arms:
    """Everything one run of a method on some scenes needs."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    circuit: EmotionCircuit
    vectors: dict[str, EmotionVector]
    cfg: CompareConfig
    judge: Judge
    ppl: Perplexity
    advance: Callable[[int], None] = lambda n: None

    def context(self, method: Method, emotion: str, value: float) -> AbstractContextManager:
        if method == "steering":
            return steer(self.model, self.vectors[emotion], value)
        if method == "circuit":
            return modulate(self.model, self.circuit, emotion, value)
        return nullcontext()

    def run(self, scenes: list[data.Scene], method: Method, emotion: str,
            value: float) -> list[dict]:
        """One answer per scene, judged and scored: one row each."""
        asked = emotion if method == "prompting" else None
        prompts = [chat_prompt(self.tokenizer, data.sev_request(s, asked), None) for s in scenes]
        g = self.cfg.generation
        torch.manual_seed(g.seed)
        texts: list[str] = []
        with self.context(method, emotion, value):
            for i in range(0, len(prompts), g.batch_size):
                batch = generate(self.model, self.tokenizer, prompts[i:i + g.batch_size], g)
                texts.extend(decode_responses(self.tokenizer, batch))
                self.advance(len(batch.input_ids))
        questions = [data.sev_request(s, None) for s in scenes]
        labels = [r.label for r in self.judge.rate(questions, texts)]
        nll = self.ppl.score(questions, texts)
        return [{"method": method, "emotion": emotion, "value": value, "scene": s.id,
                 "valence": s.valence, "judged": label, "hit": label == emotion,
                 "nll": x["nll"], "tokens": x["tokens"], "text": t}
                for s, label, x, t in zip(scenes, labels, nll, texts, strict=True)]


def compare(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            circuit: EmotionCircuit, vectors: dict[str, EmotionVector],
            cfg: CompareConfig = CompareConfig(), judge: Judge | None = None,
            progress: bool = True) -> dict:
    """Prompting, steering and circuit modulation on the same held-out SEV test scenes.

    Args:
        model: the model (unsteered outside the runs).
        tokenizer: its tokenizer.
        circuit: the circuit `emosteer discover` wrote.
        vectors: emotion -> vector (discover writes them beside the circuit).
        cfg: the comparison's settings.
        judge: the judge (default: the embedded one).
        progress: show a progress bar.

    Example:
        result = compare(model, tok, EmotionCircuit.load("circuits/circuit.safetensors"),
                         vectors, CompareConfig(test_skeletons=5))
        print(markdown(result))
    """
    from emosteer.judges.registry import load_judge

    missing = [e for e in cfg.emotions if e not in vectors or e not in circuit.emotions]
    if missing:
        raise BadInputError(f"no vector or circuit for {missing}: run `emosteer discover` "
                            "with these emotions")
    judge = judge or load_judge("embedded")
    arms = _Arms(model, tokenizer, circuit, vectors, cfg, judge, Perplexity(model, tokenizer))
    start = time.perf_counter()
    calibration = data.load_sev("discovery", cfg.calibration_skeletons, cfg.seed + 1)
    test = data.load_sev("test", cfg.test_skeletons, cfg.seed)
    e = len(cfg.emotions)
    total = (len(calibration) * (1 + e * (len(cfg.alphas) + len(cfg.strengths)))
             + len(test) * (1 + 3 * e))
    with progress_bar(progress, "comparing", total) as advance:
        arms.advance = advance
        calibrated = _calibrate(arms, calibration)
        chosen = calibrated["chosen"]
        rows = arms.run(test, "unsteered", "neutral", 0.0)
        for emotion in cfg.emotions:
            rows += arms.run(test, "prompting", emotion, 0.0)
            rows += arms.run(test, "steering", emotion, chosen["steering"][emotion])
            rows += arms.run(test, "circuit", emotion, chosen["circuit"][emotion])
    return {"config": {**asdict(cfg), "generation": asdict(cfg.generation)},
            "judge": f"{judge.spec}@{judge.version}", "calibration": calibrated,
            "table": table(rows, cfg.emotions), "rows": rows,
            "test_scenes": len(test), "seconds": time.perf_counter() - start}


def _calibrate(arms: _Arms, scenes: list[data.Scene]) -> dict:
    """Every alpha and strength on discovery scenes; the value chosen per method and emotion."""
    emotions = arms.cfg.emotions
    unsteered_ppl = rows_perplexity(arms.run(scenes, "unsteered", "neutral", 0.0))
    limit = arms.cfg.ppl_limit * unsteered_ppl
    grids: tuple[tuple[Method, tuple[float, ...]], ...] = (("steering", arms.cfg.alphas),
                                                          ("circuit", arms.cfg.strengths))
    tried = [{"method": method, "emotion": emotion, "value": value,
              "accuracy": accuracy(got), "ppl": rows_perplexity(got)}
             for method, grid in grids for value in grid for emotion in emotions
             for got in [arms.run(scenes, method, emotion, value)]]
    chosen = {m: {e: choose([t for t in tried if t["method"] == m and t["emotion"] == e],
                            limit) for e in emotions}
              for m, _ in grids}
    return {"unsteered_ppl": unsteered_ppl, "ppl_limit": limit, "tried": tried,
            "chosen": chosen}


def choose(tried: list[dict], ppl_limit: float) -> float:
    """The most accurate value whose perplexity is within the limit (ties: the smaller value);
    if none is, the value with the lowest perplexity.

    Example:
        choose([{"value": 1.0, "accuracy": 0.4, "ppl": 9.0},
                {"value": 2.0, "accuracy": 0.6, "ppl": 30.0}], ppl_limit=12.0)  # 1.0
    """
    ok = [t for t in tried if t["ppl"] <= ppl_limit]
    if not ok:
        return min(tried, key=lambda t: t["ppl"])["value"]
    return max(ok, key=lambda t: (t["accuracy"], -t["value"]))["value"]


def accuracy(rows: list[dict]) -> float:
    """The share of rows judged as their target emotion.

    Example:
        accuracy([{"hit": True}, {"hit": False}])  # 0.5
    """
    return sum(r["hit"] for r in rows) / max(len(rows), 1)


def rows_perplexity(rows: list[dict]) -> float:
    """exp of the mean NLL per answer token, over all answers (NaN without tokens).

    Example:
        rows_perplexity([{"nll": 4.0, "tokens": 2}, {"nll": 2.0, "tokens": 1}])  # e**2
    """
    value = perplexity(sum(r["nll"] for r in rows), sum(r["tokens"] for r in rows))
    return float("nan") if value is None else value


def table(rows: list[dict], emotions: Sequence[str]) -> list[dict]:
    """One row per method: accuracy per emotion, mean accuracy, perplexity.

    Example:
        table(result["rows"], ["joy", "anger"])[0]["method"]  # "unsteered"
    """
    out = []
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        if method == "unsteered":  # how often the neutral answer happens to read as each
            per = {e: sum(r["judged"] == e for r in mine) / len(mine) for e in emotions}
        else:
            per = {e: accuracy([r for r in mine if r["emotion"] == e]) for e in emotions}
        out.append({"method": method, "values": {e: next((r["value"] for r in mine
                                                           if r["emotion"] == e), 0.0)
                                                     for e in emotions}, **per,
                    "mean": sum(per.values()) / len(per), "ppl": rows_perplexity(mine)})
    return out


def markdown(result: dict) -> str:
    """The comparison table: accuracy per emotion (with the chosen value), mean, PPL.

    Example:
        print(markdown(compare(model, tok, circuit, vectors)))
    """
    emotions = result["config"]["emotions"]

    def cell(r: dict, e: str) -> str:
        value = "" if r["method"] in ("unsteered", "prompting") else f" (x{r['values'][e]:g})"
        return f"{100 * r[e]:.1f}%{value}"

    return markdown_table(["method", *emotions, "mean", "PPL"],
                          [[r["method"], *[cell(r, e) for e in emotions],
                            f"**{100 * r['mean']:.1f}%**", f"{r['ppl']:.2f}"]
                           for r in result["table"]])


def save(result: dict, folder: str | Path) -> dict[str, Path]:
    """Write `folder`/compare.json (every row) and `folder`/compare.md (the table), atomically.

    Example:
        save(compare(model, tok, circuit, vectors), "circuits")
    """
    folder = Path(folder)
    return {"json": write_text(folder / "compare.json", json.dumps(result, indent=1)),
            "markdown": write_text(folder / "compare.md", markdown(result) + "\n")}
