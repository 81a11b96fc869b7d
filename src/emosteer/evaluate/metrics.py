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

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from emosteer.errors import BadInputError
from emosteer.evaluate.scorers import perplexity

ANY = "any"  # target meaning "some emotion, whichever"
Needs = Literal["ppl", "topic", "judge"]  # the annotations scorers write


@dataclass(frozen=True)
class Metric:
    """A registered metric (made by the `metric` decorator, not by hand).

    Args:
        name: its name in --metrics and in report columns.
        higher_is_better: the direction shown as an arrow in tables.
        needs: the annotation it reads.
        description: the first line of the function's docstring (the report legend).
        value: (annotation, target) -> the value of one answer, or None to skip it.
        aggregate: the per-answer values -> the reported number.

    Example:
        METRICS["eps"]([{"judge": rating.to_json()}], "joy")
    """

    name: str
    higher_is_better: bool
    needs: Needs
    description: str
    value: Callable[[Any, str], float | None]  # (annotations[needs], target) -> per answer
    aggregate: Callable[[list[float]], float]  # per-answer values -> the reported number

    def __call__(self, annotations: Iterable[dict], target: str) -> float | None:
        """Aggregate over the answers; an answer without the annotation this needs is skipped."""
        values = [v for a in annotations if a.get(self.needs) is not None
                  and (v := self.value(a[self.needs], target)) is not None]
        return self.aggregate(values) if values else None


METRICS: dict[str, Metric] = {}


def metric(name: str, *, higher_is_better: bool, needs: Needs,
           aggregate: Callable[[list[float]], float] = statistics.fmean
           ) -> Callable[[Callable[[Any, str], float | None]], Callable[[Any, str], float | None]]:
    """Register a metric: one decorated function of the annotation it needs.

    Args:
        name: the metric's name (unique).
        higher_is_better: which way is better.
        needs: the annotation the function gets ("ppl", "topic" or "judge").
        aggregate: turns the per-answer values into the reported number (default: the mean).

    Example:
        @metric("joy_score", higher_is_better=True, needs="judge")
        def joy_score(judged: dict, target: str) -> float:  # its docstring is the legend
            return judged["scores"]["joy"]
    """
    def register(fn: Callable[[Any, str], float | None]) -> Callable[[Any, str], float | None]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        METRICS[name] = Metric(name, higher_is_better, needs, doc, fn, aggregate)
        return fn

    return register


def get_metrics(names: Iterable[str] | None = None) -> list[Metric]:
    """The named metrics in registry order (all when names is None); unknown names fail.

    Args:
        names: metric names, e.g. ("ppl", "eps"); None: every registered metric.

    Example:
        [m.name for m in get_metrics(["eps", "ppl"])]  # ["ppl", "eps"]
    """
    if names is None:
        return list(METRICS.values())
    wanted = list(names)
    unknown = [n for n in wanted if n not in METRICS]
    if unknown:
        raise BadInputError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    return [m for m in METRICS.values() if m.name in wanted]


def target_probability(probs: dict[str, float], target: str) -> float:
    """p(target), or for the target "any" the probability of some emotion: 1 - p(neutral).

    Example:
        target_probability({"joy": 0.6, "neutral": 0.4}, ANY)  # 0.6
    """
    if target == ANY:
        return 1.0 - probs.get("neutral", 0.0)
    return probs.get(target, 0.0)


@metric("ppl", higher_is_better=False, needs="ppl", aggregate=statistics.geometric_mean)
def ppl(item: dict, target: str) -> float | None:
    """Fluency, the perplexity of the answer under the unsteered reference LM (geometric mean).

    Example:
        ppl({"nll": 4.0, "tokens": 2}, "joy")  # e**2
    """
    return perplexity(item["nll"], item.get("tokens", 0))


@metric("topic", higher_is_better=True, needs="topic")
def topic(value: float, target: str) -> float:
    """Topic consistency in [0, 1]: the answer keeps to its question (0.5 = random pairing).

    Example:
        topic(0.9, "joy")  # 0.9
    """
    return float(value)


@metric("eps", higher_is_better=True, needs="judge")
def eps(judged: dict, target: str) -> float:
    """Share of answers whose most likely label is the target emotion.

    Example:
        eps({"probs": {"joy": 0.7, "neutral": 0.3}}, "joy")  # 1.0
    """
    probs = judged["probs"]
    label = max(probs, key=probs.__getitem__)
    return float(label != "neutral") if target == ANY else float(label == target)


@metric("eas", higher_is_better=True, needs="judge")
def eas(judged: dict, target: str) -> float:
    """The judge's 0-100 score of the target emotion (the strongest one for 'any').

    Example:
        eas({"scores": {"joy": 70.0, "anger": 5.0}}, "joy")  # 70.0
    """
    scores = judged["scores"]
    return max(scores.values()) if target == ANY else float(scores.get(target, 0.0))


@metric("tec", higher_is_better=True, needs="judge")
def tec(judged: dict, target: str) -> float:
    """The judge's mean probability of the target emotion.

    Example:
        tec({"probs": {"joy": 0.7, "neutral": 0.3}}, "joy")  # 0.7
    """
    return target_probability(judged["probs"], target)
