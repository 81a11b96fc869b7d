"""Issue 28, "Also": request bodies made by hypothesis from the request's own structure, against
both servers' parsers. Each body is accepted or refused with one line; nothing else escapes.

The built-in server validates with pydantic (`schemas.ChatRequest`, `CompletionRequest`) and
turns the errors into one line (`schemas.describe`); the vLLM plugin parses the "emotion" field
and the temperature by hand (`vllm.spec`). Both are pure functions of the body: no model."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from emosteer.errors import EmosteerError
from emosteer.protocol import parse_emotion
from emosteer.server.schemas import ChatRequest, CompletionRequest, describe
from emosteer.vectors import EmotionVector
from emosteer.vllm.spec import request_temperature

VECTORS = {name: EmotionVector({0: torch.ones(4)}, {"emotion": name, "site": "attn"})
           for name in ("joy", "anger")}
NUMBERS = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1e-40, -0.0, 1e308, 100.0, 100.5]))
TEXT = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["joy", "anger", "[/INST]", "", "\x1b[2J", "{\"joy\": 1}", "{bad json"])
ANY = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                   lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
EMOTION = st.one_of(ANY, st.dictionaries(st.sampled_from(["joy", "anger", "calm", ""]), NUMBERS,
                                         max_size=3), TEXT)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]),
                                 "content": st.one_of(TEXT, ANY)})
FIELDS = {"messages": st.lists(MESSAGE, max_size=3) | ANY, "prompt": TEXT | ANY,
          "max_tokens": NUMBERS | ANY, "temperature": NUMBERS | ANY, "top_p": NUMBERS | ANY,
          "emotion": EMOTION, "meter": ANY, "stream": ANY, "seed": NUMBERS | ANY,
          "stop": ANY, "n": NUMBERS | ANY}
BODY = st.fixed_dictionaries({}, optional=FIELDS)
CHECKS = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])


@CHECKS
@given(BODY, st.sampled_from([ChatRequest, CompletionRequest]))
def test_the_builtin_parser_accepts_or_refuses_in_one_line(body, schema):
    try:
        request = schema.model_validate(body)
    except ValidationError as err:
        code, _param, message = describe(err.errors())
        assert message and "\n" not in message and code, (body, message)
        return
    temperature = getattr(request, "temperature", None)
    assert temperature is None or (math.isfinite(temperature) and temperature >= 0)


@CHECKS
@given(EMOTION)
def test_the_vllm_emotion_parser_accepts_or_refuses_in_one_line(value):
    try:
        spec = parse_emotion(value, VECTORS)
    except EmosteerError as err:
        assert str(err) and "\n" not in str(err), (value, str(err))
        return
    assert set(spec) <= set(VECTORS)
    assert all(math.isfinite(w) and w != 0 and abs(w) <= 100 for w in spec.values())


@CHECKS
@given(NUMBERS | ANY)
def test_the_vllm_temperature_rule_never_raises(value):
    out = request_temperature(value)
    if isinstance(value, float) and 0 < value < 1e-5:
        assert out == 0
