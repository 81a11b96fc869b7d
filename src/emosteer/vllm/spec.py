"""A request's emotion mix: parsed, checked and given a prefix-cache salt; and its
temperature under emosteer's greedy rule. No vLLM import.

A request asks for steering with the same `"emotion"` field emosteer's own server takes:
`{"joy": 1.5, "anger": -0.5}` (a weight per emotion; each weight is that emotion's alpha),
or the shorthand `"joy"` (= `{"joy": 1}`). vLLM's `vllm_xargs` carries flat values only, so
over HTTP the mix may also come as a JSON string: `vllm_xargs={"emotion": '{"joy": 1.5}'}`.

The parsed form ("spec") is a plain `{name: weight}` dict, sorted, zero weights dropped: it
travels in `SamplingParams.extra_args["emotion"]` to the workers. An empty spec is an
unsteered request, so weight 0 is unsteered by construction (and shares its prefix cache).

A positive temperature below `generation.GREEDY_BELOW` (1e-40, say) is greedy, as on
emosteer's own server (vLLM alone would sample at 0.01 instead).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from emosteer.errors import BadAlphaError, BadInputError
from emosteer.generation import sampling_temperature
from emosteer.vectors import EmotionVector, check_alpha, mix

KEY = "emotion"  # the request field and the SamplingParams.extra_args key
SALT_PREFIX = "emosteer-"  # marks the cache salts the plugin sets

Spec = dict[str, float]  # emotion name -> weight (alpha), sorted by name, no zeros

__all__ = ["KEY", "Spec", "cache_salt", "parse_emotion", "request_temperature"]


def parse_emotion(value: object, vectors: Mapping[str, EmotionVector]) -> Spec:
    """The request's emotion mix as a spec; {} when the request is unsteered.

    Checked with emosteer's own rules: each weight through `check_alpha` (finite, within
    +-MAX_ALPHA), the names and the sum through `mix` (an unknown emotion names the ones
    available). Raises BadInputError (or a subclass) with a one-line message.

    Args:
        value: the "emotion" field: None, a name ("joy"), a {name: weight} mapping, or that
            mapping as a JSON string (how `vllm_xargs` carries it).
        vectors: the served vectors, by emotion name.

    Example:
        >>> parse_emotion('{"anger": -0.5, "joy": 1.5}', vectors)
        {'anger': -0.5, 'joy': 1.5}
    """
    weights = _weights(_decoded(value))
    # a zero weight steers like nothing; an unknown name is refused even at weight 0
    spec = {k: w for k, w in sorted(weights.items()) if w != 0.0 or k not in vectors}
    if spec:
        mix(vectors, spec)  # raises UnknownEmotionError naming the emotions served
    return spec


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


def _weights(value: object) -> dict[str, float]:
    """{name: checked weight} of a decoded "emotion" value."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadInputError("'emotion' must be an object such as {\"joy\": 1.5, \"anger\": "
                            f"-0.5}} or an emotion name, not {type(value).__name__}")
    weights = {}
    for name, weight in value.items():
        if not isinstance(name, str):
            raise BadInputError(f"emotion names are strings, got {name!r}: send e.g. "
                                '{"joy": 1.5}')
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise BadAlphaError(f"emotion weight for {name!r} must be a number, not "
                                f"{weight!r}: send e.g. {{{json.dumps(name)}: 1.5}}")
        weights[name] = check_alpha(weight, f"weight for {name!r}")
    return weights


def request_temperature(value: object) -> object:
    """A request's "temperature" under emosteer's rule: a positive number below
    GREEDY_BELOW becomes 0 (greedy), as `schemas.Temperature` makes it on the built-in
    server; anything else is returned as given, for vLLM to check.

    Example:
        >>> request_temperature(1e-40), request_temperature(0.7), request_temperature(None)
        (0.0, 0.7, None)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return sampling_temperature(value) if value > 0 else value


def cache_salt(spec: Spec, fingerprint: str, salt: str | None = None) -> str | None:
    """The prefix-cache salt for a steered request: a hash of its own salt and the spec.

    vLLM shares KV blocks between requests by token hash; salting by the steering spec (and
    the vector files it refers to) keeps steered and unsteered KV apart, both ways, while
    requests with the same spec still share. An unsteered request keeps `salt` unchanged.

    Args:
        spec: the parsed emotion mix (from parse_emotion).
        fingerprint: identifies the vector files served (VectorBank.fingerprint).
        salt: the cache salt the request already carries, if any.

    Example:
        >>> cache_salt({}, "abc") is None
        True
    """
    if not spec:
        return salt
    text = json.dumps([salt, fingerprint, sorted(spec.items())], separators=(",", ":"))
    # one short hash, so the salt stays within vLLM's rules (<= 128 chars, no '/' or '@')
    return SALT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]
