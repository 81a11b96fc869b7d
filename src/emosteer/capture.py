"""Read per-layer activations as masked means over positions (hooks live here and in steer.py)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from emosteer.generation import forward_kwargs
from emosteer.models import Architecture, site_modules


def _hidden(output) -> torch.Tensor:
    """The hidden states of a module output: decoder layers may return a tensor or a tuple."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def reading(model, site: str, weights: dict[str, torch.Tensor],
            arch: Architecture | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Collect sum_pos weights[b, pos] * out_l[b, pos] for every layer l, as (batch, d) float32.

    Set weights["w"] to a (batch, pos) tensor before each forward pass; the hooks read it.
    Nothing is stored per position: one (batch, d) tensor per layer.
    """
    sums: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(module, args, output):
            hidden = _hidden(output)  # (batch, pos, d_model)
            w = weights["w"].to(hidden.device, torch.float32)  # (batch, pos)
            sums[index] = torch.einsum("bp,bpd->bd", w, hidden.float())
        return hook

    handles = []
    try:
        for index, module in enumerate(site_modules(model, site, arch)):
            handles.append(module.register_forward_hook(make_hook(index)))
        yield sums
    finally:
        for handle in handles:
            handle.remove()


def cache_argument(model) -> str | None:
    """The forward() argument taking a KV cache: "cache" (transformers 5.x), "past_key_values"."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def masked_means(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 mask: torch.Tensor, site: str, arch: Architecture | None = None,
                 past=None) -> torch.Tensor:
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
        kwargs[cache_argument(model)] = past
        if "position_ids" in kwargs:  # positions count the prefix too
            kwargs["position_ids"] = kwargs["position_ids"][:, -input_ids.shape[1]:]
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the logits are not needed: skip most of the LM head
    with reading(model, site, weights, arch) as sums, torch.no_grad():
        model(**kwargs, use_cache=past is not None)
    return torch.stack([sums[i] for i in sorted(sums)], dim=1).cpu()  # (batch, layers, d)
