"""EmotionVector: per-layer directions as an immutable value, with algebra and safetensors I/O."""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import torch

from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.errors import (
    BadAlphaError,
    BadInputError,
    EmosteerError,
    UnknownEmotionError,
    VectorFileError,
    VectorMismatchError,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.models import Architecture, Site

FORMAT_VERSION = "1"
EMOTIONS = VECTOR_EMOTIONS  # the paper's five basic emotions
MAX_ALPHA = 100.0  # the paper sweeps -1..4; beyond 100x every model emits noise
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
MAX_VALUE = FLOAT32_MAX / MAX_ALPHA  # a file's values: every allowed alpha keeps them finite
MAX_LAYERS = 1 << 16  # the highest layer number a file may name: far above any model's depth
SITES = ("attn", "residual")  # models.Site
_INDEX = re.compile(r"0|[1-9][0-9]*", re.ASCII)  # a layer number as save() writes it
_SHAPE_KEYS = ("model_id", "architecture", "hidden_size", "num_layers", "site")
_TENSOR_PREFIX = "layer."


def check_alpha(alpha: float | str, what: str = "alpha") -> float:
    """alpha as a float, or a BadAlphaError saying why it cannot steer.

    Args:
        alpha: a steering strength (or a mix weight): finite, within +-MAX_ALPHA.
        what: how the message names the value ("alpha", "weight for 'joy'"...).

    Example:
        >>> check_alpha(1.5)
        1.5
    """
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise BadAlphaError(f"{what} {alpha!r} is not a number: use e.g. 1.0") from None
    if not math.isfinite(value):
        raise BadAlphaError(f"{what} is {value}: use a finite number such as 1.0 or -1.0")
    if abs(value) > MAX_ALPHA:
        raise BadAlphaError(f"{what} {value:g} is outside [-{MAX_ALPHA:g}, {MAX_ALPHA:g}]: the "
                            "paper's range is -1 to 4; 4 already saturates")
    return value


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


def check_finite(directions: Mapping[int, torch.Tensor], what: str, fix: str) -> None:
    """Raise BadInputError if a direction holds inf or NaN (a product or sum overflowed
    float32), naming `what` and saying `fix`."""
    for layer, v in directions.items():
        if not torch.isfinite(v).all():
            raise BadInputError(f"{what} overflows float32 at layer {layer} (its largest value "
                                f"is beyond {FLOAT32_MAX:.3g}): {fix}, or re-create the vector")


def scaled(directions: Mapping[int, torch.Tensor], scale: float,
           what: str) -> dict[int, torch.Tensor]:
    """{layer: scale * direction}, refused with a BadInputError when a product overflows
    float32: every place a scale or alpha multiplies a vector goes through here.

    Example:
        scaled(joy.directions, 2.0, "vector 'joy'")
    """
    if not math.isfinite(float(scale)):
        raise BadInputError(f"{what} cannot be scaled by {scale}: use a finite number")
    out = {k: v * float(scale) for k, v in directions.items()}
    check_finite(out, f"{what} times {_fmt(float(scale))}", "use a smaller scale")
    return out


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
        raise UnknownEmotionError(
            f"unknown emotion {unknown[0]!r}: available are {', '.join(sorted(vectors))}")
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
