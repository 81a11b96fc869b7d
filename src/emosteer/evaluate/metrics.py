"""The metrics registry: each metric is one decorated function of the annotation it needs.

An answer's annotations come from scorers, cached by the experiments:
  "ppl":   {"nll": float, "tokens": int}          (scorers.Perplexity)
  "topic": float in [0, 1]                        (scorers.TopicSimilarity, or the LLM judge)
  "judge": {"probs": {...}, "scores": {...}}      (a judge's Rating.to_json())
A metric gets the annotation named by its `needs` (answers without it are skipped) and turns
it into a number for a target emotion; reports iterate `METRICS` in order.
The target "any" asks about emotion at all (used for EV_base): p = 1 - p(neutral).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from emosteer.errors import BadInputError

ANY = "any"  # target meaning "some emotion, whichever"


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    needs: str  # the annotation it reads: "ppl", "topic" or "judge"
    description: str
    value: Callable[[Any, str], float | None]  # (annotations[needs], target) -> per answer
    aggregate: Callable[[list[float]], float]  # per-answer values -> the reported number

    def __call__(self, annotations: Iterable[dict], target: str) -> float | None:
        """Aggregate over the answers; an answer without the annotation this needs is skipped."""
        values = [v for a in annotations if a.get(self.needs) is not None
                  and (v := self.value(a[self.needs], target)) is not None]
        return self.aggregate(values) if values else None


METRICS: dict[str, Metric] = {}


def metric(name: str, *, higher_is_better: bool, needs: str,
           aggregate: Callable[[list[float]], float] = statistics.fmean):
    """Register a metric: `@metric("eps", higher_is_better=True, needs="judge")`."""
    def register(fn: Callable[[Any, str], float | None]) -> Callable[[Any, str], float | None]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        METRICS[name] = Metric(name, higher_is_better, needs, doc, fn, aggregate)
        return fn

    return register


def get_metrics(names: Iterable[str] | None = None) -> list[Metric]:
    """The named metrics in registry order (all when names is None); unknown names fail."""
    if names is None:
        return list(METRICS.values())
    wanted = list(names)
    unknown = [n for n in wanted if n not in METRICS]
    if unknown:
        raise BadInputError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    return [m for m in METRICS.values() if m.name in wanted]


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def target_probability(probs: dict[str, float], target: str) -> float:
    if target == ANY:
        return 1.0 - probs.get("neutral", 0.0)
    return probs.get(target, 0.0)


@metric("ppl", higher_is_better=False, needs="ppl", aggregate=geometric_mean)
def ppl(item: dict, target: str) -> float | None:
    """Fluency, the perplexity of the answer under the unsteered reference LM (geometric mean)."""
    return math.exp(item["nll"] / item["tokens"]) if item.get("tokens", 0) > 0 else None


@metric("topic", higher_is_better=True, needs="topic")
def topic(value: float, target: str) -> float:
    """Topic consistency in [0, 1]: the answer keeps to its question (0.5 = random pairing)."""
    return float(value)


@metric("eps", higher_is_better=True, needs="judge")
def eps(judged: dict, target: str) -> float:
    """Share of answers whose most likely label is the target emotion."""
    probs = judged["probs"]
    label = max(probs, key=probs.__getitem__)
    return float(label != "neutral") if target == ANY else float(label == target)


@metric("eas", higher_is_better=True, needs="judge")
def eas(judged: dict, target: str) -> float:
    """The judge's 0-100 score of the target emotion (the strongest one for 'any')."""
    scores = judged["scores"]
    return max(scores.values()) if target == ANY else float(scores.get(target, 0.0))


@metric("tec", higher_is_better=True, needs="judge")
def tec(judged: dict, target: str) -> float:
    """The judge's mean probability of the target emotion."""
    return target_probability(judged["probs"], target)
