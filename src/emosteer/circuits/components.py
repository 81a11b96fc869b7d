"""The components that write into the residual stream: attention heads and MLP neurons.

Each decoder layer writes through two linear projections: the attention output projection,
whose input is the heads' outputs side by side (heads x head_dim), and the MLP down
projection, whose input holds one activation per neuron. Both are linear, so what they write
along a direction d splits exactly into one term per head or neuron, plus the bias:

    d . (W x + b) = sum_h (W_h^T d) . x_h + d . b

Reading and editing happen on the projections' inputs (forward pre-hooks), so one hook per
projection sees every head or neuron of a layer at once. Gemma2/3 normalise both sublayer
outputs before the residual add: there the split is exact at the projection's output, and an
approximation of what reaches the stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from emosteer.errors import BadInputError
from emosteer.hooks import hooked, untuple
from emosteer.models import Architecture, architecture_of, decoder_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

KINDS = ("head", "neuron")


@dataclass(frozen=True)
class Parts:
    """Per layer: the attention output projection, the MLP down projection, and the head split."""

    attn_out: list[torch.nn.Module]
    mlp_down: list[torch.nn.Module]
    n_heads: int
    head_dim: int
    n_neurons: int

    @property
    def n_layers(self) -> int:
        return len(self.attn_out)

    def modules(self, kind: str) -> list[torch.nn.Module]:
        return self.attn_out if kind == "head" else self.mlp_down

    def size(self, kind: str) -> int:
        """Components per layer of a kind: heads, or neurons."""
        return self.n_heads if kind == "head" else self.n_neurons


def parts(model: PreTrainedModel, arch: Architecture | None = None) -> Parts:
    spec = architecture_of(model, arch)
    layers = decoder_layers(model, spec)
    attn = [layer.get_submodule(spec.attn_out) for layer in layers]
    down = [layer.get_submodule(spec.mlp_down) for layer in layers]
    if not all(_is_projection(m) for m in attn + down):
        kinds = sorted({type(m).__name__ for m in attn + down if not _is_projection(m)})
        raise BadInputError(
            f"circuits need dense linear projections; this model has {', '.join(kinds)} "
            "(a mixture of experts has one fused module for all experts): neurons of MoE "
            "models are not supported yet")
    n_heads = int(getattr(model.config, spec.heads))
    width = in_features(attn[0])
    if width % n_heads:
        raise BadInputError(f"attention output input width {width} is not divisible by "
                            f"{n_heads} heads: check Architecture.heads")
    return Parts(attn, down, n_heads, width // n_heads, in_features(down[0]))


def _is_projection(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def in_features(module: torch.nn.Module) -> int:
    return out_matrix(module).shape[1]


def out_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The projection's matrix as (out, in); GPT-2's Conv1D stores it transposed."""
    weight = cast(torch.Tensor, module.weight)
    return weight.T if type(module).__name__ == "Conv1D" else weight


def read_weights(module: torch.nn.Module, direction: torch.Tensor) -> torch.Tensor:
    """W^T d: how much one unit of each input feature writes along d, (in,) float32."""
    matrix = out_matrix(module).detach()
    return matrix.float().T @ direction.to(matrix.device).float()


def contributions(module: torch.nn.Module, inputs: torch.Tensor, direction: torch.Tensor,
                  group: int = 1) -> torch.Tensor:
    """Each component's share of d . output: inputs (..., in) -> (..., in / group).

    group=1 gives one term per neuron; group=head_dim gives one term per head. Adding the
    bias term d . b gives exactly d . module(inputs).
    """
    terms = inputs.float() * read_weights(module, direction).to(inputs.device)
    return terms.unflatten(-1, (-1, group)).sum(-1)


@contextmanager
def reading_last(model: PreTrainedModel, p: Parts, arch: Architecture | None = None
                 ) -> Iterator[dict[str, list]]:
    """Collect, per forward pass, the last position's residual stream and projection inputs.

    Yields {"residual": [...], "head": [...], "neuron": [...]}: each forward pass appends one
    (batch, layers, width) float32 tensor per key (width d_model, heads x head_dim, neurons).
    """
    seen: dict[str, dict[int, torch.Tensor]] = {"residual": {}, "head": {}, "neuron": {}}
    out: dict[str, list] = {key: [] for key in seen}

    def store(key: str, index: int, hidden: torch.Tensor) -> None:
        seen[key][index] = hidden[:, -1].detach().to("cpu", torch.float32, copy=True)
        if all(len(seen[k]) == p.n_layers for k in seen):  # the pass is complete
            for k in seen:
                out[k].append(torch.stack([seen[k][i] for i in range(p.n_layers)], dim=1))
                seen[k].clear()

    def residual_hook(index):
        def hook(module, args, output):
            store("residual", index, untuple(output))
        return hook

    def input_hook(key, index):
        def hook(module, args):
            store(key, index, args[0])
        return hook

    layers = decoder_layers(model, arch)
    inputs = [(p.attn_out[i], input_hook("head", i)) for i in range(p.n_layers)] + [
        (p.mlp_down[i], input_hook("neuron", i)) for i in range(p.n_layers)]
    with hooked(model, {layers[i]: residual_hook(i) for i in range(p.n_layers)}), \
            hooked(model, inputs, pre=True):
        yield out


@dataclass(frozen=True)
class Edit:
    """x -> x * keep + add on one projection's input features: (rows or 1, in) each."""

    keep: torch.Tensor
    add: torch.Tensor


@contextmanager
def editing(p: Parts, edits: Mapping[tuple[str, int], Edit], last_only: bool = False
            ) -> Iterator[None]:
    """Edit projection inputs inside the block: edits[(kind, layer)] per (row of the batch).

    last_only edits only the newest position of each forward pass (with a KV cache, the
    generated token); otherwise every position. The model is untouched after the block,
    errors included.
    """
    def make_hook(edit: Edit):
        cache: dict = {}

        def hook(module, args):
            x = args[0]  # (batch, pos, in)
            key = (x.dtype, x.device)
            if key not in cache:  # cast once per dtype and device, not per step
                cache[key] = (edit.keep.to(x.device, x.dtype)[:, None],
                              edit.add.to(x.device, x.dtype)[:, None])
            keep, add = cache[key]
            if last_only:
                x = torch.cat([x[:, :-1], x[:, -1:] * keep + add], dim=1)
            else:
                x = x * keep + add
            return (x, *args[1:])
        return hook

    hooks = [(p.modules(kind)[layer], make_hook(edit)) for (kind, layer), edit in edits.items()]
    with hooked(None, hooks, pre=True):
        yield


def unit_mask(p: Parts, kind: str, indices: torch.Tensor) -> torch.Tensor:
    """A (in,) 0/1 mask over a projection's input features covering the given components."""
    group = p.head_dim if kind == "head" else 1
    mask = torch.zeros(p.size(kind), dtype=torch.float32)
    mask[indices.long()] = 1.0
    return mask.repeat_interleave(group)
