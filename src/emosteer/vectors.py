"""EmotionVector: per-layer directions as an immutable value, with algebra and safetensors I/O."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from emosteer.errors import BadInputError, UnknownEmotionError, VectorFileError, VectorMismatchError

if TYPE_CHECKING:
    from emosteer.models import Architecture

FORMAT_VERSION = "1"
EMOTIONS = ("joy", "anger", "sadness", "fear", "disgust")
_SHAPE_KEYS = ("model_id", "architecture", "hidden_size", "num_layers", "site")
_TENSOR_PREFIX = "layer."


@dataclass(frozen=True, eq=False)
class EmotionVector:
    """alpha * directions[l] is added at `site` of layer l while steering.

    directions: layer index -> float32 tensor of shape (hidden_size,). Layers absent from the
    dict are not steered. meta: string metadata (model_id, architecture, hidden_size,
    num_layers, site, emotion, method, dataset...), written into the safetensors header.
    """

    directions: Mapping[int, torch.Tensor]
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean = {int(k): v.detach().to("cpu", torch.float32).reshape(-1).clone()
                 for k, v in self.directions.items()}  # our own copy: callers can't alter it
        object.__setattr__(self, "directions", MappingProxyType(dict(sorted(clean.items()))))
        object.__setattr__(self, "meta", {str(k): str(v) for k, v in self.meta.items()})

    # --- description ---------------------------------------------------------------------
    @property
    def emotion(self) -> str:
        return self.meta.get("emotion", "unnamed")

    @property
    def site(self) -> str:
        return self.meta.get("site", "attn")

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).numel() if self.directions else 0

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.directions.items()}

    def select(self, layers: Iterable[int]) -> EmotionVector:
        """Keep only the given layers."""
        wanted = set(layers)
        missing = wanted - set(self.directions)
        if missing:
            raise BadInputError(f"layers {sorted(missing)} are not in this vector "
                             f"(it has {self.layers[0]}..{self.layers[-1]})")
        return replace(self, directions={k: v for k, v in self.directions.items() if k in wanted})

    # --- algebra ---------------------------------------------------------------------------
    def _combine(self, other: EmotionVector, sign: float, op: str) -> EmotionVector:
        if not isinstance(other, EmotionVector):
            return NotImplemented
        for key in _SHAPE_KEYS:
            if key in self.meta and key in other.meta and self.meta[key] != other.meta[key]:
                raise VectorMismatchError(
                    f"cannot combine vectors with different {key}: "
                    f"{self.meta[key]!r} vs {other.meta[key]!r}")
        layers = sorted(set(self.directions) | set(other.directions))
        zero = torch.zeros(self.hidden_size or other.hidden_size)
        directions = {k: self.directions.get(k, zero) + sign * other.directions.get(k, zero)
                      for k in layers}
        meta = {**other.meta, **self.meta, "emotion": f"({self.emotion} {op} {other.emotion})"}
        return EmotionVector(directions, meta)

    def __add__(self, other: EmotionVector) -> EmotionVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: EmotionVector) -> EmotionVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, scale: float) -> EmotionVector:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        meta = {**self.meta, "emotion": f"{_fmt(scale)}*{self.emotion}"}
        return EmotionVector({k: v * float(scale) for k, v in self.directions.items()}, meta)

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> EmotionVector:
        return self * (1.0 / scale)

    def __neg__(self) -> EmotionVector:
        return self * -1.0

    def equal(self, other: EmotionVector) -> bool:
        """Bit-identical directions and metadata."""
        return (self.meta == other.meta and self.directions.keys() == other.directions.keys()
                and all(torch.equal(v, other.directions[k]) for k, v in self.directions.items()))

    # --- compatibility -----------------------------------------------------------------------
    def check_model(self, model: torch.nn.Module, allow_other_model: bool = False,
                    arch: Architecture | None = None) -> None:
        """Raise VectorMismatchError naming both sides if this vector was made for another model."""
        from emosteer.models import model_shape

        shape = model_shape(model, arch)
        keys = ["architecture", "hidden_size", "num_layers"] + ([] if allow_other_model
                                                                else ["model_id"])
        diffs = [f"{k} {self.meta[k]} vs {shape[k]}" for k in keys
                 if k in self.meta and self.meta[k] != shape[k]]
        if int(shape["hidden_size"]) != self.hidden_size and not any("hidden" in d for d in diffs):
            diffs.append(f"direction length {self.hidden_size} vs hidden_size "
                         f"{shape['hidden_size']}")
        if self.layers and self.layers[-1] >= int(shape["num_layers"]):
            diffs.append(f"layer {self.layers[-1]} vs {shape['num_layers']} layers")
        if diffs:
            raise VectorMismatchError(
                f"vector {self.emotion!r} was made for model {self.meta.get('model_id', '?')!r}, "
                f"not {shape['model_id']!r} ({'; '.join(dict.fromkeys(diffs))}): extract a "
                f"vector for this model with `emosteer extract --model ...`"
                + ("" if allow_other_model or any("model_id" not in d for d in diffs) else
                   ", or pass --force / allow_other_model=True if the weights are the same"))

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write safetensors: one tensor per layer ('layer.<i>') and the metadata as strings."""
        from safetensors.torch import save_file

        from emosteer import __version__

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "emosteer_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **self.meta}
        tensors = {f"{_TENSOR_PREFIX}{k}": v.contiguous() for k, v in self.directions.items()}
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmotionVector:
        """Read a file written by save(); refuse anything else with a clear message."""
        path = Path(path)
        meta, tensors = read_safetensors(path, "vector", "emosteer extract")
        if meta.get("format_version") != FORMAT_VERSION:
            raise VectorFileError(f"{path} is not an emosteer vector file (format_version "
                                  f"{meta.get('format_version')!r}, expected {FORMAT_VERSION!r})"
                                  ": re-create it with `emosteer extract`, or use `emosteer "
                                  "import` for files from other tools")
        bad = [k for k in tensors if not k.startswith(_TENSOR_PREFIX) or tensors[k].ndim != 1]
        if bad or not tensors:
            raise VectorFileError(f"{path} holds unexpected tensors {bad[:3]}: "
                                  "re-create it with `emosteer extract`")
        directions = {int(k[len(_TENSOR_PREFIX):]): v for k, v in tensors.items()}
        if any(not torch.isfinite(v).all() for v in directions.values()):
            raise VectorFileError(f"{path} contains NaN or infinite values: re-extract it")
        return cls(directions, meta)


def read_safetensors(path: Path, what: str, maker: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(string metadata, tensors) of a safetensors file, or a VectorFileError saying how to
    re-create it (`maker`, e.g. "emosteer extract"). Safetensors never runs code: no pickle."""
    from safetensors import safe_open

    if not path.is_file():
        raise VectorFileError(f"{what} file {path} does not exist: check the path, or create "
                              f"it with `{maker}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise VectorFileError(f"{path} is not a readable safetensors file ({err}): "
                              f"re-create it with `{maker}`") from err


def mix(vectors: Mapping[str, EmotionVector], weights: Mapping[str, float]) -> EmotionVector:
    """sum_k weights[k] * vectors[k]: several emotions at once (the paper's additivity)."""
    if not weights:
        raise BadInputError("mix needs at least one emotion weight, e.g. {'joy': 1.0}")
    unknown = [name for name in weights if name not in vectors]
    if unknown:
        raise UnknownEmotionError(
            f"unknown emotion {unknown[0]!r}: available are {', '.join(sorted(vectors))}")
    for name, w in weights.items():
        if not math.isfinite(w):
            raise BadInputError(f"weight for {name!r} is {w}: use a finite number")
    items = [vectors[name] * float(w) for name, w in weights.items()]
    total = items[0]
    for item in items[1:]:
        total = total + item
    label = " + ".join(f"{_fmt(w)}*{name}" for name, w in weights.items())
    return replace(total, meta={**total.meta, "emotion": label})


def _fmt(x: float) -> str:
    return f"{x:g}"
