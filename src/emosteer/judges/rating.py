"""What every judge returns and shares: Rating, the labels, normalise, JudgeError.

The base of the judge backends (embedded.py, hf.py, llm.py): they import this
module, never judges.py, so the registry in judges.py can import them without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from emosteer.emotions import CIRCUIT_EMOTIONS, JUDGE_LABELS
from emosteer.errors import EmosteerError

LABELS = JUDGE_LABELS  # what a judge can read in a text: six emotions and neutral
SCORED = CIRCUIT_EMOTIONS  # the labels that get a 0-100 score (EAS)


class JudgeError(EmosteerError):
    """A judge could not rate: unreachable endpoint, a reply that isn't JSON, ...

    Example:
        raise JudgeError("judge endpoint http://localhost:8000/v1 is unreachable")
    """


@dataclass(frozen=True)
class Rating:
    """One judge's reading of one answer.

    Args:
        probs: over LABELS, sums to 1: which label the text expresses (EPS, TEC).
        scores: 0-100 per emotion, independent of each other (EAS).
        topic: 0-1, does the answer stay on its question (None: not rated).
        extra: backend details kept in the cache (e.g. the raw reply).

    Example:
        r = Rating(normalise({"joy": 3, "neutral": 1}), {"joy": 75.0})
        r.label  # "joy"
    """

    probs: dict[str, float]
    scores: dict[str, float]
    topic: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The most likely label."""
        return max(self.probs, key=self.probs.__getitem__)

    def to_json(self) -> dict:
        """The cached form: probs, scores, and topic and extra when present."""
        out: dict = {"probs": self.probs, "scores": self.scores}
        if self.topic is not None:
            out["topic"] = self.topic
        return {**out, **({"extra": self.extra} if self.extra else {})}


class Judge(Protocol):
    """What the experiments need of a judge.

    Example:
        class Always:
            spec, version, eas_is_proxy, rates_topic = "always", "1", True, False

            def rate(self, questions, answers):
                return [Rating(normalise({"joy": 1}), {"joy": 100.0}) for _ in answers]
    """

    spec: str  # what the user passed; part of every cache key
    version: str  # changes whenever the judge's answers could change (weights hash, rubric)
    eas_is_proxy: bool  # True when EAS is not a judge's own 0-100 rating
    rates_topic: bool  # True when Rating.topic is filled

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
        """One Rating per (question, answer) pair."""
        ...


def normalise(values: Mapping[str, float]) -> dict[str, float]:
    """Scale non-negative values to sum to one over LABELS (uniform when all are zero).

    Args:
        values: label -> weight; missing labels count 0, negative ones are clipped to 0.

    Example:
        normalise({"joy": 3, "neutral": 1})["joy"]  # 0.75
    """
    clean = {label: max(0.0, float(values.get(label, 0.0))) for label in LABELS}
    total = sum(clean.values())
    if total <= 0:
        return {label: 1.0 / len(LABELS) for label in LABELS}
    return {label: v / total for label, v in clean.items()}
