"""Read per-layer activations as masked means over positions (the hooks come from hooks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from emosteer.generation import forward_kwargs
from emosteer.hooks import hooked, untuple
from emosteer.models import Architecture, Site, cache_arg, forward_params, site_modules

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@contextmanager
def reading(model: PreTrainedModel, site: Site, weights: dict[str, torch.Tensor],
            arch: Architecture | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Collect sum_pos weights[b, pos] * out_l[b, pos] for every layer l, as (batch, d) float32.

    Set weights["w"] to a (batch, pos) tensor before each forward pass; the hooks read it.
    Nothing is stored per position: one (batch, d) tensor per layer.

    Args:
        model: the model to read.
        site: "attn" (attention output) or "residual" (decoder layer output).
        weights: {"w": (batch, pos) weights}, set before each forward pass.
        arch: overrides the architecture table.

    Example:
        with reading(model, "attn", {"w": mask / mask.sum(-1, keepdim=True)}) as sums:
            model(ids)
    """
    sums: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(module, args, output):
            hidden = untuple(output)  # (batch, pos, d_model)
            w = weights["w"].to(hidden.device, torch.float32)  # (batch, pos)
            sums[index] = torch.einsum("bp,bpd->bd", w, hidden.float())
        return hook

    modules = site_modules(model, site, arch)
    with hooked(model, {module: make_hook(i) for i, module in enumerate(modules)}):
        yield sums


def masked_means(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 mask: torch.Tensor, site: Site, arch: Architecture | None = None,
                 past: Any = None) -> torch.Tensor:
    """Per-row mean of each layer's output over positions where mask is 1: (batch, layers, d).

    Rows whose mask is empty come back as zeros; padding never enters a mean. past: the KV
    cache of a prefix that every row shares (read before, not part of the means); then
    attention_mask covers prefix + input_ids, and mask covers input_ids only.
    """
    mask = mask.float()  # (batch, pos)
    count = mask.sum(-1, keepdim=True).clamp(min=1.0)
    weights = {"w": mask / count}
    kwargs = forward_kwargs(model, input_ids, attention_mask)
    if past is not None:
        kwargs[cache_arg(model)] = past
        if "position_ids" in kwargs:  # positions count the prefix too
            kwargs["position_ids"] = kwargs["position_ids"][:, -input_ids.shape[1]:]
    if "logits_to_keep" in forward_params(model):
        kwargs["logits_to_keep"] = 1  # the logits are not needed: skip most of the LM head
    with reading(model, site, weights, arch) as sums, torch.no_grad():
        model(**kwargs, use_cache=past is not None)
    return torch.stack([sums[i] for i in sorted(sums)], dim=1).cpu()  # (batch, layers, d)
