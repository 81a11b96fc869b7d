"""The plugin inside an offline vllm.LLM on the bundled model (CPU, float32, eager, V1 runner):
isolation in a continuous batch, weight 0, agreement with emosteer's transformers steering,
prefix-cache isolation both ways, and refused requests."""

from __future__ import annotations

import math

import pytest
import torch
from support import QUESTIONS, chat, stock_vllm
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt

MAX_TOKENS = 16
# first-step log-probabilities, vLLM vs transformers, same vector and input ids, float32:
# the kernels differ (vLLM's CPU attention and matmuls), so they agree up to rounding;
# measured 3e-5 here, steered and unsteered alike, while steering moves them by about 2.6
LOGPROB_TOL = 5e-4


def params(emotion=None, max_tokens=MAX_TOKENS, logprobs=5, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                          logprobs=logprobs, extra_args=None if emotion is None else
                          {"emotion": emotion}, **kw)


def first_step(output) -> dict[int, float]:
    return {t: lp.logprob for t, lp in output.outputs[0].logprobs[0].items()}


@pytest.fixture(scope="module")
def prompts(llm) -> list[str]:
    return [chat(llm.get_tokenizer(), q) for q in QUESTIONS]


def test_unsteered_rows_of_a_mixed_batch_equal_stock_vllm(llm, prompts, tmp_path):
    # one continuous batch: rows 0 and 2 unsteered, rows 1 and 3 steered by different mixes;
    # ignore_eos keeps every step's batch the same shape as the stock run's
    specs = [None, {"joy": 1.0}, None, {"anger": 1.0, "sadness": -0.5}]
    outs = llm.generate(prompts, [params(s, skip_reading_prefix_cache=True) for s in specs],
                        use_tqdm=False)
    stock = stock_vllm(prompts, MAX_TOKENS, 5, tmp_path)
    for i in (0, 2):
        assert list(outs[i].outputs[0].token_ids) == stock[i]["token_ids"]
        assert first_step(outs[i]) == {int(t): lp for t, lp in stock[i]["first"].items()}
    for i in (1, 3):  # the steered rows did change
        assert list(outs[i].outputs[0].token_ids) != stock[i]["token_ids"]


def test_weight_zero_is_unsteered(llm, prompts):
    specs = [None, {"joy": 0.0}, {"joy": 0, "anger": -0.0}, '{"sadness": 0}']
    outs = llm.generate([prompts[1]] * 4, [params(s) for s in specs], use_tqdm=False)
    plain = outs[0].outputs[0]
    for out in outs[1:]:
        assert out.outputs[0].token_ids == plain.token_ids
        assert first_step(out) == first_step(outs[0])


def test_first_step_logprobs_agree_with_transformers_steering(llm, prompts, vectors):
    import emosteer

    weights = {"joy": 1.0, "anger": -0.5}
    model, tok = emosteer.load_model("default")
    ids = tok(prompts[2], add_special_tokens=False, return_tensors="pt").input_ids  # (1, pos)
    with torch.no_grad():
        plain = model(ids).logits[0, -1].log_softmax(-1)  # (vocab,)
        mixed = emosteer.mix(emosteer.load_vectors(vectors), weights)
        with emosteer.steer(model, mixed):
            steered = model(ids).logits[0, -1].log_softmax(-1)
    request = TokensPrompt(prompt_token_ids=ids[0].tolist())
    outs = llm.generate([request] * 2, [params(weights, max_tokens=1, logprobs=20),
                                        params(None, max_tokens=1, logprobs=20)],
                        use_tqdm=False)
    for out, reference in ((outs[0], steered), (outs[1], plain)):
        got = first_step(out)
        diff = max(abs(lp - reference[t].item()) for t, lp in got.items())
        assert diff < LOGPROB_TOL, f"vLLM vs transformers: {diff:.2e}"
        assert max(got, key=got.get) == int(reference.argmax())
    # the comparison means something: steering moves these log-probabilities far more
    effect = max(abs(steered[t] - plain[t]).item() for t in first_step(outs[0]))
    assert effect > 50 * LOGPROB_TOL


@pytest.fixture(scope="module")
def long_prompts(llm) -> list[str]:
    """Prompts of several KV blocks each, so a prefix-cache hit would show."""
    tok = llm.get_tokenizer()
    text = " ".join(QUESTIONS) * 12
    return [chat(tok, f"{i}: {text}") for i in range(2)]


def _one(llm, prompt, emotion, **kw):
    return llm.generate([prompt], [params(emotion, max_tokens=4, **kw)], use_tqdm=False)[0]


def test_steered_request_does_not_read_unsteered_kv(llm, long_prompts):
    prompt = long_prompts[0]
    _one(llm, prompt, None)  # leaves unsteered KV blocks for this prompt in the cache
    steered = _one(llm, prompt, {"joy": 1.5})
    assert steered.num_cached_tokens == 0
    fresh = _one(llm, prompt, {"joy": 1.5}, skip_reading_prefix_cache=True)
    assert steered.outputs[0].token_ids == fresh.outputs[0].token_ids
    assert first_step(steered) == first_step(fresh)
    # the cache still works: the same spec shares its blocks, and weight 0 shares unsteered's
    again = _one(llm, prompt, {"joy": 1.5})
    assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == fresh.outputs[0].token_ids
    assert _one(llm, prompt, {"joy": 0.0}).num_cached_tokens > 0


def test_unsteered_request_does_not_read_steered_kv(llm, long_prompts):
    prompt = long_prompts[1]
    _one(llm, prompt, {"anger": 2.0})  # leaves steered KV blocks for this prompt
    plain = _one(llm, prompt, None)
    assert plain.num_cached_tokens == 0
    fresh = _one(llm, prompt, None, skip_reading_prefix_cache=True)
    assert plain.outputs[0].token_ids == fresh.outputs[0].token_ids
    assert first_step(plain) == first_step(fresh)
    assert _one(llm, prompt, {"anger": 1.0}).num_cached_tokens == 0  # another spec: apart


@pytest.mark.parametrize(("emotion", "words"), [
    ({"fear": 1.0}, "unknown emotion 'fear': available are anger, joy, sadness"),
    ({"joy": math.nan}, "finite"),
    ('{"joy": Infinity}', "finite"),
    ({"joy": 150.0}, "outside"),
    ("{oops", "not valid JSON"),
])
def test_bad_emotion_is_refused_and_the_engine_keeps_working(llm, prompts, emotion, words):
    with pytest.raises(VLLMValidationError, match=words):
        llm.generate([prompts[0], prompts[1]], [params(None), params(emotion)],
                     use_tqdm=False)
    out = llm.generate([prompts[0]], [params({"joy": 1.0}, max_tokens=2)], use_tqdm=False)
    assert len(out) == 1 and len(out[0].outputs[0].token_ids) == 2


def test_sampling_params_follow_generate_config():
    from emosteer.generation import GenerateConfig
    from emosteer.vllm import sampling_params

    sampled = sampling_params(GenerateConfig(), {"joy": 1.5})
    assert (sampled.temperature, sampled.top_p, sampled.repetition_penalty, sampled.seed,
            sampled.max_tokens) == (0.6, 0.9, 1.15, 0, 48)
    assert sampled.extra_args == {"emotion": {"joy": 1.5}}
    greedy = sampling_params(GenerateConfig(do_sample=False, max_new_tokens=8))
    assert greedy.temperature == 0.0 and greedy.extra_args is None and greedy.max_tokens == 8


def test_alpha_sweep_is_one_batch_of_steered_requests(llm):
    from emosteer.generation import GenerateConfig
    from emosteer.vllm import alpha_sweep, generate_texts

    cfg = GenerateConfig(do_sample=False, max_new_tokens=8)
    questions = list(QUESTIONS[:2])
    sweep = alpha_sweep(llm, questions, "joy", [0.0, 1.0, 2.0], cfg=cfg)
    rows = generate_texts(llm, questions * 3, [None, None, {"joy": 1.0}, {"joy": 1.0},
                                               {"joy": 2.0}, {"joy": 2.0}], cfg=cfg)
    assert [*sweep[0.0], *sweep[1.0], *sweep[2.0]] == rows
    assert sweep[0.0] != sweep[2.0]
