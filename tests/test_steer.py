"""Steering against manual references, hook hygiene, algebra, bad alphas, dtypes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model

import emosteer
import emosteer.steering
from emosteer.errors import BadAlphaError, BadInputError, VectorMismatchError
from emosteer.models import model_shape
from emosteer.steering import _adder
from emosteer.vectors import EmotionVector, mix

IDS = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 24, 25]])


def random_vector(model, site="attn", seed=1, emotion="joy", scale=1.0) -> EmotionVector:
    g = torch.Generator().manual_seed(seed)
    d, n = model.config.hidden_size, model.config.num_hidden_layers
    directions = {i: torch.randn(d, generator=g) * scale for i in range(n)}
    return EmotionVector(directions, {**model_shape(model), "site": site, "emotion": emotion})


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def test_attn_site_equals_a_bias_on_the_output_projection(llama):
    """Adding alpha*v to o_proj's output is what a bias of alpha*v on o_proj computes."""
    vec, alpha = random_vector(llama), 1.5
    with emosteer.steer(llama, vec, alpha):
        steered = logits(llama)
    reference = copy.deepcopy(llama)
    for i, layer in enumerate(reference.model.layers):
        old = layer.self_attn.o_proj
        new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        new.weight.data.copy_(old.weight.data)
        new.bias.data.copy_(alpha * vec.directions[i])
        layer.self_attn.o_proj = new
    torch.testing.assert_close(steered, logits(reference), rtol=1e-5, atol=1e-5)


def test_residual_site_equals_manual_final_layer_add(llama):
    """Steering only the last layer's residual output: logits = head(norm(h + alpha v))."""
    last = llama.config.num_hidden_layers - 1
    vec, alpha = random_vector(llama, site="residual").select([last]), 0.7
    captured = {}
    handle = llama.model.norm.register_forward_pre_hook(
        lambda module, args: captured.setdefault("h", args[0].detach().clone()))
    try:
        logits(llama)
    finally:
        handle.remove()
    manual = llama.lm_head(llama.model.norm(captured["h"] + alpha * vec.directions[last]))
    with emosteer.steer(llama, vec, alpha):
        steered = logits(llama)
    torch.testing.assert_close(steered, manual.detach(), rtol=1e-5, atol=1e-5)


def test_residual_site_adds_increments_so_shifts_do_not_pile_up(llama):
    """A residual vector equal at every layer needs no addition after the first layer."""
    v = random_vector(llama, site="residual").directions[0]
    flat = EmotionVector({0: v, 1: v}, {**model_shape(llama), "site": "residual"})
    with emosteer.steer(llama, flat, 1.3):
        all_layers = logits(llama)
    with emosteer.steer(llama, flat.select([0]), 1.3):
        first_only = logits(llama)
    torch.testing.assert_close(all_layers, first_only, rtol=1e-6, atol=1e-6)


def test_alpha_zero_is_bit_identical(llama):
    base = logits(llama)
    with emosteer.steer(llama, random_vector(llama, scale=100.0), 0.0):
        assert torch.equal(logits(llama), base)
    with emosteer.steer(llama, random_vector(llama) * 0.0, 1.0):
        assert torch.equal(logits(llama), base)


def test_exception_inside_block_restores_model(llama):
    base = logits(llama)
    hooks_before = [len(m._forward_hooks) for m in llama.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with emosteer.steer(llama, random_vector(llama), 2.0):
            assert not torch.equal(logits(llama), base)
            raise RuntimeError("boom")
    assert [len(m._forward_hooks) for m in llama.modules()] == hooks_before
    assert torch.equal(logits(llama), base)


def test_existing_hooks_are_kept(llama):
    seen = []
    handle = llama.model.layers[0].self_attn.o_proj.register_forward_hook(
        lambda *args: seen.append(1))
    with emosteer.steer(llama, random_vector(llama), 1.0):
        logits(llama)
    logits(llama)
    handle.remove()
    assert len(seen) == 2


def test_scaling_the_vector_equals_scaling_alpha(llama):
    vec = random_vector(llama)
    with emosteer.steer(llama, vec * 2.0, 1.0):
        doubled = logits(llama)
    with emosteer.steer(llama, vec + vec, 1.0):
        summed = logits(llama)
    with emosteer.steer(llama, vec, 2.0):
        alpha2 = logits(llama)
    assert torch.equal(doubled, summed)
    torch.testing.assert_close(doubled, alpha2, rtol=1e-6, atol=1e-6)


def test_mix_steers_like_the_sum(llama):
    joy, anger = random_vector(llama, seed=1, emotion="joy"), random_vector(llama, seed=2,
                                                                           emotion="anger")
    with emosteer.steer(llama, mix({"joy": joy, "anger": anger}, {"joy": 1.0, "anger": 0.5}), 1):
        mixed = logits(llama)
    with emosteer.steer(llama, joy + anger * 0.5, 1.0):
        summed = logits(llama)
    assert torch.equal(mixed, summed)


def test_chosen_layers_only(llama):
    vec = random_vector(llama)
    with emosteer.steer(llama, vec, 1.0, layers=[1]):
        only_1 = logits(llama)
    with emosteer.steer(llama, vec.select([1]), 1.0):
        selected = logits(llama)
    assert torch.equal(only_1, selected)
    assert not torch.equal(only_1, logits(llama))


def test_generated_positions_leave_the_prompt_alone(llama):
    base = logits(llama)
    with emosteer.steer(llama, random_vector(llama), 3.0, positions="generated"):
        steered = logits(llama)
    assert torch.equal(steered[:, :-1], base[:, :-1])
    assert not torch.allclose(steered[:, -1], base[:, -1])


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf"), 1e6, "strong"])
def test_bad_alpha_is_refused_and_nothing_is_hooked(llama, alpha):
    hooks_before = [len(m._forward_hooks) for m in llama.modules()]
    with pytest.raises(BadAlphaError, match="alpha"):
        with emosteer.steer(llama, random_vector(llama), alpha):
            pass
    assert [len(m._forward_hooks) for m in llama.modules()] == hooks_before


def test_vector_from_another_model_is_refused(llama):
    gpt2 = tiny_model("gpt2", hidden_size=32, n_embd=32)
    vec = random_vector(gpt2)
    with pytest.raises(VectorMismatchError, match="tiny-gpt2.*tiny-llama.*hidden_size 32 vs 64"):
        with emosteer.steer(llama, vec, 1.0):
            pass
    other = tiny_model("llama", seed=5)
    other.emosteer_id = "another-llama"
    with pytest.raises(VectorMismatchError, match="model_id tiny-llama vs another-llama"):
        with emosteer.steer(other, random_vector(llama), 1.0):
            pass
    with emosteer.steer(other, random_vector(llama), 1.0, allow_other_model=True):
        logits(other)
    deeper = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(VectorMismatchError, match="num_layers 2 vs 3"):
        with emosteer.steer(deeper, random_vector(llama), 1.0):
            pass


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_add_does_not_overflow(dtype):
    hidden = torch.full((1, 3, 8), 60000.0 if dtype == torch.float16 else 1e38, dtype=dtype)
    delta = torch.full((8,), 60000.0 * 50)
    out = _adder(delta, dtype, last_only=False)(None, (), hidden)
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_steers_like_float32(dtype):
    model = tiny_model("llama")
    vec = random_vector(model)
    with emosteer.steer(model, vec, 1.0):
        ref = logits(model)
    model = model.to(dtype)
    with emosteer.steer(model, vec, 1.0):
        half = logits(model).float()
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, ref, rtol=0.1, atol=0.1)


def test_rows_steer_like_separate_runs(llama):
    joy, anger = random_vector(llama, seed=1), random_vector(llama, seed=2, emotion="anger")
    with emosteer.steering.steer_rows(llama, [joy * 2.0, None, anger * -1.0]):
        batched = logits(llama, IDS[[0, 1, 0]])
    with emosteer.steer(llama, joy, 2.0):
        first = logits(llama, IDS[:1])
    with emosteer.steer(llama, anger, -1.0):
        third = logits(llama, IDS[:1])
    torch.testing.assert_close(batched[0], first[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], logits(llama, IDS[1:2])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[2], third[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(llama), logits(llama))


def test_rows_steer_their_own_positions_like_separate_runs(llama):
    joy, anger = random_vector(llama, seed=1), random_vector(llama, seed=2, emotion="anger")
    with emosteer.steering.steer_rows(llama, [joy * 2.0, anger * -1.0, None],
                                      positions=["generated", "all", "generated"]):
        batched = logits(llama, IDS[[0, 0, 1]])
    with emosteer.steer(llama, joy, 2.0, positions="generated"):
        first = logits(llama, IDS[:1])
    with emosteer.steer(llama, anger, -1.0):
        second = logits(llama, IDS[:1])
    torch.testing.assert_close(batched[0], first[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], second[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[2], logits(llama, IDS[1:2])[0], rtol=1e-5, atol=1e-5)
    # "generated" leaves every position but the newest as it was, and moves the newest
    plain = logits(llama, IDS[:1])[0]
    torch.testing.assert_close(first[0, :-1], plain[:-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first[0, -1], plain[-1], atol=1e-3)
    with pytest.raises(BadInputError, match="one of them per row"):
        with emosteer.steering.steer_rows(llama, [joy], positions=["all", "all"]):
            pass


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("alpha", [1.5, -0.7])
def test_fold_equals_hook_and_restores_the_model_bit_for_bit(llama, alpha):
    vec = random_vector(llama)
    before, base = _weights(llama), logits(llama)
    with emosteer.steer(llama, vec, alpha):
        hooked = logits(llama)
    with emosteer.steer(llama, vec, alpha, mode="fold"):
        assert not any(m._forward_hooks for m in llama.modules())  # no hook: nothing per step
        folded = logits(llama)
        assert llama.model.layers[0].self_attn.o_proj.bias is not None
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)
    after = _weights(llama)
    assert after.keys() == before.keys()  # the created biases are gone again
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert llama.model.layers[0].self_attn.o_proj.bias is None
    assert torch.equal(logits(llama), base)


def test_fold_adds_to_an_existing_bias_and_restores_it_on_error():
    model = tiny_model("qwen2")  # qwen2 has biases on q/k/v only: give o_proj one to fold into
    proj = model.model.layers[0].self_attn.o_proj
    proj.bias = torch.nn.Parameter(torch.randn(proj.out_features))
    vec = random_vector(model)
    before = _weights(model)
    with emosteer.steer(model, vec, 2.0):
        hooked = logits(model)
    with pytest.raises(RuntimeError, match="boom"):
        with emosteer.steer(model, vec, 2.0, mode="fold"):
            torch.testing.assert_close(logits(model), hooked, rtol=1e-5, atol=1e-5)
            raise RuntimeError("boom")
    after = _weights(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_fold_generates_the_same_greedy_text_as_hook(llama):
    vec = random_vector(llama, scale=0.5)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with emosteer.steer(llama, vec, 1.0), torch.no_grad():
        hooked = llama.generate(IDS, **kwargs)
    with emosteer.steer(llama, vec, 1.0, mode="fold"), torch.no_grad():
        folded = llama.generate(IDS, **kwargs)
    assert torch.equal(hooked, folded)


@pytest.mark.parametrize("site, positions", [("residual", "all"), ("attn", "generated")])
def test_fold_refuses_what_a_bias_cannot_do(llama, site, positions):
    before = _weights(llama)
    with pytest.raises(emosteer.EmosteerError, match="fold"):
        with emosteer.steer(llama, random_vector(llama, site=site), 1.0, positions=positions,
                            mode="fold"):
            pass
    assert _weights(llama).keys() == before.keys()


def test_hook_adds_in_place_without_grad_and_out_of_place_with_grad():
    delta = torch.ones(4)
    hidden = torch.zeros(1, 2, 4)
    out = _adder(delta, torch.float32, last_only=True)(None, (), hidden)
    assert out is hidden and torch.equal(hidden[0, 0], torch.zeros(4))
    assert torch.equal(hidden[0, 1], torch.ones(4))
    leaf = torch.zeros(1, 2, 4, requires_grad=True)
    out = _adder(delta, torch.float32, last_only=False)(None, (), leaf * 1.0)
    out.sum().backward()
    assert torch.equal(leaf, torch.zeros(1, 2, 4)) and torch.equal(leaf.grad, torch.ones(1, 2, 4))


def test_fold_blocks_closed_out_of_order_restore_the_model(llama):
    joy, anger = random_vector(llama, seed=1), random_vector(llama, seed=2, emotion="anger")
    before, base = _weights(llama), logits(llama)
    with emosteer.steer(llama, joy, 1.0):
        with emosteer.steer(llama, anger, 0.5):
            both = logits(llama)
    with emosteer.steer(llama, anger, 0.5):
        only_anger = logits(llama)
    first = emosteer.steer(llama, joy, 1.0, mode="fold")
    second = emosteer.steer(llama, anger, 0.5, mode="fold")
    first.__enter__()
    second.__enter__()
    torch.testing.assert_close(logits(llama), both, rtol=1e-5, atol=1e-5)
    first.__exit__(None, None, None)  # closed before the block opened after it
    torch.testing.assert_close(logits(llama), only_anger, rtol=1e-5, atol=1e-5)
    second.__exit__(None, None, None)
    after = _weights(llama)
    assert after.keys() == before.keys()  # no bias parameter left behind
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(logits(llama), base)


def test_hooked_removes_only_its_own_hooks_and_refuses_names_without_a_model(llama):
    from emosteer.hooks import hooked, untuple

    seen = []
    layer = llama.model.layers[0]
    own = layer.register_forward_hook(lambda m, a, o: None)
    before = len(layer._forward_hooks)
    with pytest.raises(RuntimeError, match="inside"):
        with hooked(llama, {"model.layers.0": lambda m, a, o: seen.append(untuple(o).shape)}):
            logits(llama)
            raise RuntimeError("inside")
    assert seen and len(layer._forward_hooks) == before
    own.remove()
    with pytest.raises(TypeError, match="pass the model"):
        with hooked(None, {"model.layers.0": lambda m, a, o: None}):
            pass
