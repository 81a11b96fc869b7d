"""Judges read an answer and say which emotion it expresses, and how strongly.

Every judge returns one Rating per answer: `probs` over the seven labels (EPS, TEC), `scores`
0-100 per emotion (EAS) and, when it can, `topic` in [0, 1]. Pick one with a spec string
`<name>` or `<name>:<argument>`, looked up in a registry:

- `embedded`: MiniLM + logistic regression shipped with emosteer (offline; EAS is a proxy)
- `embedded-a`, `embedded-b`: the same, each fitted on one of two disjoint halves of the
  training part (a second opinion that shares no training sentence with the first)
- `hf:<model id or folder>`: a zero-shot NLI model (e.g. facebook/bart-large-mnli, as the
  paper) or a text-classification model with emotion labels
- `openai:<base url>#<model>`: an LLM judge over any OpenAI-compatible chat API

A backend module imports only `rating.py`; the factories here import it when first used, so
`load_judge` loads nothing it does not need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emosteer.errors import BadInputError
from emosteer.judges.rating import LABELS, SCORED, Judge, JudgeError, Rating, normalise

__all__ = [
    "LABELS",
    "SCORED",
    "Judge",
    "JudgeError",
    "Rating",
    "load_judge",
    "normalise",
    "register_judge",
]

JudgeFactory = Callable[..., Judge]  # (argument after "name:", **options) -> Judge
_REGISTRY: dict[str, tuple[JudgeFactory, bool]] = {}


def register_judge(name: str, factory: JudgeFactory, takes_argument: bool = False) -> None:
    """Make `load_judge(name)` (or `name:<argument>`) build a judge with `factory`.

    Args:
        name: the spec's name, before any ":".
        factory: called as factory(argument, **options); argument is "" without one.
        takes_argument: True when the spec needs `name:<argument>` (hf:, openai:).

    Example:
        register_judge("always-joy", lambda argument, **options: AlwaysJoy())
        load_judge("always-joy")
    """
    if name in _REGISTRY:
        raise ValueError(f"judge {name!r} is registered twice")
    _REGISTRY[name] = (factory, takes_argument)


def load_judge(spec: str = "embedded", **options: Any) -> Judge:
    """The judge named by a spec string (see the module docstring).

    Args:
        spec: "embedded", "hf:<model id or folder>" or "openai:<base url>#<model>".
        options: passed to the backend (e.g. backoff=0, timeout=5 for openai:).

    Example:
        judge = load_judge("embedded")
        judge.rate(["How was it?"], ["Wonderful, I loved every minute!"])[0].label  # "joy"
    """
    name, colon, argument = spec.partition(":")
    entry = _REGISTRY.get(name)
    if entry is not None and entry[1] == bool(colon):
        return entry[0](argument, **options)
    raise BadInputError(f"unknown judge {spec!r}: use 'embedded', 'zero-shot' (the 20 "
                        "shipped emotion specs), 'hf:<model id>' (e.g. "
                        "hf:facebook/bart-large-mnli) or 'openai:<base url>#<model>' (e.g. "
                        "openai:http://localhost:8000/v1#gpt-4o-mini)")


def _embedded(argument: str, half: str | None = None, **options: Any) -> Judge:
    from emosteer.judges.embedded import EmbeddedJudge

    return EmbeddedJudge(half=half, **options)


def _hf(argument: str, **options: Any) -> Judge:
    from emosteer.judges.hf import HFJudge

    if not argument:
        raise BadInputError("the judge spec hf: names no model: write hf:<model id or folder> "
                            "(e.g. hf:facebook/bart-large-mnli)")
    return HFJudge(argument, **options)


def _zero_shot(**options: Any) -> Judge:
    from emosteer.judges.zero_shot import ZeroShotJudge

    return ZeroShotJudge(**options)


def _openai(argument: str, **options: Any) -> Judge:
    from emosteer.judges.llm import OpenAIJudge

    return OpenAIJudge.from_spec(f"openai:{argument}", **options)


register_judge("embedded", _embedded)
# the same judge fitted on disjoint halves of its training part (docs/judge.md)
register_judge("embedded-a", lambda argument, **options: _embedded(argument, "a", **options))
register_judge("embedded-b", lambda argument, **options: _embedded(argument, "b", **options))
register_judge("hf", _hf, takes_argument=True)
# any set of emotion specs (default: the 20 shipped), from the same MiniLM encoder
register_judge("zero-shot", lambda argument, **options: _zero_shot(**options))
register_judge("zero-shot-a", lambda argument, **options: _zero_shot(half="a", **options))
register_judge("zero-shot-b", lambda argument, **options: _zero_shot(half="b", **options))
register_judge("openai", _openai, takes_argument=True)
