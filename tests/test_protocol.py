"""One request contract, two engines: the same `emotion` and `meter` values through emosteer's
own server parser (pydantic request, then the route's mix) and the vLLM plugin's
(`plugin.checked`, its 400 stubbed: no vLLM needed), and the `/v1/models` entry each engine
lists for the same vector folder."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from live_server import live_server, random_vectors
from pydantic import ValidationError

from emosteer import protocol
from emosteer.errors import BadInputError
from emosteer.vectors import EmotionVector, load_vectors, mix

pytest.importorskip("fastapi")

SAME = [  # accepted by both
    "joy", {"joy": 1.5, "anger": -0.5}, '{"joy": 1.5, "sadness": -1}', {"joy": 0},
    {"joy": 0, "anger": 2.0}, None, "", {"joy": 2.5e-3}, {"joy": 4, "anger": -4},
]
REFUSED = [  # refused by both, with the same message
    {"joy": True}, {"joy": "1"}, [1, 2], {"xyz": 1}, {"xyz": 0}, {"joy": 1000},
    {"joy": float("inf")}, {"joy": float("nan")}, '{"joy": ', "xyz", 3,
    {f"e{i}": 1 for i in range(protocol.MAX_EMOTIONS + 1)},
]


class Refused(Exception):
    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.message, self.parameter = message, parameter


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    for name, vector in random_vectors(tiny_model("llama")).items():
        meta = {**vector.meta, "method": "filtered", "calibrated_strength": "0.75"}
        EmotionVector(vector.directions, meta).save(root / f"{name}.safetensors")
    return root


@pytest.fixture
def plugin(folder, monkeypatch):
    """emosteer.vllm.plugin serving `folder`, its 400 replaced by `Refused`."""
    from emosteer.vllm import plugin, web
    from emosteer.vllm.bank import VectorBank

    bank = VectorBank.load(folder)
    monkeypatch.setattr(plugin, "served_bank", lambda: bank)
    monkeypatch.setattr(web, "served_bank", lambda: bank)
    monkeypatch.setattr(plugin, "_http_error", lambda message, parameter="emotion":
                        Refused(message, parameter))
    return plugin


def builtin_side(value: object, vectors) -> tuple:
    """("steers", vector or None) or ("refused", param, message) on emosteer's server."""
    from emosteer.server.errors import APIError
    from emosteer.server.routes import _steering
    from emosteer.server.schemas import ChatRequest, describe

    body: dict = {"messages": [{"role": "user", "content": "hi"}]}
    if value is not None:
        body["emotion"] = value
    try:
        request = ChatRequest.model_validate(body)
        return "steers", _steering(request.emotion, vectors)
    except ValidationError as err:
        _, param, message = describe([{**e, "loc": ("body", *e["loc"])} for e in err.errors()])
        return "refused", param, message
    except APIError as err:
        return "refused", err.param, err.message


def vllm_side(value: object, plugin, vectors) -> tuple:
    """The same on the vLLM plugin: the spec it sends to the workers, which add
    sum(weight * vector): the mix."""
    try:
        spec = plugin.checked(value)
    except Refused as err:
        return "refused", err.parameter, err.message
    return "steers", mix(vectors, spec) if spec else None


@pytest.mark.parametrize("value", SAME + REFUSED, ids=repr)
def test_both_engines_parse_a_request_alike(value, folder, plugin):
    vectors = load_vectors(folder)
    mine, theirs = builtin_side(value, vectors), vllm_side(value, plugin, vectors)
    assert mine[0] == theirs[0] == ("steers" if value in SAME else "refused")
    if mine[0] == "refused":
        assert mine[1:] == theirs[1:]
        assert "\n" not in mine[2] and len(mine[2]) < 300
        return
    if mine[1] is None or theirs[1] is None:
        assert mine[1] is theirs[1] is None
        return
    for layer, direction in mine[1].directions.items():
        assert torch.equal(direction, theirs[1].directions[layer])


@pytest.mark.parametrize("value", [True, False, None, "yes", 1, 0, [True], {"on": True}])
def test_the_meter_field_is_one_rule(value):
    from emosteer.server.schemas import ChatRequest

    body = {"messages": [{"role": "user", "content": "hi"}], "meter": value}
    try:
        mine = ChatRequest.model_validate(body).meter
    except ValidationError:
        mine = "refused"
    try:
        theirs = protocol.parse_meter(value)
    except BadInputError:
        theirs = "refused"
    assert mine == theirs


def test_both_engines_list_the_same_model_fields(folder, plugin):
    from emosteer.server import ServeConfig, create_app
    from emosteer.vllm import web

    vectors = load_vectors(folder)
    model, tok = tiny_model("llama"), byte_tokenizer()
    app = create_app(model, tok, vectors, ServeConfig(max_tokens=64, max_context=256),
                     model_name="tiny", vectors_from=folder)
    with live_server(app) as url:
        import urllib.request

        with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
            mine = json.loads(resp.read())["data"][0]
        with urllib.request.urlopen(url + "/", timeout=30) as resp:
            page = resp.read().decode()

    async def vllm_listing(request):  # vLLM's own /v1/models, as its app answers it
        body = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model",
                                                       "max_model_len": 256}]}).encode()

        async def chunks():
            yield body
        return SimpleNamespace(status_code=200, body_iterator=chunks())

    def get(path):
        request = SimpleNamespace(method="GET", url=SimpleNamespace(path=path))
        return asyncio.run(web.playground(request, vllm_listing))

    theirs = json.loads(get("/v1/models").body)["data"][0]
    fields = set(protocol.model_fields(vectors, site="attn", max_tokens=1, context_length=1))
    assert fields <= set(mine) and fields <= set(theirs)
    for key in fields - {"max_tokens", "emosteer"}:
        assert mine[key] == theirs[key], key
    # max_tokens: the per-request cap; vLLM has none but the context
    assert mine["max_tokens"] == 64 and theirs["max_tokens"] == theirs["context_length"] == 256
    # "judge": true is offered by the built-in server only
    assert {**mine["emosteer"], "judge": None} == {**theirs["emosteer"], "judge": None}
    assert theirs["emosteer"]["vectors"]["joy"]["calibrated_strength"] == 0.75
    assert get("/").body.decode() == page  # one playground page
