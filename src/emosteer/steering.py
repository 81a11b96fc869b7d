"""Add alpha * EV_l at the site of layer l where the vector was read, inside a context manager."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch

from emosteer.bounds import MAX_ALPHA, check_alpha, scaled
from emosteer.dose import check_dose
from emosteer.errors import BadInputError
from emosteer.hooks import hooked, retuple, untuple
from emosteer.models import Architecture, site_modules
from emosteer.vectors import EmotionVector, increments

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["MAX_ALPHA", "Mode", "Positions", "check_alpha", "steer", "steer_rows"]

Positions = Literal["all", "generated"]  # steer every position, or only the newest one
Mode = Literal["hook", "fold"]  # a forward hook, or alpha * EV folded into a bias


@contextmanager
def steer(model: PreTrainedModel, vector: EmotionVector, alpha: float = 1.0,
          layers: Literal["all"] | Iterable[int] = "all", positions: Positions = "all",
          arch: Architecture | None = None, allow_other_model: bool = False,
          mode: Mode = "hook", preserve_norm: bool = False,
          clamp_dose: bool = False) -> Iterator[None]:
    """Steer every forward pass inside the block; the model is restored on exit, errors included.

    Args:
        model: a model of the architecture table (or pass `arch`).
        vector: the emotion vector; it must have been made for this model.
        alpha: strength, signed and continuous (0 = unsteered, bit for bit; |alpha| <= 100).
        layers: "all" or the layer indices to steer.
        positions: "all" adds at every position; "generated" adds only at the newest
            position of each forward step (the authors' apply script), so the prompt is read
            unsteered and every generated token is steered (generate with the KV cache on,
            the default, or each re-read prompt position would go unsteered).
        arch: overrides the architecture table entry.
        allow_other_model: accept a vector made for another model id of the same shape.
        mode: "hook" adds through a forward hook; "fold" writes alpha * EV_l into the bias of
            the attention output projection instead (created if the layer has none), so
            steering costs nothing per step. fold computes the same outputs as hook (up to
            float rounding), needs site "attn" and positions "all", and restores the weights
            bit for bit on exit.
        preserve_norm: rescale each steered position to the norm it had before the addition
            (norm-preserving steering: the vector turns the state, the length stays); hook
            mode only.
        clamp_dose: a vector that records where the model's text breaks (metadata max_dose,
            `emosteer.dose`) refuses an alpha past it; clamp_dose lowers |alpha| to it instead.

    Example:
        with emosteer.steer(model, joy, alpha=1.5):
            print(emosteer.generate_text(model, tok, ["How did the exam go?"]))
    """
    alpha = check_dose(vector, check_alpha(alpha), clamp_dose)
    if positions not in ("all", "generated"):
        raise BadInputError(f"positions={positions!r}: use 'all' or 'generated'")
    if mode not in ("hook", "fold"):
        raise BadInputError(f"mode={mode!r}: use 'hook' or 'fold'")
    if mode == "fold" and preserve_norm:
        raise BadInputError("preserve_norm rescales each position after the addition: use "
                            "mode='hook'")
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
    scaled(deltas, alpha, f"vector {vector.emotion!r}")  # alpha * EV beyond float32: refused
    if mode == "fold":
        with _folded(modules, {layer: alpha * deltas[layer] for layer in chosen}
                     if alpha != 0.0 else {}):
            yield
        return
    hooks = {}
    if alpha != 0.0:
        for layer in chosen:
            delta = (alpha * deltas[layer]).to(_device_of(modules[layer], param.device))  # (d,)
            hooks[modules[layer]] = _adder(delta, param.dtype, positions == "generated",
                                           preserve_norm)
    with hooked(model, hooks):
        yield


@contextmanager
def _folded(modules: list, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add deltas[l] to the bias of modules[l] (a Linear), creating it if absent; restore on exit.

    Each module remembers its original bias and the deltas of the fold blocks now open on it,
    and its bias is always original + their sum. Blocks may close in any order (by hand, out
    of order, by an exception): when the last one closes, the original bias object is put
    back, so the model is bit-identical to the model before.
    """
    for layer in deltas:
        module = modules[layer]
        if not isinstance(getattr(module, "weight", None), torch.Tensor) or \
                not hasattr(module, "bias") or module.weight.dim() != 2:
            raise BadInputError(f"mode='fold' needs a Linear output projection; layer {layer} "
                                f"has {type(module).__name__}: use mode='hook'")
    token = object()  # this block's key in each module's open folds
    touched: list[torch.nn.Module] = []
    try:
        for layer, delta in deltas.items():
            module = modules[layer]
            folds = module.__dict__.setdefault(_FOLDS, {"original": module.bias, "open": {}})
            folds["open"][token] = delta.to(module.weight.device, torch.float32)
            touched.append(module)
            _refold(module)
        yield
    finally:
        for module in reversed(touched):
            module.__dict__[_FOLDS]["open"].pop(token, None)
            _refold(module)


_FOLDS = "_emosteer_folds"  # module attribute: {"original": bias or None, "open": {token: delta}}


def _refold(module: torch.nn.Module) -> None:
    """Set the module's bias to its original plus the deltas of the fold blocks still open."""
    folds = module.__dict__[_FOLDS]
    original = folds["original"]
    if not folds["open"]:
        module.bias = original
        del module.__dict__[_FOLDS]
        return
    total = sum(folds["open"].values())
    new = total if original is None else original.detach().float() + total
    module.bias = torch.nn.Parameter(new.to(module.weight.dtype), requires_grad=False)


def _device_of(module: torch.nn.Module, default: torch.device) -> torch.device:
    """The device of a module's weights (layers may sit on different GPUs under device_map)."""
    weight = next(module.parameters(), None)
    return weight.device if weight is not None else default


def _site_deltas(vector: EmotionVector, layers: list[int]) -> dict[int, torch.Tensor]:
    """What to add at each chosen layer so that the shift there is vector[l].

    At the attention output each layer's addition stays in that sublayer: add vector[l]. The
    residual stream carries every earlier addition forward, so adding vector[l] at every layer
    would pile up (SmolLM2 collapses at alpha 0.5, docs/method-notes.md); add the increment
    vector[l] - vector[previous chosen layer] instead, so the stream at layer l is shifted by
    about vector[l], as it was when read.
    """
    chosen = {layer: vector.directions[layer] for layer in layers}
    return increments(chosen) if vector.site == "residual" else chosen


def added_in_float32(hidden: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """hidden + delta, added in float32 and cast back to hidden's dtype; a float16 sum is
    clamped to float16's range first, so it cannot overflow to inf. Both engines add this way
    (`steer` in float16, the vLLM worker on its steered rows in every dtype).

    Example:
        added_in_float32(torch.full((1,), 65000.0, dtype=torch.float16), torch.ones(1) * 1e4)
        # tensor([65504.], dtype=torch.float16): the largest float16, not inf
    """
    total = hidden.float() + delta
    if hidden.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max
        total = total.clamp(-limit, limit)
    return total.to(hidden.dtype)


def _adder(delta: torch.Tensor, dtype: torch.dtype, last_only: bool,
           keep_norm: torch.Tensor | bool = False):
    """A forward hook adding delta to a module's hidden-state output.

    keep_norm (True, or a (batch, 1, 1) bool mask of rows) rescales each steered position
    back to the norm it had before the addition: the direction turns, the length stays
    (vllm-lens's norm_match). Rows outside the mask are multiplied by exactly 1.
    """
    if dtype == torch.float16:  # add in float32 and clamp, so the sum cannot overflow to inf

        def add(hidden: torch.Tensor) -> torch.Tensor:
            return added_in_float32(hidden, delta)

        def add_(hidden: torch.Tensor) -> None:
            hidden.copy_(add(hidden))
    else:
        cast = delta.to(dtype)  # cast once, not per step

        def add(hidden: torch.Tensor) -> torch.Tensor:
            return hidden + cast

        def add_(hidden: torch.Tensor) -> None:
            hidden.add_(cast)

    def norm(hidden: torch.Tensor) -> torch.Tensor | None:
        """Each position's norm before the addition, when it is to be kept."""
        return hidden.float().norm(dim=-1, keepdim=True) if keep_norm is not False else None

    def kept(new: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
        """`new` rescaled to the norms `before` where keep_norm holds (x exactly 1 elsewhere)."""
        if before is None:
            return new
        ratio = before / new.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if isinstance(keep_norm, torch.Tensor):
            ratio = torch.where(keep_norm.to(ratio.device), ratio, torch.ones_like(ratio))
        return new.float() * ratio

    def hook(module, args, output):
        hidden = untuple(output)  # (batch, pos, d_model)
        if not (hidden.requires_grad and torch.is_grad_enabled()):
            target = hidden[:, -1:] if last_only else hidden
            before = norm(target)
            add_(target)  # one in-place add, no new tensor
            if before is not None:
                target.copy_(kept(target, before).to(target.dtype))
            return output
        if last_only:  # autograd: keep the module's output intact
            new = kept(add(hidden[:, -1:]), norm(hidden[:, -1:])).to(hidden.dtype)
            hidden = torch.cat([hidden[:, :-1], new], dim=1)
        else:
            hidden = kept(add(hidden), norm(hidden)).to(hidden.dtype)
        return retuple(output, hidden)

    return hook


@contextmanager
def steer_rows(model: PreTrainedModel, rows: list[EmotionVector | None],
               arch: Architecture | None = None, allow_other_model: bool = False,
               positions: Positions | Sequence[Positions] = "all",
               preserve_norm: bool | Sequence[bool] = False) -> Iterator[None]:
    """Steer each row of a batch by its own vector (alpha already applied; None = unsteered).

    Row i of every forward pass inside the block gets rows[i] added at the vectors' site, so
    requests with different emotions share one forward pass. All vectors must share a site.

    Args:
        model: the model whose forward passes are steered.
        rows: one vector (or None) per row of every batch run inside the block.
        arch: overrides the architecture table entry.
        allow_other_model: accept vectors made for another model id of the same shape.
        positions: "all" or "generated" (as in `steer`), for every row or one per row.
        preserve_norm: keep each steered position's norm (as in `steer`), for every row or
            one per row.

    Example:
        with steer_rows(model, [joy * 1.5, None, anger]):
            model.generate(**three_prompts)
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
    where = [positions] * len(rows) if isinstance(positions, str) else list(positions)
    if len(where) != len(rows) or any(w not in ("all", "generated") for w in where):
        raise BadInputError(f"positions={positions!r}: use 'all' or 'generated', or one of "
                            f"them per row ({len(rows)} rows)")
    modules = site_modules(model, sites.pop(), arch)
    param = next(model.parameters())
    d = int(model.config.hidden_size)
    layers = sorted({layer for v in steered for layer in v.layers})
    zero = torch.zeros(d)
    per_row = [_site_deltas(v, v.layers) if v is not None else {} for v in rows]
    newest = torch.tensor([w == "generated" for w in where])[:, None, None]  # (batch, 1, 1)
    keep = [preserve_norm] * len(rows) if isinstance(preserve_norm, bool) else \
        list(preserve_norm)
    if len(keep) != len(rows):
        raise BadInputError(f"preserve_norm has {len(keep)} values for {len(rows)} rows")
    kept: torch.Tensor | bool = torch.tensor(keep)[:, None, None] if any(keep) else False
    hooks = []  # (module, hook) pairs: a layer gets one adder per kind of position it steers
    for layer in layers:
        delta = torch.stack([row.get(layer, zero) for row in per_row])[:, None, :]
        # (batch, 1, d_model)
        device = _device_of(modules[layer], param.device)
        hooks += [(modules[layer], _adder(part.to(device), param.dtype, last_only=last,
                                          keep_norm=kept))
                  for part, last in ((delta.masked_fill(newest, 0.0), False),
                                     (delta.masked_fill(~newest, 0.0), True))
                  if part.any()]
    with hooked(model, hooks):
        yield
