"""The vLLM plugin's steering op and its coefficient buffer, without vLLM (emosteer.vllm.op):
what the op adds and reads, that it compiles with dynamic token counts, and how the runner's
per-step fill writes the buffer in place."""

from __future__ import annotations

import numpy as np
import torch

from emosteer.vllm.op import Coefficients, SteeredOutput, steer

HIDDEN, EMOTIONS = 16, 3


def _inputs(n: int = 5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, HIDDEN, generator=gen).to(dtype)
    coeff = torch.zeros(8, EMOTIONS)
    coeff[1] = torch.tensor([1.0, 0.0, -0.5])
    coeff[3] = torch.tensor([0.0, 2.0, 0.0])
    vectors = torch.randn(EMOTIONS, HIDDEN, generator=gen)
    units = torch.nn.functional.normalize(torch.randn(2, HIDDEN, generator=gen), dim=-1)
    return hidden, coeff, vectors, units, torch.zeros(8, 2)


def test_op_adds_each_rows_weights_and_leaves_unsteered_rows_bit_identical():
    hidden, coeff, vectors, units, readings = _inputs()
    out = steer(hidden, coeff, vectors, units, readings)
    assert torch.allclose(out[1], hidden[1] + vectors[0] - 0.5 * vectors[2], atol=1e-6)
    assert torch.allclose(out[3], hidden[3] + 2 * vectors[1], atol=1e-6)
    for row in (0, 2, 4):
        assert torch.equal(out[row], hidden[row])
    # the meter's projections, of the state before the addition; rows past the batch untouched
    assert torch.allclose(readings[:5], hidden @ units.T, atol=1e-6)
    assert torch.equal(readings[5:], torch.zeros(3, 2))


def test_op_adds_in_float32_and_clamps_float16():
    hidden, coeff, vectors, units, readings = _inputs(dtype=torch.float16)
    hidden[1] = 65000.0
    out = steer(hidden, coeff * 1e4, vectors.abs(), units, readings)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert out[1].max().item() == torch.finfo(torch.float16).max


def test_a_layer_without_meter_reads_nothing():
    hidden, coeff, vectors, _, _ = _inputs()
    out = steer(hidden, coeff, vectors, torch.zeros(0, HIDDEN), torch.zeros(0, 0))
    assert torch.allclose(out[3], hidden[3] + 2 * vectors[1], atol=1e-6)


class _Projection(torch.nn.Module):
    """Like vLLM's RowParallelLinear: returns (out, bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)

    def forward(self, x):
        return self.linear(x), None


def test_wrapped_projection_compiles_with_dynamic_token_counts_and_reads_the_buffer_live():
    torch.manual_seed(0)
    _, coeff, vectors, units, readings = _inputs()
    wrapped = SteeredOutput(_Projection(), coeff, vectors, units, readings).requires_grad_(False)
    compiled = torch.compile(wrapped, backend="aot_eager", dynamic=True, fullgraph=True)
    for n in (5, 3, 7):  # one graph, several token counts
        x = torch.randn(n, HIDDEN)
        eager, _ = wrapped(x)
        got, bias = compiled(x)
        assert bias is None and torch.allclose(got, eager, atol=1e-6)
        assert torch.allclose(readings[:n], wrapped.inner(x)[0] @ units.T, atol=1e-5)
    # the buffer is read at run time, not baked in: writing it in place changes the output
    x = torch.randn(4, HIDDEN)
    before, _ = compiled(x)
    coeff[0] = torch.tensor([0.0, 0.0, 3.0])
    after, _ = compiled(x)
    assert torch.allclose(after[0] - before[0], 3 * vectors[2], atol=1e-5)
    assert torch.equal(after[1:], before[1:])


def test_fill_writes_one_block_per_request_in_place():
    coeff = Coefficients(16, EMOTIONS, torch.device("cpu"))
    address = coeff.rows.data_ptr()
    joy, mix = np.array([1.0, 0, 0], np.float32), np.array([0, 0.5, -1], np.float32)
    coeff.fill([joy, None, mix], np.array([0, 4, 6, 9]))  # a prefill of 4, 2 and 3 tokens
    rows = coeff.rows.numpy()
    assert (rows[0:4] == joy).all() and (rows[4:6] == 0).all() and (rows[6:9] == mix).all()
    assert (rows[9:] == 0).all()
    coeff.fill([mix, joy], np.array([0, 1, 2]))  # decode: one token each, order changed
    assert (rows[0] == mix).all() and (rows[1] == joy).all() and (rows[2:] == 0).all()
    coeff.fill([None, None], np.array([0, 1, 2]))  # nothing steered: the old rows are cleared
    assert (rows == 0).all() and coeff.dirty == 0
    assert coeff.rows.data_ptr() == address  # never reallocated


def test_fill_writes_nothing_while_nothing_is_steered():
    coeff = Coefficients(8, EMOTIONS, torch.device("cpu"))
    coeff.rows.fill_(7.0)  # would show any write
    coeff.fill([None, None], np.array([0, 3, 4]))
    assert (coeff.rows.numpy() == 7.0).all()
