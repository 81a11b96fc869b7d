"""A vector file on disk: safetensors written atomically and read back with every check a file
a user hands us gets (tensor names, layer numbers, sizes, finite values within MAX_VALUE, the
metadata's shape), and the one check that a vector (or a meter, or the vLLM bank) fits a
model (`check_fits`)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from emosteer.bounds import MAX_ALPHA, MAX_VALUE
from emosteer.errors import EmosteerError, VectorFileError, VectorMismatchError

__all__ = ["FORMAT_VERSION", "MAX_LAYERS", "SITES", "check_fits", "check_names", "check_range",
           "checked_directions", "made_for", "read_safetensors", "shape_differences",
           "write_safetensors"]

FORMAT_VERSION = "1"
MAX_LAYERS = 1 << 16  # the highest layer number a file may name: far above any model's depth
SITES = ("attn", "residual")  # models.Site
_INDEX = re.compile(r"0|[1-9][0-9]*", re.ASCII)  # a layer number as save() writes it


def shape_differences(meta: Mapping[str, str], shape: Mapping[str, str],
                      allow_other_model: bool = False) -> list[str]:
    """"key file-value vs model-value" for every key of `shape` that `meta` records otherwise
    (model_id is skipped when allow_other_model)."""
    return [f"{k} {meta[k]} vs {shape[k]}" for k in shape
            if k in meta and meta[k] != shape[k] and not (k == "model_id" and allow_other_model)]


def made_for(meta: Mapping[str, str], shape: Mapping[str, str]) -> str:
    """"was made for model A, not B", or "does not fit model A" when the ids agree."""
    mine, theirs = meta.get("model_id", "?"), shape["model_id"]
    if mine == theirs:
        return f"does not fit model {theirs!r}"
    return f"was made for model {mine!r}, not {theirs!r}"


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                      meta: Mapping[str, str]) -> Path:
    """Write tensors and string metadata (plus emosteer_version and created) atomically."""
    from safetensors.torch import save_file

    from emosteer import __version__
    from emosteer.files import atomic_path

    header = {"emosteer_version": __version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **{str(k): str(v) for k, v in meta.items()}}
    header = {"format_version": header.pop("format_version", FORMAT_VERSION), **header}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)
    return Path(path)


def read_safetensors(path: Path, what: str, maker: str,
                     header: Callable[[Mapping[str, str], Sequence[str]], None] | None = None,
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(string metadata, tensors) of a safetensors file, or a VectorFileError saying how to
    re-create it (`maker`, e.g. "emosteer extract"). Safetensors never runs code: no pickle,
    and it checks every offset in the header against the file's length before reading.

    Args:
        header: called with (metadata, tensor names) before any tensor is read; it raises an
            EmosteerError to refuse the file (e.g. a model's weights passed as a vector).
    """
    from safetensors import safe_open

    if path.is_dir():
        raise VectorFileError(f"{path} is a directory, not a {what} file: pass the file "
                              f"itself (e.g. {path}/<name>.safetensors)")
    if not path.is_file():
        raise VectorFileError(f"{what} file {path} does not exist: check the path, or create "
                              f"it with `{maker}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = dict(f.metadata() or {}), list(f.keys())
            if header is not None:
                header(meta, names)
            return meta, {key: f.get_tensor(key) for key in names}
    except EmosteerError:
        raise
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise VectorFileError(f"{path} is not a readable safetensors file ({err}): "
                              f"re-create it with `{maker}`") from err


def check_names(names: Iterable[str], prefix: str, where: str, fix: str,
                meta: Mapping[str, str] | None = None) -> dict[str, int]:
    """{tensor name: layer} for names `<prefix><layer>`, or a VectorFileError naming the first
    other name (`layer.abc`, `layer.²`, `layer.01`), a layer past the file's num_layers or
    MAX_LAYERS, or a metadata site, hidden_size or num_layers that is not one."""
    meta = meta or {}
    if meta.get("site", SITES[0]) not in SITES:
        raise VectorFileError(f"{where}: unknown site {meta['site']!r} (expected "
                              f"{' or '.join(SITES)}): {fix}")
    depth = _whole(meta, "num_layers", where, fix) if "num_layers" in meta else MAX_LAYERS
    if "hidden_size" in meta:
        _whole(meta, "hidden_size", where, fix)
    layers = {}
    for name in names:
        index = name[len(prefix):] if name.startswith(prefix) else ""
        if not _INDEX.fullmatch(index):
            raise VectorFileError(f"{where}: tensor {name!r} is not {prefix}<layer> (a layer "
                                  f"number such as {prefix}3): {fix}")
        if int(index) >= min(depth, MAX_LAYERS):
            raise VectorFileError(f"{where}: tensor {name} is past the last layer "
                                  f"({min(depth, MAX_LAYERS) - 1}): {fix}")
        layers[name] = int(index)
    if not layers:
        raise VectorFileError(f"{where} holds no {prefix}<layer> tensors: {fix}")
    return layers


def checked_directions(tensors: Mapping[str, torch.Tensor], prefix: str, where: str, fix: str,
                       meta: Mapping[str, str] | None = None) -> dict[int, torch.Tensor]:
    """The one check every vector file gets when it is read (EmotionVector.load, GGUF import):
    tensor names (check_names), each a non-empty 1-D float vector, all of one length (the
    metadata's hidden_size when it has one), every value finite and within +-MAX_VALUE (so
    alpha up to MAX_ALPHA cannot overflow float32). Returns {layer: float32 vector}.

    Args:
        tensors: the file's tensors by name, e.g. {"layer.0": ..., "layer.1": ...}.
        prefix: "layer." (emosteer) or "direction." (llama.cpp).
        where: how messages name the file; fix: what they say to do.
        meta: the file's metadata (site, hidden_size and num_layers are checked).

    Example:
        checked_directions({"layer.0": torch.ones(4)}, "layer.", "joy.safetensors", "re-extract")
    """
    meta = meta or {}
    layers = check_names(tensors, prefix, where, fix, meta)
    out: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.ndim != 1 or tensor.numel() == 0:
            raise VectorFileError(f"{where}: {name} is {str(tensor.dtype).removeprefix('torch.')}"
                                  f" of shape {tuple(tensor.shape)}, expected a 1-D float "
                                  f"vector: {fix}")
        wide = tensor.detach().to("cpu", torch.float64)
        _check_range(wide, name, where, fix)
        out[layers[name]] = wide.to(torch.float32)
    sizes = {layer: v.numel() for layer, v in sorted(out.items())}
    if len(set(sizes.values())) > 1:
        first = next(iter(sizes))
        odd = next(k for k, n in sizes.items() if n != sizes[first])
        raise VectorFileError(f"{where}: directions have different lengths (layer {first}: "
                              f"{sizes[first]}, layer {odd}: {sizes[odd]}): {fix}")
    width = next(iter(sizes.values()))
    if "hidden_size" in meta and width != int(meta["hidden_size"]):
        raise VectorFileError(f"{where}: directions of length {width} but hidden_size "
                              f"{meta['hidden_size']} in its metadata: {fix}")
    return dict(sorted(out.items()))


def check_range(directions: Mapping[int, torch.Tensor], where: str, fix: str) -> None:
    """Raise VectorFileError unless every value is finite and within +-MAX_VALUE (so alpha up
    to MAX_ALPHA cannot overflow float32); checked_directions does this for every file."""
    for layer, v in directions.items():
        _check_range(v, f"layer {layer}", where, fix)


def _check_range(values: torch.Tensor, name: str, where: str, fix: str) -> None:
    if not torch.isfinite(values).all():
        raise VectorFileError(f"{where} contains NaN or infinite values ({name}): {fix}")
    peak = float(values.abs().max())
    if peak > MAX_VALUE:
        raise VectorFileError(f"{where}: {name} holds values up to {peak:.3g}: steered at "
                              f"alpha {MAX_ALPHA:g} it would overflow float32 (a vector's "
                              f"values stay within {MAX_VALUE:.3g}): {fix}")


def _whole(meta: Mapping[str, str], key: str, where: str, fix: str) -> int:
    """meta[key] as a whole number above 0 (at most 12 digits), or a VectorFileError."""
    text = str(meta[key])
    if not _INDEX.fullmatch(text) or len(text) > 12 or text == "0":
        raise VectorFileError(f"{where}: metadata {key} {text[:40]!r} is not a whole number: "
                              f"{fix}")
    return int(text)


def check_fits(shape: Mapping[str, str], meta: Mapping[str, Any], hidden_size: int,
               layers: Sequence[int], what: str, fix: str, force: str | None = None,
               allow_other_model: bool = False) -> None:
    """The one check that directions fit a model (vectors, the vLLM bank, the meter): the
    metadata's model id, architecture, width and depth against `shape` (model_shape or
    vllm.bank.config_shape), the directions' length against its hidden_size and every layer
    against its layer count. Raises VectorMismatchError naming both sides.

    Args:
        shape: the model's model_id, architecture, hidden_size, num_layers.
        meta: what the file records (model_id is skipped when allow_other_model).
        hidden_size: the directions' length; layers: the layers they steer or read.
        what: how the message names them ("vector 'joy'"); fix: what it says to do.
        force: how to accept another model id of the same shape, said when only it differs.

    Example:
        check_fits(model_shape(model), joy.meta, joy.hidden_size, joy.layers, "vector 'joy'",
                   "extract a vector for this model")
    """
    diffs = shape_differences({k: str(v) for k, v in meta.items()}, shape, allow_other_model)
    if int(shape["hidden_size"]) != hidden_size and not any("hidden" in d for d in diffs):
        diffs.append(f"direction length {hidden_size} vs hidden_size {shape['hidden_size']}")
    if layers and max(layers) >= int(shape["num_layers"]):
        diffs.append(f"layer {max(layers)} vs {shape['num_layers']} layers")
    if layers and min(layers) < 0:
        diffs.append(f"layer {min(layers)} is negative")
    if diffs:
        only_id = all(d.startswith("model_id") for d in diffs)
        raise VectorMismatchError(
            f"{what} {made_for(meta, shape)} ({'; '.join(dict.fromkeys(diffs))}): {fix}"
            + (f", or {force} if the weights are the same"
               if force and only_id and not allow_other_model else ""))
