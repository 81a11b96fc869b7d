"""The steering op: emotion steering inside vLLM's compiled graph (torch.compile, CUDA graphs).

Hooks and compilation do not mix: a compiled graph is traced once, so a hook registered per
step never runs in it. Instead, each steered layer's attention output projection is wrapped
once, at load time, in a module whose forward calls one custom op, `emosteer::steer`,
registered with torch.library (a fake implementation gives compilation its output's shape):

    readings[:n] = hidden @ units.T           # the meter, read before the steering adds
    hidden + coeff[:n] @ vectors              # float32 accumulate, clamped in float16

Every input has a static shape and a fixed address: `vectors` (emotions, hidden) and `units`
(the meter's directions at that layer, possibly none) are resident on the device; `coeff`
(max_num_batched_tokens, emotions) is one buffer shared by every layer, which the runner fills
in place before each step with each token's weights (zeros for unsteered tokens, and for the
padding after the last request); `readings` (max_num_batched_tokens, meter emotions) is
written in place and read by the runner after the step. No branch on data, no host
synchronisation and no allocation per step: a captured CUDA graph replays it as is.

An unsteered token adds zeros (in float32: its state is unchanged, bit for bit).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from emosteer.hooks import retuple, untuple
from emosteer.steering import added_in_float32

__all__ = ["Coefficients", "SteeredOutput", "steer"]


# torch.library's low-level registration: a schema, one implementation for every device, a
# fake. `torch.library.custom_op` would do the same with a Python wrapper that costs about
# 45 us more per call on CPU (30 calls a step: 4% of a 135M model's decode step).
_LIBRARY = torch.library.Library("emosteer", "DEF")
_LIBRARY.define("steer(Tensor hidden, Tensor coeff, Tensor vectors, Tensor units, "
                "Tensor(a!) readings) -> Tensor")


def _steer(hidden: Tensor, coeff: Tensor, vectors: Tensor, units: Tensor,
           readings: Tensor) -> Tensor:
    n = hidden.shape[0]
    if units.shape[0]:  # a shape, fixed per layer: the meter reads this layer
        torch.mm(hidden.float(), units.T, out=readings[:n])
    if hidden.dtype == torch.float32:  # one kernel: hidden + coeff @ vectors
        return torch.addmm(hidden, coeff[:n], vectors)
    return added_in_float32(hidden, coeff[:n] @ vectors)


def _steer_fake(hidden: Tensor, coeff: Tensor, vectors: Tensor, units: Tensor,
                readings: Tensor) -> Tensor:
    return torch.empty_like(hidden)


_LIBRARY.impl("steer", _steer, "CompositeExplicitAutograd")
torch.library.register_fake("emosteer::steer", _steer_fake, lib=_LIBRARY)

steer = torch.ops.emosteer.steer
"""steer(hidden, coeff, vectors, units, readings): hidden + coeff[:n] @ vectors for hidden's n
token rows (float32 accumulate, float16 clamped); readings[:n] = the rows projected on `units`
(taken before the addition; nothing when units has no rows). See the module docstring."""


class SteeredOutput(torch.nn.Module):
    """An attention output projection followed by `emosteer::steer` (vLLM's `(out, bias)`
    tuple, or a tensor, is returned in the same structure).

    Example:
        layer.self_attn.o_proj = SteeredOutput(layer.self_attn.o_proj, coeff.rows, stack[i],
                                               units, readings)
    """

    def __init__(self, inner: torch.nn.Module, coeff: Tensor, vectors: Tensor, units: Tensor,
                 readings: Tensor) -> None:
        super().__init__()
        self.inner = inner
        # buffers, not plain attributes: compilation takes them as inputs at a fixed address
        # instead of constants folded into the graph
        self.register_buffer("coeff", coeff, persistent=False)
        self.register_buffer("vectors", vectors, persistent=False)
        self.register_buffer("units", units, persistent=False)
        self.register_buffer("readings", readings, persistent=False)

    def forward(self, *args, **kwargs):
        output = self.inner(*args, **kwargs)
        hidden = steer(untuple(output), self.coeff, self.vectors, self.units, self.readings)
        return retuple(output, hidden)


class Coefficients:
    """The per-token coefficient buffer and the host work that fills it each step.

    Each request's weights are looked up once (cached while it runs); each step writes one
    block of rows per request (np.repeat over the token layout), then copies the rows in use
    into the device buffer in place. Rows past the batch stay zero. A step in which nothing
    is steered, after one in which nothing was, writes nothing.

    Example:
        coeff = Coefficients(8192, 3, device)
        coeff.fill([np.array([1.0, 0, 0]), None], np.array([0, 5, 6]))  # 5 rows of a, 1 of b
    """

    def __init__(self, max_tokens: int, emotions: int, device: torch.device) -> None:
        self.rows = torch.zeros(max_tokens, emotions, dtype=torch.float32, device=device)
        pin = device.type == "cuda"
        self.staging = torch.zeros(max_tokens, emotions, dtype=torch.float32, pin_memory=pin)
        self.dirty = 0  # device rows [0, dirty) may be non-zero; every row after is zero

    def fill(self, weights: list[np.ndarray | None], starts: np.ndarray) -> None:
        """Set rows [starts[i], starts[i + 1]) to weights[i] (zeros where None) and every row
        after the batch to zero (the padding a forward may read included).

        Args:
            weights: per request of the batch, in order, its weights (emotions,) or None.
            starts: (requests + 1,) token offsets of the requests in the flattened batch.
        """
        steered = [i for i, w in enumerate(weights) if w is not None]
        if not steered and not self.dirty:
            return
        used = int(starts[len(weights)])
        block = np.zeros((len(weights), self.rows.shape[1]), dtype=np.float32)
        for i in steered:
            block[i] = weights[i]
        stage = self.staging.numpy()
        stage[:used] = np.repeat(block, np.diff(starts[:len(weights) + 1]), axis=0)
        end = max(used, self.dirty)  # rows from `dirty` on are zero already
        stage[used:end] = 0.0
        self.rows[:end].copy_(self.staging[:end], non_blocking=True)
        self.dirty = used if steered else 0
