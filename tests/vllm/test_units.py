"""The plugin's parts without an engine: request parsing, cache salts, the vector bank, and
one step's plan and hook (steering and the meter) on a hand-made V1 batch layout."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import support
import torch

from emosteer.emotion_meter.meter import Meter
from emosteer.errors import (
    BadAlphaError,
    BadInputError,
    UnknownEmotionError,
    VectorFileError,
    VectorMismatchError,
)
from emosteer.hooks import hooked
from emosteer.models import DEFAULT_MODEL_ID, cache_dir
from emosteer.protocol import parse_emotion, parse_meter
from emosteer.vllm.bank import VectorBank, served_model_id
from emosteer.vllm.meter import ID_KEY, MeterReader
from emosteer.vllm.spec import cache_salt
from emosteer.vllm.worker import Steerer

SHAPE = {"model_id": DEFAULT_MODEL_ID, "architecture": "llama", "hidden_size": "576",
         "num_layers": "30"}


@pytest.fixture(scope="module")
def bank(vectors) -> VectorBank:
    return VectorBank.load(vectors)


def test_parse_forms(bank):
    v = bank.vectors
    assert parse_emotion({"joy": 1.5, "anger": -0.5}, v) == {"anger": -0.5, "joy": 1.5}
    assert list(parse_emotion({"joy": 1, "anger": 2}, v)) == ["anger", "joy"]  # sorted
    assert parse_emotion('{"joy": 1.5}', v) == {"joy": 1.5}  # vllm_xargs' JSON string
    assert parse_emotion("joy", v) == {"joy": 1.0}  # shorthand, as emosteer's server
    assert parse_emotion(None, v) == {}
    assert parse_emotion({"joy": 0, "anger": 0.0}, v) == {}  # weight 0 is unsteered
    assert parse_emotion({"joy": 0, "anger": 1}, v) == {"anger": 1.0}


@pytest.mark.parametrize(("value", "error", "words"), [
    ({"fear": 1.0}, UnknownEmotionError, "available are anger, joy, sadness"),
    ({"fear": 0.0}, UnknownEmotionError, "unknown emotion 'fear'"),
    ({"joy": math.nan}, BadAlphaError, "finite"),
    ('{"joy": NaN}', BadAlphaError, "finite"),
    ({"joy": 1e3}, BadAlphaError, "outside"),
    ({"joy": -101}, BadAlphaError, "outside"),
    ({"joy": True}, BadAlphaError, "must be a number"),
    ({"joy": "1"}, BadAlphaError, "must be a number"),
    ("{joy: 1}", BadInputError, "not valid JSON"),
    ([1, 2], BadInputError, "must be an object"),
])
def test_parse_refuses(bank, value, error, words):
    with pytest.raises(error, match=words):
        parse_emotion(value, bank.vectors)


def test_the_bank_serves_any_emotion_its_folder_names(tmp_path):
    bank = VectorBank.load(support.write(tmp_path / "custom", ("calm", "gratitude")))
    assert sorted(bank.vectors) == ["calm", "gratitude"]
    assert parse_emotion({"calm": 1, "gratitude": 0.5}, bank.vectors) == {
        "calm": 1.0, "gratitude": 0.5}
    with pytest.raises(UnknownEmotionError, match=r"'joy': available are calm, gratitude; "
                       r"extract it with `emosteer extract --emotion joy --describe"):
        parse_emotion({"joy": 1}, bank.vectors)


def test_the_served_bank_follows_the_folder_the_environment_names(tmp_path, monkeypatch):
    from emosteer.vllm.bank import VECTORS_ENV, served_bank

    first = support.write(tmp_path / "first", ("calm",))
    second = support.write(tmp_path / "second", ("joy", "awe"))
    monkeypatch.setenv(VECTORS_ENV, str(first))
    assert served_bank().names == ("calm",)
    monkeypatch.setenv(VECTORS_ENV, str(second))  # a second engine in the same process
    assert sorted(served_bank().names) == ["awe", "joy"]
    assert served_bank() is served_bank()  # loaded once per folder
    monkeypatch.delenv(VECTORS_ENV)
    with pytest.raises(BadInputError, match="EMOSTEER_VECTORS is not set"):
        served_bank()


def test_cache_salt():
    fp = "0123"
    assert cache_salt({}, fp) is None
    assert cache_salt({}, fp, "mine") == "mine"  # unsteered: the request's salt, unchanged
    salt = cache_salt({"joy": 1.0}, fp)
    assert salt == cache_salt({"joy": 1.0}, fp)  # same spec: same salt, so they share
    others = {cache_salt({"joy": 1.5}, fp), cache_salt({"anger": 1.0}, fp),
              cache_salt({"joy": 1.0}, "4567"), cache_salt({"joy": 1.0}, fp, "mine")}
    assert salt not in others and len(others) == 4
    for s in [salt, *others]:  # vLLM's rules for cache_salt
        assert len(s) <= 128 and not set(s) & set("@/\\\0")


def test_bank_layout(bank):
    assert bank.names == ("anger", "joy", "sadness")  # file order, sorted by name
    stack = bank.stacked(30)
    assert stack.shape == (30, 3, 576)
    assert torch.equal(stack[7, 1], bank.vectors["joy"].directions[7])
    assert bank.weights({"sadness": 2.0, "joy": -1.0}) == [0.0, -1.0, 2.0]
    assert len(bank.fingerprint) == 16


def test_bank_check_names_both_models(bank):
    bank.check(SHAPE)
    with pytest.raises(VectorMismatchError, match="made for model 'HuggingFaceTB/SmolLM2-135M"
                       "-Instruct', not 'org/other'.*EMOSTEER_ALLOW_OTHER_MODEL"):
        bank.check({**SHAPE, "model_id": "org/other"})
    bank.check({**SHAPE, "model_id": "org/other"}, allow_other_model=True)
    with pytest.raises(VectorMismatchError, match="hidden_size 576 vs 960"):
        bank.check({**SHAPE, "model_id": "org/other", "hidden_size": "960"},
                   allow_other_model=True)


def test_bank_refuses_residual_vectors(tmp_path):
    v = support.vector("joy", 0)
    type(v)(v.directions, {**v.meta, "site": "residual"}).save(tmp_path / "joy.safetensors")
    with pytest.raises(VectorFileError, match="attention output projection only"):
        VectorBank.load(tmp_path)


def test_served_model_id(tmp_path):
    assert served_model_id(str(cache_dir() / "smollm2-135m-instruct")) == DEFAULT_MODEL_ID
    assert served_model_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    (tmp_path / "my-model").mkdir()
    assert served_model_id(str(tmp_path / "my-model")) == "my-model"


def _runner(specs: list[dict | None], counts: list[int], prefix: str = "r"):
    """A stand-in for the V1 runner's batch state: request i (id prefix + i) has counts[i]
    tokens."""
    ids = [f"{prefix}{i}" for i in range(len(specs))]
    requests = {rid: SimpleNamespace(sampling_params=SimpleNamespace(
        extra_args=None if spec is None else {"emotion": spec, "other": 1}))
        for rid, spec in zip(ids, specs, strict=True)}
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return SimpleNamespace(input_batch=SimpleNamespace(req_ids=ids, num_reqs=len(ids)),
                           requests=requests, query_start_loc=SimpleNamespace(np=starts))


def test_plan_and_hook_steer_only_their_rows(bank):
    modules = {layer: torch.nn.Identity() for layer in range(30)}
    steerer = Steerer(bank, modules, bank.stacked(30))
    # prefill of 3 tokens (joy), a decode token (unsteered), 2 tokens (mix), and padding
    runner = _runner([{"joy": 1.0}, None, {"anger": -0.5, "sadness": 2.0}], [3, 1, 2])
    plan = steerer.plan(runner)
    assert plan.rows.tolist() == [0, 1, 2, 4, 5]
    assert plan.row_spec.tolist() == [0, 0, 0, 1, 1]
    hidden = torch.randn(8, 576)  # 6 tokens + 2 padding
    before = hidden.clone()
    with steerer.steering(plan):
        modules[3](hidden)
    v = bank.vectors
    joy, mixed = v["joy"].directions[3], -0.5 * v["anger"].directions[3] + \
        2.0 * v["sadness"].directions[3]
    torch.testing.assert_close(hidden[:3], before[:3] + joy, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden[4:6], before[4:6] + mixed, rtol=0, atol=1e-5)
    assert torch.equal(hidden[3], before[3]) and torch.equal(hidden[6:], before[6:])
    assert not modules[3]._forward_hooks  # the block removed its hooks


def test_unsteered_batch_has_no_plan_and_no_hook(bank):
    modules = {0: torch.nn.Linear(4, 4)}
    steerer = Steerer(bank, modules, bank.stacked(30))
    assert steerer.plan(_runner([None, {}], [4, 1])) is None
    with steerer.steering(None):
        assert not modules[0]._forward_hooks


def test_hook_keeps_the_output_tuple(bank):
    steerer = Steerer(bank, {}, bank.stacked(30))
    plan = steerer.plan(_runner([{"joy": 2.0}], [2]))
    out, bias = torch.zeros(2, 576), None

    class Proj(torch.nn.Module):  # vLLM's RowParallelLinear returns (out, bias)
        def forward(self, x):
            return x, bias

    proj = Proj()
    with hooked(None, {proj: _adder_for(steerer, plan, 5)}):
        got = proj(out)
    assert isinstance(got, tuple) and got[1] is None
    torch.testing.assert_close(got[0][1], 2.0 * bank.vectors["joy"].directions[5])


def _adder_for(steerer, plan, layer):
    from emosteer.vllm.worker import _adder

    return _adder(steerer.stack[layer], plan)


def test_serve_command(vectors, monkeypatch):
    from emosteer.vllm.launcher import serve_command

    monkeypatch.setenv("VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY", "MINE_")
    argv, env = serve_command("default", vectors, port=8123,
                              extra_vllm_args=["--tensor-parallel-size", "2"])
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--port") + 1] == "8123"
    assert "--enforce-eager" not in argv  # vLLM compiles: the steering is an op in the graph
    assert argv[argv.index("--served-model-name") + 1:][:2] == [DEFAULT_MODEL_ID, "default"]
    assert argv[-2:] == ["--tensor-parallel-size", "2"]  # vLLM's own options, unchanged
    assert "--kv-cache-memory-bytes" in argv  # the bundled model's small KV cache
    assert env["EMOSTEER_VECTORS"] == str(vectors.resolve())
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert env["VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"] == "MINE_,EMOSTEER_"
    argv, _ = serve_command("org/model", vectors, extra_vllm_args=[
        "--served-model-name", "x", "--gpu-memory-utilization", "0.5"])
    assert argv.count("--served-model-name") == 1 and "--kv-cache-memory-bytes" not in argv


def test_serve_refuses_other_models_vectors_before_vllm_starts(vectors, tmp_path):
    from transformers import LlamaConfig

    from emosteer.vllm.launcher import check_vectors

    LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=128).save_pretrained(tmp_path / "tiny")
    with pytest.raises(VectorMismatchError, match="made for model 'HuggingFaceTB/SmolLM2-135M"
                       "-Instruct', not 'tiny'"):
        check_vectors(str(tmp_path / "tiny"), vectors)


def _metered_runner(rows: list[tuple[str | None, int, int, int]]):
    """A V1 batch stand-in for the meter: per request (meter id or None, tokens scheduled
    this step, tokens computed before it, prompt length)."""
    ids = [f"r{i}" for i in range(len(rows))]
    requests = {rid: SimpleNamespace(sampling_params=SimpleNamespace(
        extra_args=None if mid is None else {ID_KEY: mid}))
        for rid, (mid, *_) in zip(ids, rows, strict=True)}
    starts = np.concatenate([[0], np.cumsum([r[1] for r in rows])]).astype(np.int32)
    batch = SimpleNamespace(req_ids=ids, num_reqs=len(ids),
                            num_computed_tokens_cpu=np.array([r[2] for r in rows]),
                            num_prompt_tokens=np.array([r[3] for r in rows]))
    return SimpleNamespace(input_batch=batch, requests=requests,
                           query_start_loc=SimpleNamespace(np=starts))


def test_meter_reads_the_row_each_new_token_is_sampled_from(bank):
    meter = Meter.from_vectors(bank.vectors, layers=[3, 5])
    modules = {3: torch.nn.Identity(), 5: torch.nn.Identity()}
    reader = MeterReader(meter, modules, torch.device("cpu"))
    # a prefill chunk short of its prompt's end (samples nothing), an unmetered decode, the
    # last prefill chunk of a prompt of 8 (samples token 0), a decode (samples token 5)
    runner = _metered_runner([("a", 3, 0, 10), (None, 1, 9, 4), ("b", 3, 5, 8),
                              ("c", 1, 12, 8)])
    plan = reader.plan(runner)
    assert plan.rows.tolist() == [6, 7] and plan.keys == [("b", 0), ("c", 5)]
    hidden = torch.randn(9, 576)  # 8 tokens and a padding row
    before = hidden.clone()
    with reader.reading(plan):
        outs = [modules[layer](hidden) for layer in (3, 5)]
    assert all(torch.equal(o, before) for o in outs)  # read-only
    assert not modules[3]._forward_hooks and not modules[5]._forward_hooks
    expected = meter.calibrate(meter.raw({layer: before[[6, 7]] @ unit.T
                                          for layer, unit in meter.band().items()}))
    torch.testing.assert_close(torch.tensor(reader.take("b", 0, 1, done=False)), expected[:1])
    assert reader.take("b", 0, 1, done=False) == [None]  # handed out once
    got = reader.take("c", 4, 6, done=True)
    assert got[0] is None
    torch.testing.assert_close(torch.tensor(got[1]), expected[1])
    assert "c" not in reader.store and "a" not in reader.store


def test_meter_reads_before_the_steering_adds(bank):
    meter = Meter.from_vectors(bank.vectors, layers=[3])
    module = torch.nn.Identity()
    reader = MeterReader(meter, {3: module}, torch.device("cpu"))
    steerer = Steerer(bank, {3: module}, bank.stacked(30))
    runner = _metered_runner([("a", 2, 0, 2)])
    runner.requests["r0"].sampling_params.extra_args["emotion"] = {"joy": 3.0}
    hidden = torch.randn(2, 576)
    before = hidden.clone()
    with reader.reading(reader.plan(runner)), steerer.steering(steerer.plan(runner)):
        module(hidden)  # the steering adds in place, after the meter's hook has read
    assert not torch.equal(hidden, before)
    expected = meter.calibrate(meter.raw({3: before[[1]] @ meter.band()[3].T}))
    torch.testing.assert_close(torch.tensor(reader.take("a", 0, 1, done=True)), expected)


def test_unmetered_batch_has_no_meter_plan_and_no_hook(bank):
    modules = {3: torch.nn.Identity()}
    reader = MeterReader(Meter.from_vectors(bank.vectors, layers=[3]), modules,
                         torch.device("cpu"))
    assert reader.plan(_metered_runner([(None, 4, 0, 4), (None, 1, 7, 4)])) is None
    with reader.reading(None):
        assert not modules[3]._forward_hooks


def test_parse_meter():
    assert parse_meter(True) is True and parse_meter(False) is False
    assert parse_meter(None) is False
    for bad in ("yes", 1, 0, [True], {"on": True}):
        with pytest.raises(BadInputError, match="'meter' must be true or false"):
            parse_meter(bad)


def test_which_meter_a_server_reads_with(bank, monkeypatch, tmp_path):
    from emosteer.emotion_meter.meter import SHIPPED
    from emosteer.errors import EmosteerError
    from emosteer.vllm.launcher import serve_command
    from emosteer.vllm.meter import METER_ENV, meter_file, served_meter

    monkeypatch.delenv(METER_ENV, raising=False)
    # the vectors were made for the bundled model: its shipped meter
    assert meter_file(bank) == SHIPPED / "meter-smollm2-135m-instruct.json"
    monkeypatch.setenv(METER_ENV, str(tmp_path / "mine.json"))
    assert meter_file(bank) == tmp_path / "mine.json"
    monkeypatch.delenv(METER_ENV)
    other = support.vector("joy", 0)
    other.meta["model_id"] = "org/other"
    other.save(tmp_path / "other" / "joy.safetensors")
    elsewhere = VectorBank.load(tmp_path / "other")
    assert meter_file(elsewhere) is None
    with pytest.raises(EmosteerError, match="no emotion meter is fitted .* EMOSTEER_METER"):
        served_meter(elsewhere)
    _, env = serve_command("default", tmp_path / "other", meter=tmp_path / "m.json")
    assert env[METER_ENV] == str((tmp_path / "m.json").resolve())


def _op_model(bank, layers=(3, 5)):
    """A module tree holding attention output projections (Identity) at the given layers,
    with a Steerer whose op is in (compile), as the worker sets it up at load time."""
    model = torch.nn.ModuleDict({str(layer): torch.nn.Identity() for layer in layers})
    steerer = Steerer(bank, {layer: model[str(layer)] for layer in layers}, bank.stacked(30))
    return model, steerer


def test_the_op_steers_each_request_on_its_own_rows_as_the_hooks_do(bank):
    model, steerer = _op_model(bank)
    steerer.compile(model, 16)
    runner = _runner([{"joy": 1.0}, None, {"anger": -0.5, "sadness": 2.0}], [3, 1, 2])
    steerer.fill(runner)
    hidden = torch.randn(8, 576)  # 6 tokens + 2 padding
    got = model["3"](hidden)
    expected = hidden.clone()
    hooks = Steerer(bank, {3: torch.nn.Identity()}, bank.stacked(30))
    with hooks.steering(hooks.plan(runner)):
        hooks.modules[3](expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got[3], hidden[3]) and torch.equal(got[6:], hidden[6:])
    # the next step: the unsteered request alone; every row is back to zero weights
    address = steerer.coefficients.rows.data_ptr()
    steerer.fill(_runner([None], [1], prefix="next"))
    assert torch.equal(model["5"](hidden), hidden)
    assert steerer.coefficients.rows.data_ptr() == address
    assert list(steerer._rows) == ["next0"]  # finished requests leave the cache


def test_the_op_meters_before_it_steers(bank):
    meter = Meter.from_vectors(bank.vectors, layers=[3, 5])
    model, steerer = _op_model(bank)
    reader = MeterReader(meter, dict(steerer.modules), torch.device("cpu"))
    reader.readings = steerer.compile(model, 16, reader.units)
    runner = _metered_runner([("a", 2, 0, 2)])
    runner.requests["r0"].sampling_params.extra_args["emotion"] = {"joy": 3.0}
    steerer.fill(runner)
    hidden = torch.randn(2, 576)
    with reader.reading(reader.plan(runner)):
        steered = model["5"](model["3"](hidden))
    assert not torch.equal(steered, hidden)
    after_3 = model["3"](hidden)  # layer 5 reads the state layer 3 steered, before its own
    expected = meter.calibrate(meter.raw({3: hidden[[1]] @ meter.band()[3].T,
                                          5: after_3[[1]] @ meter.band()[5].T}))
    torch.testing.assert_close(torch.tensor(reader.take("a", 0, 1, done=True)), expected)


def test_the_steering_mode_comes_from_the_environment(monkeypatch):
    from emosteer.vllm.worker import MODE_ENV, uses_hooks

    monkeypatch.delenv(MODE_ENV, raising=False)
    assert not uses_hooks()  # the op, by default
    monkeypatch.setenv(MODE_ENV, "hooks")
    assert uses_hooks()
    monkeypatch.setenv(MODE_ENV, "cuda-graphs")
    with pytest.raises(BadInputError, match=r'EMOSTEER_VLLM_STEERING=.*use "op"'):
        uses_hooks()
