"""Vectors in other tools' layouts: llama.cpp control vectors (GGUF), repeng, steering-vectors.

Where each tool adds its vector, per decoder layer l (0-based, as `model.layers[l]`):

- llama.cpp `--control-vector`: GGUF tensor `direction.<l>` (l >= 1), added to the residual
  stream after layer l's MLP add -> emosteer site "residual".
- repeng `ControlVector`: `model_type`, `directions: {l: ndarray}`, added to decoder layer l's
  output -> site "residual". Its export_gguf writes the llama.cpp layout above.
- steering-vectors `SteeringVector`: `layer_activations: {l: Tensor}` and `layer_type`;
  "decoder_block" (layer output) -> site "residual", "self_attn" (attention output) -> "attn".

The residual tools add their direction at every layer, so what they add piles up: the stream
after layer l is shifted by the sum of the directions up to l. An emosteer residual vector
holds that shift itself (EV_l, as read; `emosteer.steer` adds the increments
EV_l - EV_(l-1)). Conversions therefore turn cumulative shifts into per-layer additions and
back, and the steered model is the same in both tools.

llama.cpp counts layers from 0 like transformers and has no slot for layer 0's output
(its loader rejects `direction.0`); repeng writes its 0-based keys unchanged. Our default
vectors are read and added at the self-attention output (site "attn"); llama.cpp and repeng
add to the residual stream after the whole layer, so an attn vector exported to them is added
one sublayer later (layer l's MLP no longer sees it) and its layer 0 is dropped. The file says
so in its metadata; compare the shift in both engines before relying on it (docs/serving.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emosteer.bounds import check_alpha, check_finite, scaled
from emosteer.errors import BadInputError, VectorFileError
from emosteer.gguf_file import read_gguf_file
from emosteer.vector_files import check_range, checked_directions
from emosteer.vectors import EmotionVector, increments

GGUF_ARCH = "controlvector"
_SITE_NOTE = ("emosteer vector read at the self-attention output (site attn); llama.cpp adds "
              "control vectors to the residual stream after each layer, so layer l's MLP does "
              "not see it there and layer 0 is dropped")


# --- llama.cpp control-vector GGUF ---------------------------------------------------------------
def export_gguf(vector: EmotionVector, path: str | Path, scale: float = 1.0) -> Path:
    """Write `scale * vector` as a llama.cpp control vector (`llama-cli --control-vector FILE`).

    Tensors `direction.<l>` (float32, n_embd) for each layer l >= 1; keys
    `general.architecture` = "controlvector", `controlvector.model_hint` (the model type, as
    repeng writes it), `controlvector.layer_count`, plus `emosteer.*` keys that record the
    site, the source model and what was dropped.
    """
    import gguf

    from emosteer.files import atomic_path

    path = Path(path)
    scale = check_alpha(scale, "scale")
    kept = {layer: v for layer, v in vector.directions.items() if layer >= 1}
    dropped = [layer for layer in vector.directions if layer < 1]
    if vector.site == "residual":  # shifts -> additions; the shift at layer 0 is lost
        kept = increments(kept)
    if not kept:
        raise BadInputError(f"vector {vector.emotion!r} has no layer >= 1: llama.cpp cannot "
                            "steer the output of layer 0")
    kept = scaled(kept, scale, f"vector {vector.emotion!r}")  # inf is refused, never written
    with atomic_path(path) as tmp:
        _write_gguf(gguf.GGUFWriter(str(tmp), GGUF_ARCH), vector, kept, dropped, scale)
    return path


def _write_gguf(writer: Any, vector: EmotionVector, kept: dict[int, torch.Tensor],
                dropped: list[int], scale: float) -> None:
    writer.add_string(f"{GGUF_ARCH}.model_hint", vector.meta.get("architecture", "unknown"))
    writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(kept))
    extra = {"site": vector.site, "site_note": _SITE_NOTE if vector.site == "attn" else
             "residual stream after each decoder layer: the directions are the per-layer "
             "increments of emosteer's shifts, so their running sum is the vector as read",
             "scale": f"{scale:g}", "dropped_layers": ",".join(map(str, dropped))}
    for key in ("emotion", "model_id", "architecture", "hidden_size", "num_layers", "method",
                "dataset", "dataset_sha256", "emosteer_version"):
        if key in vector.meta:
            extra[key] = vector.meta[key]
    for key, value in extra.items():
        writer.add_string(f"emosteer.{key}", str(value))
    for layer, direction in kept.items():
        writer.add_tensor(f"direction.{layer}", direction.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(path: str | Path) -> EmotionVector:
    """Read a llama.cpp control-vector GGUF (ours, repeng's or llama.cpp's own) as a vector.

    A file from another tool holds residual additions: the result has site "residual" and
    holds their running sum, so `emosteer.steer` adds what llama.cpp adds. A file exported
    by emosteer comes back at the site it was read at.
    """
    path = Path(path)
    strings, tensors = read_gguf_file(path, _is_direction)
    arch = strings.get("general.architecture")
    if arch != GGUF_ARCH:
        raise VectorFileError(f"{path} is a GGUF of architecture {arch!r}, not a control "
                              f"vector ({GGUF_ARCH!r}): pass a file written by `emosteer "
                              "export`, repeng's export_gguf or llama.cpp's cvector-generator")
    ours = {k[len("emosteer."):]: v for k, v in strings.items() if k.startswith("emosteer.")}
    site = ours.get("site", "residual")
    if site not in ("attn", "residual"):
        raise VectorFileError(f"{path}: unknown emosteer.site {site!r}")
    fix = "re-export it (`emosteer export`, repeng's export_gguf)"
    directions = checked_directions(tensors, _DIRECTION, str(path), fix, {
        "site": site, **{k: ours[k] for k in ("hidden_size", "num_layers") if k in ours}})
    if site == "residual":  # the running sum is what the file steers by: it must fit too
        directions = cumulative(directions)
        check_range(directions, str(path), fix)
    meta: dict[str, str] = {"emotion": ours.get("emotion", path.stem),
            "architecture": ours.get("architecture", strings.get(f"{GGUF_ARCH}.model_hint",
                                                                 "unknown")),
            "hidden_size": str(next(iter(directions.values())).numel()), "site": site,
            "source": f"gguf:{path.name}"}
    for key in ("model_id", "num_layers", "method", "dataset", "dataset_sha256"):
        if key in ours:
            meta[key] = ours[key]
    if ours.get("dropped_layers"):
        meta["dropped_layers"] = ours["dropped_layers"]
    if ours.get("scale", "1") != "1":
        meta["scale"] = ours["scale"]
    return EmotionVector(directions, meta)


_DIRECTION = "direction."  # llama.cpp's tensor name prefix: direction.<layer>


def _is_direction(name: str) -> bool:
    """A tensor read_gguf reads (and checks): direction.<anything>; others are skipped."""
    return name.partition(".")[0] == _DIRECTION[:-1]


def cumulative(additions: dict[int, torch.Tensor] | Any) -> dict[int, torch.Tensor]:
    """Per-layer additions -> the shift each leaves in the residual stream (running sum)."""
    out, total = {}, None
    for layer in sorted(additions):
        total = additions[layer] if total is None else total + additions[layer]
        out[layer] = total
    check_finite(out, "the running sum of the residual directions", "scale the directions down")
    return out


# --- repeng --------------------------------------------------------------------------------------
@dataclass
class ControlVectorLayout:
    """repeng's ControlVector fields, for when repeng is not installed (it pins numpy<2)."""

    model_type: str
    directions: dict[int, np.ndarray] = field(default_factory=dict)


def from_repeng(control_vector: Any, emotion: str = "repeng", **meta: str) -> EmotionVector:
    """repeng `ControlVector` (or anything with `model_type` and `directions`) -> EmotionVector.

    repeng adds `coeff * directions[l]` to decoder layer l's output: site "residual", stored
    as the running sum of its directions (see the module docstring).
    """
    try:
        model_type, dirs = control_vector.model_type, dict(control_vector.directions)
    except AttributeError:
        raise BadInputError("expected a repeng ControlVector (fields model_type and "
                            "directions)") from None
    if not dirs:
        raise BadInputError("the ControlVector has no directions")
    directions = cumulative({int(k): torch.as_tensor(np.asarray(v, dtype=np.float32)
                                                     .reshape(-1)) for k, v in dirs.items()})
    return EmotionVector(directions, {"emotion": emotion, "architecture": str(model_type),
                                      "hidden_size": str(next(iter(directions.values())).numel()),
                                      "site": "residual", "source": "repeng", **meta})


def to_repeng(vector: EmotionVector) -> Any:
    """EmotionVector -> repeng `ControlVector` (repeng's class if installed, else the layout)."""
    if vector.site != "residual":
        warnings.warn(f"vector {vector.emotion!r} was read at site {vector.site!r}; repeng adds "
                      "to the decoder layer output (residual), one sublayer later", stacklevel=2)
    adds = increments(vector.directions) if vector.site == "residual" else vector.directions
    fields: dict[str, Any] = {"model_type": vector.meta.get("architecture", "unknown"),
              "directions": {k: v.numpy().astype(np.float32).copy() for k, v in adds.items()}}
    try:
        from repeng import ControlVector
    except ImportError:
        return ControlVectorLayout(**fields)
    return ControlVector(**fields)


# --- steering-vectors ----------------------------------------------------------------------------
_LAYER_TYPES = {"decoder_block": "residual", "self_attn": "attn"}


@dataclass
class SteeringVectorLayout:
    """steering-vectors' SteeringVector fields, for when it is not installed (transformers<5)."""

    layer_activations: dict[int, torch.Tensor] = field(default_factory=dict)
    layer_type: str = "decoder_block"


def from_steering_vectors(steering_vector: Any, emotion: str = "steering-vectors",
                          **meta: str) -> EmotionVector:
    """steering-vectors `SteeringVector` -> EmotionVector.

    layer_type "decoder_block" (layer output) -> site "residual"; "self_attn" (the attention
    module's output, which is its output projection's output) -> site "attn". Other layer
    types (mlp, layer norms) have no emosteer site and are refused.
    """
    try:
        acts, layer_type = dict(steering_vector.layer_activations), steering_vector.layer_type
    except AttributeError:
        raise BadInputError("expected a steering-vectors SteeringVector (fields "
                            "layer_activations and layer_type)") from None
    if layer_type not in _LAYER_TYPES:
        raise BadInputError(f"layer_type {layer_type!r} has no emosteer site: convert "
                            f"vectors of layer_type {' or '.join(_LAYER_TYPES)}")
    if not acts:
        raise BadInputError("the SteeringVector has no layer_activations")
    if any(int(k) < 0 for k in acts):
        raise BadInputError("negative layer numbers need the model's depth: convert them to "
                            "0-based indices first")
    directions = {int(k): torch.as_tensor(v).detach().float().reshape(-1)
                  for k, v in acts.items()}
    if _LAYER_TYPES[layer_type] == "residual":
        directions = cumulative(directions)
    return EmotionVector(directions, {"emotion": emotion, "site": _LAYER_TYPES[layer_type],
                                      "hidden_size": str(next(iter(directions.values())).numel()),
                                      "source": "steering-vectors", **meta})


def to_steering_vectors(vector: EmotionVector) -> Any:
    """EmotionVector -> steering-vectors `SteeringVector` (its class if installed, else the
    layout); `SteeringVector.apply(model, multiplier=alpha)` then steers like emosteer.steer."""
    layer_type = {v: k for k, v in _LAYER_TYPES.items()}[vector.site]
    adds = increments(vector.directions) if vector.site == "residual" else vector.directions
    fields: dict[str, Any] = {"layer_activations": {k: v.clone() for k, v in adds.items()},
              "layer_type": layer_type}
    try:
        from steering_vectors import SteeringVector
    except ImportError:
        return SteeringVectorLayout(**fields)
    return SteeringVector(**fields)
