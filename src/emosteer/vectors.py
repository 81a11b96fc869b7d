"""EmotionVector: per-layer directions as an immutable value, with algebra and safetensors I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import torch

from emosteer.bounds import check_alpha, check_finite, scaled
from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.errors import (
    BadAlphaError,
    BadInputError,
    UnknownEmotionError,
    VectorFileError,
    VectorMismatchError,
)
from emosteer.vector_files import (
    FORMAT_VERSION,
    check_fits,
    check_names,
    checked_directions,
    made_for,
    read_safetensors,
    write_safetensors,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.models import Architecture, Site

EMOTIONS = VECTOR_EMOTIONS  # the paper's five basic emotions
_SHAPE_KEYS = ("model_id", "architecture", "hidden_size", "num_layers", "site")
_TENSOR_PREFIX = "layer."


@dataclass(frozen=True, eq=False)
class EmotionVector:
    """alpha * directions[l] is added at `site` of layer l while steering.

    An immutable value: `joy * 2 - anger * 0.5` is a new vector; `0 * v` steers like none.

    Example:
        joy = EmotionVector.load("vectors/joy.safetensors")
        calm_joy = joy - 0.5 * EmotionVector.load("vectors/anger.safetensors")
        calm_joy.save("vectors/calm_joy.safetensors")

    directions: layer index -> float32 tensor of shape (hidden_size,). Layers absent from the
    dict are not steered. meta: string metadata (model_id, architecture, hidden_size,
    num_layers, site, emotion, method, dataset...), written into the safetensors header.
    """

    directions: Mapping[int, torch.Tensor]
    meta: Mapping[str, Any] = field(default_factory=dict)  # values become str on creation

    def __post_init__(self) -> None:
        clean = {int(k): v.detach().to("cpu", torch.float32).reshape(-1).clone()
                 for k, v in self.directions.items()}  # our own copy: callers can't alter it
        if len({v.numel() for v in clean.values()}) > 1:
            raise BadInputError(f"directions of different lengths "
                                f"{sorted({v.numel() for v in clean.values()})}: every layer's "
                                "direction has the model's hidden size")
        object.__setattr__(self, "directions", MappingProxyType(dict(sorted(clean.items()))))
        object.__setattr__(self, "meta", {str(k): str(v) for k, v in self.meta.items()})

    # --- description ---------------------------------------------------------------------
    @property
    def emotion(self) -> str:
        return self.meta.get("emotion", "unnamed")

    @property
    def site(self) -> Site:
        return cast("Site", self.meta.get("site", "attn"))

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).numel() if self.directions else 0

    def renamed(self, emotion: str) -> EmotionVector:
        """The same directions under another emotion name (the metadata's "emotion")."""
        return replace(self, meta={**self.meta, "emotion": emotion})

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
        label = f"({self.emotion} {op} {other.emotion})"
        check_finite(directions, f"vector {label}", "use smaller weights")
        meta = {**other.meta, **self.meta, "emotion": label}
        return EmotionVector(directions, meta)

    def __add__(self, other: EmotionVector) -> EmotionVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: EmotionVector) -> EmotionVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, scale: float) -> EmotionVector:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        meta = {**self.meta, "emotion": f"{_fmt(scale)}*{self.emotion}"}
        return EmotionVector(scaled(self.directions, scale, f"vector {self.emotion!r}"), meta)

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> EmotionVector:
        return self * (1.0 / scale)

    def __neg__(self) -> EmotionVector:
        return self * -1.0

    def calibrated(self, strength: float, **provenance: Any) -> EmotionVector:
        """This vector with its recommended strength folded in: alpha 1 on the result steers
        as alpha `strength` on this one (in the library, the CLI, both servers and GGUF, which
        all just scale the file). The metadata keeps the name and records the strength
        (`calibrated_strength`, multiplied when calibrated twice) and `provenance`.

        Args:
            strength: the recommended alpha for this vector, e.g. chosen by
                `emosteer experiment frontier` on calibration questions.
            provenance: more metadata, e.g. method="trained", chosen_on="calibration split".

        Example:
            shipped = anger.calibrated(1.5, method="trained")  # alpha 1 = 1.5 x anger
        """
        strength = check_alpha(strength, "calibrated strength")
        if strength == 0:
            raise BadAlphaError("calibrated strength 0 would ship a vector that does nothing")
        total = strength * float(self.meta.get("calibrated_strength", 1.0))
        meta = {**self.meta, **provenance, "calibrated_strength": f"{total:g}"}
        return EmotionVector(scaled(self.directions, strength, f"vector {self.emotion!r}"), meta)

    def equal(self, other: EmotionVector) -> bool:
        """Bit-identical directions and metadata."""
        return (self.meta == other.meta and self.directions.keys() == other.directions.keys()
                and all(torch.equal(v, other.directions[k]) for k, v in self.directions.items()))

    # --- compatibility -----------------------------------------------------------------------
    def check_model(self, model: PreTrainedModel, allow_other_model: bool = False,
                    arch: Architecture | None = None) -> None:
        """Raise VectorMismatchError naming both sides if this vector was made for another model."""
        from emosteer.models import model_shape

        check_fits(model_shape(model, arch), self.meta, self.hidden_size, self.layers,
                   f"vector {self.emotion!r}", "extract a vector for this model with `emosteer "
                   "extract --model ...`", "pass --force / allow_other_model=True",
                   allow_other_model)

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write safetensors: one tensor per layer ('layer.<i>') and the metadata as strings."""
        tensors = {f"{_TENSOR_PREFIX}{k}": v for k, v in self.directions.items()}
        return write_safetensors(path, tensors, {"format_version": FORMAT_VERSION, **self.meta})

    @classmethod
    def load(cls, path: str | Path) -> EmotionVector:
        """Read a file written by save(); refuse anything else with a clear message."""
        path = Path(path)
        fix = "re-create it with `emosteer extract`"

        def header(meta: Mapping[str, str], names: Sequence[str]) -> None:
            if meta.get("format_version") != FORMAT_VERSION:
                raise VectorFileError(
                    f"{path} is not an emosteer vector file (format_version "
                    f"{meta.get('format_version')!r}, expected {FORMAT_VERSION!r}): {fix}, or "
                    "use `emosteer import` for files from other tools")
            check_names(names, _TENSOR_PREFIX, str(path), fix, meta)

        meta, tensors = read_safetensors(path, "vector", "emosteer extract", header)
        return cls(checked_directions(tensors, _TENSOR_PREFIX, str(path), fix, meta), meta)


SHIPPED = Path(__file__).parent / "data" / "vectors"  # vectors shipped per bundled model
DEFAULT_VECTORS = SHIPPED / "smollm2-135m-instruct"  # what load_vectors("default") reads


def shipped_vectors() -> dict[str, EmotionVector]:
    """The calibrated vectors shipped for the bundled model ({} when this install has none).

    Example:
        shipped_vectors()["anger"].meta["calibrated_strength"]
    """
    return load_vectors("default") if any(DEFAULT_VECTORS.glob("*.safetensors")) else {}


def calibrated_like(vectors: Mapping[str, EmotionVector],
                    reference: Mapping[str, EmotionVector]) -> dict[str, EmotionVector]:
    """Each vector calibrated as the reference vector of the same name: the reference's layers
    and its calibrated_strength (vectors with no calibrated reference stay as they are).

    For vectors extracted again with the same method on the same model as shipped ones (what
    `emosteer demo` does), so that alpha 1 means the recommended strength for them too.

    Args:
        vectors: e.g. a fresh extraction's vectors.
        reference: calibrated vectors, e.g. `shipped_vectors()`.

    Example:
        vectors = calibrated_like(result.vectors, shipped_vectors())
    """
    out = dict(vectors)
    for name, vector in vectors.items():
        ref = reference.get(name)
        if ref is None or "calibrated_strength" not in ref.meta:
            continue
        if ref.meta.get("model_id") != vector.meta.get("model_id"):
            raise VectorMismatchError(f"vector {name!r} {made_for(vector.meta, ref.meta)}: "
                                      "calibrate with vectors of the same model")
        kept = set(ref.layers)
        layers = [i for i in vector.layers if i in kept]
        keep = {k: ref.meta[k] for k in ("band", "calibration") if k in ref.meta}
        out[name] = vector.select(layers).calibrated(
            float(ref.meta["calibrated_strength"]), calibrated_like=ref.meta.get("method", "?"),
            **keep)
    return out


def load_vectors(source: str | Path = "default") -> dict[str, EmotionVector]:
    """Every vector of a folder, by file name: {"joy": ..., "anger": ..., "base": ...}.

    Args:
        source: a folder of `<name>.safetensors` files, or "default": the vectors shipped
            inside the package for the bundled model (no extraction needed).

    Example:
        vectors = emosteer.load_vectors("default")
        with emosteer.steer(model, vectors["anger"]): ...
    """
    folder = DEFAULT_VECTORS if str(source) == "default" else Path(source)
    if folder.is_file():
        raise VectorFileError(f"{folder} is a file: pass the folder that holds the vectors "
                              "(or load one file with EmotionVector.load)")
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        hint = ("this install ships no default vectors: run `emosteer extract`"
                if str(source) == "default" else
                f"run `emosteer extract --out {folder}` first, or pass the folder with --vectors")
        raise VectorFileError(f"no vector files in {folder}: {hint}")
    return {f.stem: EmotionVector.load(f) for f in files}


def mix(vectors: Mapping[str, EmotionVector], weights: Mapping[str, float]) -> EmotionVector:
    """sum_k weights[k] * vectors[k]: several emotions at once (the paper's additivity).

    Args:
        vectors: emotion name -> vector (e.g. `Extraction.vectors`).
        weights: emotion name -> weight; each weight is checked like an alpha, and against
            the vector's max_dose where it records one (`emosteer.dose`).

    Example:
        calm_joy = mix(vectors, {"joy": 1.0, "anger": -0.5})  # = joy - 0.5 * anger
    """
    if not weights:
        raise BadInputError("mix needs at least one emotion weight, e.g. {'joy': 1.0}")
    unknown = [name for name in weights if name not in vectors]
    if unknown:
        name = unknown[0] if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", unknown[0]) else "NAME"
        raise UnknownEmotionError(
            f"unknown emotion {unknown[0]!r}: available are {', '.join(sorted(vectors))}; "
            f"extract it with `emosteer extract --emotion {name} --describe \"...\"`")
    from emosteer.dose import check_dose

    checked = {name: check_alpha(w, f"weight for {name!r}") for name, w in weights.items()}
    for name, w in checked.items():  # past a vector's recorded max_dose its text breaks
        check_dose(vectors[name], w)
    items = [vectors[name] * w for name, w in checked.items()]
    total = items[0]
    for item in items[1:]:
        total = total + item
    label = " + ".join(f"{_fmt(w)}*{name}" for name, w in checked.items())
    return replace(total, meta={**total.meta, "emotion": label})


def increments(shifts: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Cumulative shifts {l: EV_l} -> per-layer additions {l: EV_l - EV_(previous l)}.

    What to add at each layer of the residual stream so that, carried forward, the stream at
    layer l is shifted by EV_l (the inverse of a running sum over layers).
    """
    out, previous = {}, None
    for layer in sorted(shifts):
        out[layer] = shifts[layer] if previous is None else shifts[layer] - previous
        previous = shifts[layer]
    check_finite(out, "the per-layer increments of a residual vector", "scale it down")
    return out


def _fmt(x: float) -> str:
    return f"{x:g}"
