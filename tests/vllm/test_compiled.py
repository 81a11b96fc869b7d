"""The steering op under vLLM's compilation, the plugin's default (CPU: torch.compile with
inductor; the other offline tests run eager to save start-up time, with the same op): the
graph holds the op, unsteered rows equal stock compiled vLLM exactly, steered rows equal the
eager hook fallback, and the coefficient buffer stays where it is across steps."""

from __future__ import annotations

import pytest
from support import ENGINE, QUESTIONS, chat, stock_vllm
from test_offline import LOGPROB_TOL, first_step, params
from vllm.config import CompilationMode

COMPILED = {**ENGINE, "enforce_eager": False}
SPECS = [None, {"joy": 1.0}, None, {"anger": 1.0, "sadness": -0.5}]


@pytest.fixture(scope="module")
def compiled(vectors):
    import emosteer.vllm

    engine = emosteer.vllm.llm("default", vectors, **COMPILED)
    yield engine
    del engine


@pytest.fixture(scope="module")
def prompts(compiled) -> list[str]:
    return [chat(compiled.get_tokenizer(), q) for q in QUESTIONS]


def test_the_engine_compiles_with_the_op_in_every_layer(compiled):
    config = compiled.llm_engine.vllm_config
    assert not config.model_config.enforce_eager
    assert config.compilation_config.mode != CompilationMode.NONE
    assert "emosteer" in config.additional_config  # in vLLM's compile-cache key
    [state] = compiled.collective_rpc("emosteer_state")
    assert state["mode"] == "op" and state["wrapped"] == 30


def test_unsteered_rows_equal_stock_compiled_vllm(compiled, prompts, tmp_path):
    outs = compiled.generate(prompts, [params(s, skip_reading_prefix_cache=True)
                                       for s in SPECS], use_tqdm=False)
    stock = stock_vllm(prompts, 16, 5, tmp_path, enforce_eager=False)
    for i in (0, 2):
        assert list(outs[i].outputs[0].token_ids) == stock[i]["token_ids"]
        assert first_step(outs[i]) == {int(t): lp for t, lp in stock[i]["first"].items()}
    for i in (1, 3):
        assert list(outs[i].outputs[0].token_ids) != stock[i]["token_ids"]


def test_steered_rows_equal_the_hook_fallback(compiled, prompts, vectors, monkeypatch):
    import emosteer.vllm
    from emosteer.vllm.worker import MODE_ENV

    ours = compiled.generate(prompts, [params(s, max_tokens=1, logprobs=20) for s in SPECS],
                             use_tqdm=False)
    monkeypatch.setenv(MODE_ENV, "hooks")  # the engine's processes start with it
    hooks = emosteer.vllm.llm("default", vectors, **COMPILED)
    try:
        assert hooks.llm_engine.vllm_config.model_config.enforce_eager  # the fallback's mode
        assert hooks.collective_rpc("emosteer_state") == [
            {"mode": "hooks", "wrapped": 0, "coefficients": None}]
        theirs = hooks.generate(prompts, [params(s, max_tokens=1, logprobs=20) for s in SPECS],
                                use_tqdm=False)
    finally:
        del hooks
    for a, b in zip(ours, theirs, strict=True):
        got, ref = first_step(a), first_step(b)
        assert max(got, key=got.get) == max(ref, key=ref.get)
        shared = set(got) & set(ref)
        assert len(shared) >= 15
        diff = max(abs(got[t] - ref[t]) for t in shared)
        assert diff < LOGPROB_TOL, f"op (compiled) vs hooks (eager): {diff:.2e}"


def test_the_coefficient_buffer_is_written_in_place(compiled, prompts):
    def buffer() -> list:
        [state] = compiled.collective_rpc("emosteer_state")
        return state["coefficients"]

    address, _ = buffer()
    for batch in ([{"joy": 2.0}], SPECS, [{"sadness": 1.0}] * 3 + [None]):
        compiled.generate(prompts[:len(batch)], [params(s, max_tokens=3) for s in batch],
                          use_tqdm=False)
        assert buffer()[0] == address
    compiled.generate(prompts[:2], [params(None, max_tokens=2)] * 2, use_tqdm=False)
    assert buffer() == [address, 0.0]  # the steered rows were cleared
