"""`emosteer experiment compare`: prompting vs emotion-vector steering vs circuit modulation.

On held-out SEV test scenes (never used by discovery), each method answers every scene once per
emotion; the judge says which emotion each answer expresses (accuracy = share judged as the
target) and the unsteered model scores its perplexity. Prompting asks for the emotion in the
request; steering and modulation get the neutral request, with no emotion word. The steering
alpha and the circuit strength are each chosen once, on discovery scenes, as the value with
the best accuracy whose perplexity stays within `ppl_limit` x the unsteered answers'.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from emosteer import data
from emosteer.circuits.circuit import EmotionCircuit, modulate
from emosteer.emotions import CIRCUIT_EMOTIONS
from emosteer.errors import BadInputError
from emosteer.generation import GenerateConfig, chat_prompt, decode_responses, generate
from emosteer.progress import progress_bar
from emosteer.steering import steer
from emosteer.vectors import EmotionVector

METHODS = ("unsteered", "prompting", "steering", "circuit")


@dataclass(frozen=True)
class CompareConfig:
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


def compare(model, tokenizer, circuit: EmotionCircuit, vectors: dict[str, EmotionVector],
            cfg: CompareConfig = CompareConfig(), judge=None, progress: bool = True) -> dict:
    from emosteer.evaluate.judges import load_judge
    from emosteer.evaluate.scorers import Perplexity

    missing = [e for e in cfg.emotions if e not in vectors or e not in circuit.emotions]
    if missing:
        raise BadInputError(f"no vector or circuit for {missing}: run `emosteer discover` "
                            "with these emotions")
    judge = judge or load_judge("embedded")
    ppl = Perplexity(model, tokenizer)
    start = time.perf_counter()

    def run(scenes, method, emotion, value, advance):
        request = data.sev_request if method == "prompting" else (
            lambda s, e: data.sev_request(s, None))
        prompts = [chat_prompt(tokenizer, request(s, emotion), None) for s in scenes]
        context = (steer(model, vectors[emotion], value) if method == "steering" else
                   modulate(model, circuit, emotion, value) if method == "circuit" else
                   nullcontext())
        torch.manual_seed(cfg.generation.seed)
        texts = []
        with context:
            for i in range(0, len(prompts), cfg.generation.batch_size):
                batch = generate(model, tokenizer, prompts[i:i + cfg.generation.batch_size],
                                 cfg.generation)
                texts.extend(decode_responses(tokenizer, batch))
                advance(len(batch.input_ids))
        questions = [data.sev_request(s, None) for s in scenes]
        labels = [r.label for r in judge.rate(questions, texts)]
        nll = ppl.score(questions, texts)
        return [{"method": method, "emotion": emotion, "value": value, "scene": s.id,
                 "valence": s.valence, "judged": label, "hit": label == emotion,
                 "nll": x["nll"], "tokens": x["tokens"], "text": t}
                for s, label, x, t in zip(scenes, labels, nll, texts, strict=True)]

    calibration = data.load_sev("discovery", cfg.calibration_skeletons, cfg.seed + 1)
    test = data.load_sev("test", cfg.test_skeletons, cfg.seed)
    e = len(cfg.emotions)
    total = (len(calibration) * (1 + e * (len(cfg.alphas) + len(cfg.strengths)))
             + len(test) * (1 + 3 * e))
    rows: list[dict] = []
    with progress_bar(progress, "comparing", total) as advance:
        base = run(calibration, "unsteered", "neutral", 0.0, advance)
        limit = cfg.ppl_limit * perplexity(base)
        tried = [{"method": method, "emotion": emotion, "value": value,
                  "accuracy": accuracy(got), "ppl": perplexity(got)}
                 for method, grid in (("steering", cfg.alphas), ("circuit", cfg.strengths))
                 for value in grid for emotion in cfg.emotions
                 for got in [run(calibration, method, emotion, value, advance)]]
        chosen = {m: {e: choose([t for t in tried if t["method"] == m and t["emotion"] == e],
                                limit) for e in cfg.emotions}
                  for m in ("steering", "circuit")}
        rows += run(test, "unsteered", "neutral", 0.0, advance)
        for emotion in cfg.emotions:
            rows += run(test, "prompting", emotion, 0.0, advance)
            rows += run(test, "steering", emotion, chosen["steering"][emotion], advance)
            rows += run(test, "circuit", emotion, chosen["circuit"][emotion], advance)
    return {"config": {**asdict(cfg), "generation": asdict(cfg.generation)},
            "judge": f"{judge.spec}@{judge.version}",
            "calibration": {"unsteered_ppl": perplexity(base), "ppl_limit": limit,
                            "tried": tried, "chosen": chosen},
            "table": table(rows, cfg.emotions), "rows": rows,
            "test_scenes": len(test), "seconds": time.perf_counter() - start}


def choose(tried: list[dict], ppl_limit: float) -> float:
    """The most accurate value whose perplexity is within the limit (ties: the smaller value);
    if none is, the value with the lowest perplexity."""
    ok = [t for t in tried if t["ppl"] <= ppl_limit]
    if not ok:
        return min(tried, key=lambda t: t["ppl"])["value"]
    return max(ok, key=lambda t: (t["accuracy"], -t["value"]))["value"]


def accuracy(rows: list[dict]) -> float:
    return sum(r["hit"] for r in rows) / max(len(rows), 1)


def perplexity(rows: list[dict]) -> float:
    """exp of the mean NLL per answer token, over all answers."""
    tokens = sum(r["tokens"] for r in rows)
    return math.exp(sum(r["nll"] for r in rows) / tokens) if tokens else float("nan")


def table(rows: list[dict], emotions) -> list[dict]:
    """One row per method: accuracy per emotion, mean accuracy, perplexity."""
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
                    "mean": sum(per.values()) / len(per), "ppl": perplexity(mine)})
    return out


def markdown(result: dict) -> str:
    emotions = result["config"]["emotions"]
    head = ["method", *emotions, "mean", "PPL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["table"]:
        def cell(e, r=r):
            value = "" if r["method"] in ("unsteered", "prompting") else \
                f" (x{r['values'][e]:g})"
            return f"{100 * r[e]:.1f}%{value}"
        cells = [r["method"], *[cell(e) for e in emotions], f"**{100 * r['mean']:.1f}%**",
                 f"{r['ppl']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
