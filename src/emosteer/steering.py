"""Add alpha * EV_l at the site of layer l where the vector was read, inside a context manager."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from emosteer.errors import BadAlphaError, BadInputError
from emosteer.models import Architecture, site_modules
from emosteer.vectors import EmotionVector

MAX_ALPHA = 100.0  # the paper sweeps -1..4; beyond 100x every model emits noise


def check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise BadAlphaError(f"alpha {alpha!r} is not a number: use e.g. 1.0") from None
    if not math.isfinite(value):
        raise BadAlphaError(f"alpha is {value}: use a finite number such as 1.0 or -1.0")
    if abs(value) > MAX_ALPHA:
        raise BadAlphaError(f"alpha {value:g} is outside [-{MAX_ALPHA:g}, {MAX_ALPHA:g}]: the "
                            "paper's range is -1 to 4; 4 already saturates")
    return value


@contextmanager
def steer(model: torch.nn.Module, vector: EmotionVector, alpha: float = 1.0,
          layers: str | Iterable[int] = "all", positions: str = "all",
          arch: Architecture | None = None, allow_other_model: bool = False,
          mode: str = "hook") -> Iterator[None]:
    """Steer every forward pass inside the block; the model is restored on exit, errors included.

    layers: "all" or the layer indices to steer. positions: "all" adds at every position;
    "generated" adds only at the newest position of each forward step (the authors' apply
    script), so the prompt is read unsteered and every generated token is steered. With
    "generated", generate with the KV cache on (the default), or each re-read prompt position
    would go unsteered.

    mode: "hook" adds through a forward hook; "fold" writes alpha * EV_l into the bias of the
    attention output projection instead (created if the layer has none), so steering costs
    nothing per step. fold computes the same outputs as hook (up to float rounding) and
    needs site "attn" and positions "all"; the weights are restored bit for bit on exit.
    """
    alpha = check_alpha(alpha)
    if positions not in ("all", "generated"):
        raise BadInputError(f"positions={positions!r}: use 'all' or 'generated'")
    if mode not in ("hook", "fold"):
        raise BadInputError(f"mode={mode!r}: use 'hook' or 'fold'")
    if mode == "fold" and (vector.site != "attn" or positions != "all"):
        raise BadInputError(
            f"mode='fold' needs site 'attn' and positions 'all' (got site {vector.site!r}, "
            f"positions {positions!r}): a bias adds at every position of one sublayer; use "
            "mode='hook'")
    vector.check_model(model, allow_other_model, arch)
    modules = site_modules(model, vector.site, arch)
    chosen = vector.layers if layers == "all" else sorted(set(layers))
    missing = [layer for layer in chosen if layer not in vector.directions]
    if missing:
        raise BadInputError(f"layers {missing} are not in vector {vector.emotion!r}")
    param = next(model.parameters())
    deltas = _site_deltas(vector, chosen)
    if mode == "fold":
        with _folded(modules, {layer: alpha * deltas[layer] for layer in chosen}
                     if alpha != 0.0 else {}):
            yield
        return
    handles = []
    try:
        if alpha != 0.0:
            for layer in chosen:
                device = _device_of(modules[layer], param.device)
                delta = (alpha * deltas[layer]).to(device)  # float32, (d,)
                hook = _adder(delta, param.dtype, positions == "generated")
                handles.append(modules[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _folded(modules: list, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add deltas[l] to the bias of modules[l] (a Linear), creating it if absent; restore on exit.

    The original bias tensors are put back as they were (same objects), so the model after
    the block is bit-identical to the model before it.
    """
    for layer in deltas:
        module = modules[layer]
        if not isinstance(getattr(module, "weight", None), torch.Tensor) or \
                not hasattr(module, "bias") or module.weight.dim() != 2:
            raise BadInputError(f"mode='fold' needs a Linear output projection; layer {layer} "
                                f"has {type(module).__name__}: use mode='hook'")
    saved: list[tuple[torch.nn.Module, torch.Tensor | None]] = []
    try:
        with torch.no_grad():
            for layer, delta in deltas.items():
                module = modules[layer]
                old = module.bias
                saved.append((module, old))
                w = module.weight
                delta = delta.to(w.device, torch.float32)
                new = delta if old is None else old.float() + delta
                module.bias = torch.nn.Parameter(new.to(w.dtype), requires_grad=False)
        yield
    finally:
        for module, old in reversed(saved):
            module.bias = old


def _device_of(module: torch.nn.Module, default: torch.device) -> torch.device:
    """The device of a module's weights (layers may sit on different GPUs under device_map)."""
    weight = next(module.parameters(), None)
    return weight.device if weight is not None else default


def _site_deltas(vector: EmotionVector, layers: list[int]) -> dict[int, torch.Tensor]:
    """What to add at each chosen layer so that the shift there is vector[l].

    At the attention output each layer's addition stays in that sublayer: add vector[l]. The
    residual stream carries every earlier addition forward, so adding vector[l] at every layer
    would pile up (SmolLM2 collapses at alpha 0.5, notes.md); add the increment
    vector[l] - vector[previous chosen layer] instead, so the stream at layer l is shifted by
    about vector[l], as it was when read.
    """
    if vector.site != "residual":
        return {layer: vector.directions[layer] for layer in layers}
    deltas, previous = {}, None
    for layer in layers:
        current = vector.directions[layer]
        deltas[layer] = current if previous is None else current - previous
        previous = current
    return deltas


def _adder(delta: torch.Tensor, dtype: torch.dtype, last_only: bool):
    """A forward hook adding delta to a module's hidden-state output."""
    if dtype == torch.float16:  # add in float32 and clamp, so the sum cannot overflow to inf
        limit = torch.finfo(torch.float16).max

        def add(hidden: torch.Tensor) -> torch.Tensor:
            return (hidden.float() + delta).clamp(-limit, limit).to(hidden.dtype)

        def add_(hidden: torch.Tensor) -> None:
            hidden.copy_(add(hidden))
    else:
        cast = delta.to(dtype)  # cast once, not per step

        def add(hidden: torch.Tensor) -> torch.Tensor:
            return hidden + cast

        def add_(hidden: torch.Tensor) -> None:
            hidden.add_(cast)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (batch, pos, d_model)
        if not (hidden.requires_grad and torch.is_grad_enabled()):
            add_(hidden[:, -1:] if last_only else hidden)  # one in-place add, no new tensor
            return output
        if last_only:  # autograd: keep the module's output intact
            hidden = torch.cat([hidden[:, :-1], add(hidden[:, -1:])], dim=1)
        else:
            hidden = add(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


@contextmanager
def steer_rows(model: torch.nn.Module, rows: list[EmotionVector | None],
               arch: Architecture | None = None, allow_other_model: bool = False
               ) -> Iterator[None]:
    """Steer each row of a batch by its own vector (alpha already applied; None = unsteered).

    Row i of every forward pass inside the block gets rows[i] added at the vectors' site, so
    requests with different emotions share one forward pass. All vectors must share a site.
    """
    steered = [v for v in rows if v is not None]
    if not steered:
        yield
        return
    sites = {v.site for v in steered}
    if len(sites) > 1:
        raise BadInputError(f"rows mix vector sites {sorted(sites)}: use one site per batch")
    for vector in steered:
        vector.check_model(model, allow_other_model, arch)
    modules = site_modules(model, sites.pop(), arch)
    param = next(model.parameters())
    d = int(model.config.hidden_size)
    layers = sorted({layer for v in steered for layer in v.layers})
    zero = torch.zeros(d)
    per_row = [_site_deltas(v, v.layers) if v is not None else {} for v in rows]
    handles = []
    try:
        for layer in layers:
            delta = torch.stack([row.get(layer, zero) for row in per_row])[:, None, :]
            # (batch, 1, d_model)
            hook = _adder(delta.to(_device_of(modules[layer], param.device)), param.dtype,
                          last_only=False)
            handles.append(modules[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
