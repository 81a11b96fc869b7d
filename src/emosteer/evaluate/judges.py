"""Judges read an answer and say which emotion it expresses, and how strongly.

Every judge returns one Rating per answer: `probs` over the seven labels (EPS, TEC), `scores`
0-100 per emotion (EAS) and, when it can, `topic` in [0, 1]. Pick one with a spec string:

- `embedded`: MiniLM + logistic regression shipped with emosteer (offline; EAS is a proxy)
- `hf:<model id or folder>`: a zero-shot NLI model (e.g. facebook/bart-large-mnli, as the
  paper) or a text-classification model with emotion labels
- `openai:<base url>#<model>`: an LLM judge over any OpenAI-compatible chat API
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from emosteer.errors import BadInputError, EmosteerError

LABELS = ("joy", "anger", "sadness", "fear", "disgust", "surprise", "neutral")
EMOTIONS = LABELS[:-1]


class JudgeError(EmosteerError):
    """A judge could not rate: unreachable endpoint, a reply that isn't JSON, ..."""


@dataclass(frozen=True)
class Rating:
    probs: dict[str, float]  # over LABELS, sums to 1: which label the text expresses
    scores: dict[str, float]  # 0-100 per emotion, independent of each other (EAS)
    topic: float | None = None  # 0-1: does the answer stay on the question (None: not rated)
    extra: dict = field(default_factory=dict)  # backend details kept in the cache (raw reply)

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)

    def to_json(self) -> dict:
        out = {"probs": self.probs, "scores": self.scores}
        if self.topic is not None:
            out["topic"] = self.topic
        return {**out, **({"extra": self.extra} if self.extra else {})}


class Judge(Protocol):
    spec: str  # what the user passed; part of every cache key
    version: str  # changes whenever the judge's answers could change (weights hash, rubric)
    eas_is_proxy: bool  # True when EAS is not a judge's own 0-100 rating
    rates_topic: bool

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]: ...


def load_judge(spec: str = "embedded", **options) -> Judge:
    """The judge named by a spec string (see the module docstring)."""
    if spec == "embedded":
        from emosteer.evaluate.classifier import EmbeddedJudge

        return EmbeddedJudge(**options)
    if spec.startswith("hf:") and len(spec) > 3:
        from emosteer.evaluate.hf_judge import HFJudge

        return HFJudge(spec[3:], **options)
    if spec.startswith("openai:"):
        from emosteer.evaluate.llm_judge import OpenAIJudge

        return OpenAIJudge.from_spec(spec, **options)
    raise BadInputError(f"unknown judge {spec!r}: use 'embedded', 'hf:<model id>' (e.g. "
                        "hf:facebook/bart-large-mnli) or 'openai:<base url>#<model>' (e.g. "
                        "openai:http://localhost:8000/v1#gpt-4o-mini)")


def normalise(values: dict[str, float]) -> dict[str, float]:
    """Scale non-negative values to sum to one over LABELS (uniform when all are zero)."""
    clean = {label: max(0.0, float(values.get(label, 0.0))) for label in LABELS}
    total = sum(clean.values())
    if total <= 0:
        return {label: 1.0 / len(LABELS) for label in LABELS}
    return {label: v / total for label, v in clean.items()}
