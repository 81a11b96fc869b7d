"""A request's prefix-cache salt and its temperature under emosteer's greedy rule; the
`emotion` field itself is parsed by `emosteer.protocol` (the contract both engines share).
No vLLM import.

The parsed mix ("spec") is a plain `{name: weight}` dict, sorted, zero weights dropped: it
travels in `SamplingParams.extra_args["emotion"]` to the workers. vLLM's `vllm_xargs`
carries flat values only, so over HTTP the mix may also come as a JSON string:
`vllm_xargs={"emotion": '{"joy": 1.5}'}`. An empty spec is an unsteered request, so weight 0
is unsteered by construction (and shares its prefix cache).

A positive temperature below `generation.GREEDY_BELOW` (1e-40, say) is greedy, as on
emosteer's own server (vLLM alone would sample at 0.01 instead).
"""

from __future__ import annotations

import hashlib
import json

from emosteer.generation import sampling_temperature
from emosteer.protocol import EMOTION, Spec

KEY = EMOTION  # the request field and the SamplingParams.extra_args key
SALT_PREFIX = "emosteer-"  # marks the cache salts the plugin sets

__all__ = ["KEY", "cache_salt", "request_temperature"]


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
