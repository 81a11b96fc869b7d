"""The request contract both engines serve: emosteer's own server and the vLLM plugin.

One module says what the `emotion` and `meter` fields of a request accept, what each error
says, what emosteer adds to a `/v1/models` entry and what a streamed chunk's meter summary
is. No web framework and no vLLM inside: `server/` (pydantic, FastAPI) and `vllm/` both call
these functions and turn the errors they raise (BadInputError and its kin, each with a
one-line message) into their own 400s, with `error_code` naming the OpenAI-style code.

- `"emotion"`: `{"joy": 1.5, "anger": -0.5}` (a weight per emotion; each weight is that
  emotion's alpha), the shorthand `"joy"` (= `{"joy": 1}`), or the mapping as a JSON string
  (how vLLM's `vllm_xargs` carries it). A zero weight steers like nothing; an unknown name is
  refused even at weight 0.
- `"meter"`: true or false (null: false).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from emosteer.bounds import MAX_ALPHA, check_alpha
from emosteer.errors import BadAlphaError, BadInputError, UnknownEmotionError
from emosteer.vectors import DEFAULT_VECTORS, EmotionVector, mix

EMOTION = "emotion"  # the request field
METER = "meter"  # the request field
MAX_EMOTIONS = 64  # names in one mix; a served folder holds a handful

Spec = dict[str, float]  # emotion name -> weight (alpha), sorted by name, no zero weights

__all__ = ["EMOTION", "MAX_EMOTIONS", "METER", "Spec", "describe_vectors", "emotion_weights",
           "error_code", "mean_readings", "model_fields", "parse_emotion", "parse_meter",
           "playground_page", "steering_mix", "steering_spec", "vector_facts"]


def emotion_weights(value: object) -> dict[str, float] | None:
    """The `emotion` field as {name: checked weight}; None when the field is absent.

    Raises BadInputError (BadAlphaError for a weight) with a one-line message.

    Example:
        >>> emotion_weights("joy"), emotion_weights('{"joy": 1.5}')
        ({'joy': 1.0}, {'joy': 1.5})
    """
    value = _decoded(value)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadInputError("'emotion' must be an object such as {\"joy\": 1.5, \"anger\": "
                            f"-0.5}} or an emotion name, not {type(value).__name__}")
    if len(value) > MAX_EMOTIONS:
        raise BadInputError(f"'emotion' names {len(value)} emotions; at most {MAX_EMOTIONS} "
                            "mix in one request")
    weights = {}
    for name, weight in value.items():
        if not isinstance(name, str):
            raise BadInputError(f"emotion names are strings, got {name!r}: send e.g. "
                                '{"joy": 1.5}')
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise BadAlphaError(f"emotion weight for {name!r} must be a number, not "
                                f"{_shown(weight)}: send e.g. {{{json.dumps(name)}: 1.5}}")
        weights[name] = check_alpha(weight, f"emotion weight for {name!r}")
    return weights


def _decoded(value: object) -> object:
    """A JSON string decoded; a bare name made {name: 1.0}; anything else as given."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text.startswith("{"):
        return {text: 1.0} if text else None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(f"'emotion' is not valid JSON ({err.msg} at character {err.pos}):"
                            ' send e.g. {"joy": 1.5, "anger": -0.5}') from None


def steering_mix(weights: Mapping[str, float] | None, vectors: Mapping[str, EmotionVector]
                 ) -> tuple[Spec, EmotionVector | None]:
    """The mix a request steers with, as a spec (sorted, zero weights of served emotions
    dropped; {}: unsteered) and as the vector `mix` makes of it (None when unsteered). `mix`
    checks it: an unknown name raises UnknownEmotionError naming the served ones; a sum past
    a vector's max_dose raises.

    Example:
        >>> steering_mix({"joy": 1.5, "anger": 0}, vectors)[0]
        {'joy': 1.5}
    """
    spec = {k: float(w) for k, w in sorted((weights or {}).items())
            if w != 0.0 or k not in vectors}
    return spec, (mix(vectors, spec) if spec else None)


def steering_spec(weights: Mapping[str, float] | None,
                  vectors: Mapping[str, EmotionVector]) -> Spec:
    """steering_mix's spec alone (the vLLM workers add the mix themselves).

    Example:
        >>> steering_spec({"joy": 1.5, "anger": 0}, vectors)
        {'joy': 1.5}
    """
    return steering_mix(weights, vectors)[0]


def parse_emotion(value: object, vectors: Mapping[str, EmotionVector]) -> Spec:
    """The `emotion` field, checked against the served vectors, as the mix to steer with ({}:
    unsteered): emotion_weights, then steering_spec.

    Example:
        >>> parse_emotion('{"anger": -0.5, "joy": 1.5}', vectors)
        {'anger': -0.5, 'joy': 1.5}
    """
    return steering_spec(emotion_weights(value), vectors)


def error_code(err: Exception) -> str:
    """The OpenAI-style code of an `emotion` error: unknown_emotion, invalid_alpha or
    invalid_emotion."""
    if isinstance(err, UnknownEmotionError):
        return "unknown_emotion"
    return "invalid_alpha" if isinstance(err, BadAlphaError) else "invalid_emotion"


def parse_meter(value: object) -> bool:
    """The `meter` field: true or false (null: false); anything else is refused.

    Example:
        >>> parse_meter(True), parse_meter(None)
        (True, False)
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    raise BadInputError(f"'meter' must be true or false, not {_shown(value)}: send "
                        '"meter": true for per-token emotion readings')


def mean_readings(readings: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """A streamed chunk's `emotion_meter`: the mean per emotion of its tokens' readings,
    rounded; None for no tokens.

    Example:
        >>> mean_readings([{"joy": 0.2}, {"joy": 0.6}])
        {'joy': 0.4}
    """
    if not readings:
        return None
    return {e: round(sum(r[e] for r in readings) / len(readings), 4) for e in readings[0]}


def model_fields(vectors: Mapping[str, EmotionVector], *, site: str | None, max_tokens: int,
                 context_length: int, meter: Any = None, folder: str | Path | None = None,
                 judge: bool = False) -> dict[str, Any]:
    """What emosteer adds to a `/v1/models` entry, one meaning per field on both engines.

    emotions: the names `"emotion"` accepts; site: where they are added; max_alpha: the
    largest |weight|; max_tokens: the most tokens one request may ask to generate (a request
    is also bound by context_length minus its prompt); context_length: prompt + answer tokens
    the model holds; meter: the emotions `"meter": true` reads (None: no meter) and
    meter_warmup the first readings its text-level mean leaves out; emosteer: where the
    vectors came from and how each was made, the meter and the judge.

    Args:
        vectors: the served vectors by name.
        site: their site ("attn", "residual"...).
        max_tokens: the per-request cap on generated tokens.
        context_length: the model's context in tokens.
        meter: the served Meter, or None.
        folder: the served folder (None: vectors built in Python).
        judge: whether `"judge": true` is offered.
    """
    emotions = list(meter.emotions) if meter is not None else None
    about = {**describe_vectors(vectors, folder, site), "meter": emotions,
             "judge": "embedded" if judge else None}
    return {"emotions": sorted(vectors), "site": site, "max_alpha": MAX_ALPHA,
            "max_tokens": max_tokens, "context_length": context_length, "meter": emotions,
            "meter_warmup": meter.warmup if meter is not None else None, "emosteer": about}


# metadata key -> the name /v1/models shows; kept as the file has them (strings), numbers parsed
FACTS = {"method": "method", "filter": "filter", "calibrated_strength": "calibrated_strength",
         "calibration": "calibration", "judge": "judge", "model_id": "model",
         "dataset": "dataset", "n_queries": "n_queries", "band": "band", "created": "created"}
NUMBERS = {"calibrated_strength": float, "n_queries": int}


def vector_facts(vector: EmotionVector) -> dict[str, Any]:
    """The provenance of one vector from its metadata (keys it lacks are left out): the facts
    a user needs to trust a mix (method and filter, calibrated strength, the judge that
    filtered or calibrated, the model, when).

    Example:
        vector_facts(load_vectors("default")["joy"])["calibrated_strength"]  # 0.5
    """
    out: dict[str, Any] = {}
    for key, shown in FACTS.items():
        value = vector.meta.get(key)
        if value in (None, "", "-"):
            continue
        try:
            out[shown] = NUMBERS[key](value) if key in NUMBERS else value
        except ValueError:
            out[shown] = value
    return out


def describe_vectors(vectors: Mapping[str, EmotionVector], folder: str | Path | None,
                     site: str | None) -> dict[str, Any]:
    """The served vectors as `/v1/models` shows them under `emosteer` (without the meter and
    judge): their names, site, each one's facts, and whether the folder is the one shipped
    for the bundled model or one given to `--vectors` (by its name: no server path is shown).

    Example:
        describe_vectors(load_vectors("default"), DEFAULT_VECTORS, "attn")["source"]
        # {"kind": "shipped", "folder": "smollm2-135m-instruct"}
    """
    if folder is None:  # vectors built in Python
        source: dict[str, str | None] = {"kind": "library", "folder": None}
    else:
        path = Path(folder).resolve()
        source = {"kind": "shipped" if path == DEFAULT_VECTORS.resolve() else "folder",
                  "folder": path.name}
    return {"emotions": sorted(vectors), "site": site, "source": source,
            "vectors": {name: vector_facts(vectors[name]) for name in sorted(vectors)}}


@cache
def playground_page() -> str:
    """The playground page both engines serve at `/` (it reads `/v1/models` as model_fields
    writes it)."""
    return resources.files("emosteer.server").joinpath("playground.html").read_text(
        encoding="utf-8")


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
