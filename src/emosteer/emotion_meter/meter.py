"""The emotion meter: per token, a 0-1 reading per emotion, read back from the model itself.

At each layer l of a band, the output of the vectors' site (the attention output by default)
is projected on the unit emotion directions u_le = EV_le / |EV_le|: p_le = <h_l, u_le>. A
logistic regression, fitted on labelled text (`fit.fit_meter`, on the training part of
emotion_corpus), maps these projections to 0-1: reading_e = sigmoid(w_e . z + b_e), z the
standardised projections, or with the "softmax" link one multinomial logistic over the
emotions and a last class for "none of them" (reading_e = softmax(W z + b)_e, so the readings
share one unit of probability). Kinds of calibration: each emotion reads its own direction
averaged over the band ("own"), every emotion's averaged ("all"), or every emotion's at every
layer of the band ("layers", "softmax"); all are stored in the last form. The text-level
reading is the mean over tokens after the first `warmup` (read before the model has seen
enough of the text to tell; chosen with the calibration).

A meter file is a small JSON (the calibration, the band, the provenance of the vectors and
of the corpus part it was fitted on) next to a folder holding the band of each vector.

Reading (a text again, or each token while generating, through read-only hooks) is in
`read.py`; fitting the band and the calibration in `fit.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from emosteer.errors import BadInputError, EmosteerError, VectorFileError
from emosteer.files import write_text
from emosteer.models import model_shape
from emosteer.vector_files import MAX_LAYERS, check_fits

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.models import Site
    from emosteer.vectors import EmotionVector

__all__ = ["Meter", "Readings", "as_dict", "load_meter", "provenance", "shipped_meter_files"]

FORMAT_VERSION = "1"  # "link" and "warmup" came later: a file without them means sigmoid, 0
LINKS = ("sigmoid", "softmax")
MAX_CALIBRATION = 1e6  # |mean|, std, |weight|, |bias|: fitted ones stay far below (the shipped
# meter's within 30); a crafted 1e38 would overflow the logits
MAX_Z = 1e6  # standardised features are clamped here: no float32 overflow in the logits
MAX_FILE = 64 << 20  # bytes of a meter file (the shipped one is 40 kB; the vectors sit beside)
SHIPPED = Path(__file__).parent.parent / "data"  # meter-<model>.json files, one per bundled model
# what `meter` reads with: a Meter, a meter file, vectors, or None (the shipped meter)
Directions: TypeAlias = "Meter | Mapping[str, EmotionVector] | str | Path | None"


@dataclass(frozen=True)
class Readings:
    """The meter's readings of one text: one row of 0-1 values per token.

    Example:
        r = emosteer.meter(model, tok, "What a lovely surprise!")
        r.mean()["joy"], r.dominant()[-1]
    """

    emotions: tuple[str, ...]
    tokens: list[str]  # each token's text
    values: torch.Tensor  # (tokens, emotions), in [0, 1]
    text: str = ""
    warmup: int = 0  # the first tokens the text-level mean leaves out (Meter.warmup)

    def mean(self) -> dict[str, float]:
        """The text-level reading: the mean over tokens per emotion, after the first `warmup`
        tokens when the text is longer than that (0 for an empty text)."""
        if not self.tokens:
            return {e: 0.0 for e in self.emotions}
        kept = self.values[self.warmup:] if len(self.tokens) > self.warmup else self.values
        return {e: float(v) for e, v in zip(self.emotions, kept.mean(0), strict=True)}

    def dominant(self, floor: float = 0.5) -> list[str | None]:
        """Per token, the emotion reading highest, or None when none reaches `floor`."""
        best, index = self.values.max(-1) if self.tokens else (torch.zeros(0), torch.zeros(0))
        return [self.emotions[int(i)] if float(b) >= floor else None
                for b, i in zip(best, index, strict=True)]

    def per_token(self, digits: int = 4) -> list[dict[str, Any]]:
        """[{"token": text, "readings": {emotion: value}}] per token (the API's form)."""
        return [{"token": t, "readings": as_dict(self.emotions, v, digits)}
                for t, v in zip(self.tokens, self.values, strict=True)]


def as_dict(emotions: Sequence[str], values: torch.Tensor | Sequence[float], digits: int = 4
            ) -> dict[str, float]:
    """{emotion: value rounded} for one row of readings (a tensor row or a list)."""
    return {e: round(float(v), digits) for e, v in zip(emotions, values, strict=True)}


@dataclass(frozen=True, eq=False)
class Meter:
    """Emotion directions over a layer band and the calibration that maps them to 0-1.

    The raw features of a position are its projections on every emotion's unit direction at
    every layer of the band, (layers * emotions) numbers, layer-major; reading_e =
    sigmoid(weight[e] . (features - mean) / std + bias[e]), or with link "softmax" the e-th
    of softmax(weight . z + bias), whose last row is the class "none of them".

    Example:
        m = load_meter(model)  # the one shipped for the bundled model
        with metering(model, m) as steps: model.generate(...)
    """

    vectors: Mapping[str, EmotionVector]  # emotion -> its vector over the band, reading order
    mean: torch.Tensor  # (layers * emotions,) the features' mean on the fitting tokens
    std: torch.Tensor  # (layers * emotions,)
    weight: torch.Tensor  # (emotions, layers * emotions); softmax: one more row, "none"
    bias: torch.Tensor  # (emotions,); softmax: (emotions + 1,)
    card: dict = field(default_factory=dict)  # provenance: model, vectors, corpus, selection
    link: str = "sigmoid"  # "sigmoid": one logistic per emotion; "softmax": one multinomial
    warmup: int = 0  # the first tokens of a text its text-level reading leaves out
    emotions: tuple[str, ...] = field(init=False)
    site: Site = field(init=False)
    layers: tuple[int, ...] = field(init=False)  # the band, sorted
    directions: torch.Tensor = field(init=False)  # (layers, emotions, d_model), unit rows

    def __post_init__(self) -> None:
        names = tuple(self.vectors)
        if not names:
            raise BadInputError("a meter needs at least one emotion vector")
        sites = {v.site for v in self.vectors.values()}
        bands = {tuple(v.layers) for v in self.vectors.values()}
        if len(sites) != 1 or len(bands) != 1:
            raise BadInputError(f"the meter's vectors must share one site and one band (got "
                                f"sites {sorted(sites)}, {len(bands)} bands)")
        band = bands.pop()
        unit = [torch.stack([self.vectors[e].directions[layer] for e in names]) for layer in band]
        directions = torch.stack(unit)  # (layers, emotions, d_model)
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        if self.link not in LINKS:
            raise BadInputError(f"meter link {self.link!r}: use {' or '.join(LINKS)}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise BadInputError(f"meter warmup {self.warmup!r}: use a whole number >= 0")
        n, f = len(names), len(band) * len(names)
        rows = n + (self.link == "softmax")
        if self.weight.shape != (rows, f) or self.bias.shape != (rows,) or \
                self.mean.shape != (f,) or self.std.shape != (f,):
            raise BadInputError(f"calibration shapes {tuple(self.weight.shape)} do not fit "
                                f"{n} emotions x {len(band)} layers (link {self.link})")
        for key in ("mean", "std", "weight", "bias"):
            values = getattr(self, key)
            if not values.is_floating_point() or not torch.isfinite(values).all() or \
                    float(values.abs().max()) > MAX_CALIBRATION:
                raise BadInputError(f"calibration {key} holds values that are not finite "
                                    f"numbers within +-{MAX_CALIBRATION:g}")
        if float(self.std.min()) <= 0:
            raise BadInputError("calibration std holds a value <= 0: each is a spread")
        for key, value in (("emotions", names), ("site", sites.pop()), ("layers", band),
                           ("directions", directions), ("vectors", MappingProxyType(
                               dict(self.vectors)))):
            object.__setattr__(self, key, value)

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, EmotionVector], layers: Sequence[int],
                     emotions: Sequence[str] | None = None) -> Meter:
        """An uncalibrated meter over `layers` of the vectors: reading_e = sigmoid of the mean
        over the band of the projection on e's direction; `fit.fit_meter` calibrates.

        Example:
            Meter.from_vectors(vectors, layers=[10, 11, 12], emotions=["joy", "anger"])
        """
        names = tuple(emotions or vectors)
        missing = [e for e in names if e not in vectors]
        if missing:
            raise BadInputError(f"no vector for {missing}: the vectors are {sorted(vectors)}")
        band = sorted(set(layers))
        n, width = len(names), len(band)
        weight = torch.eye(n).repeat(1, width) / max(width, 1)  # (emotions, layers * emotions)
        first = vectors[names[0]].meta
        card = {k: first[k] for k in ("model_id", "architecture", "hidden_size", "num_layers")
                if k in first}
        selected = {e: vectors[e].select(band) for e in names}  # a layer missing: one error
        card["vectors"] = {e: provenance(vectors[e], band) for e in names}
        return cls(selected, torch.zeros(n * width), torch.ones(n * width), weight,
                   torch.zeros(n), card)

    def band(self) -> dict[int, torch.Tensor]:
        """{layer: (emotions, d_model) unit directions}."""
        return {layer: self.directions[i] for i, layer in enumerate(self.layers)}

    def raw(self, projections: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Features (..., layers * emotions) from projections {layer: (..., emotions)}."""
        return torch.stack([projections[layer] for layer in self.layers], dim=-2).flatten(-2)

    def calibrate(self, features: torch.Tensor) -> torch.Tensor:
        """0-1 readings (..., emotions) from features (..., layers * emotions); always finite:
        a position whose features are not (the model's state overflowed) reads 0."""
        x = features.float().cpu()
        ok = torch.isfinite(x).all(-1, keepdim=True)  # (..., 1)
        z = ((torch.where(ok, x, 0.0) - self.mean) / self.std).clamp(-MAX_Z, MAX_Z)
        logits = z @ self.weight.T + self.bias
        if self.link == "softmax":
            readings = torch.softmax(logits, -1)[..., :len(self.emotions)]
        else:
            readings = torch.sigmoid(logits)
        return torch.where(ok, readings, 0.0)

    def check_model(self, model: PreTrainedModel) -> None:
        """Raise VectorMismatchError if the meter was fitted for another model."""
        self.check_shape(model_shape(model), "for this model with `python scripts/fit_meter.py "
                                             "--model ... --vectors ...`")

    def check_shape(self, shape: Mapping[str, str], fix: str, force: bool = False) -> None:
        """Raise VectorMismatchError if the meter was fitted for another model than `shape`'s
        (model_shape), or its band does not fit it; the message ends "fit one {fix}"."""
        check_fits(shape, self.card, self.directions.shape[-1], self.layers,
                   "the emotion meter", f"fit one {fix}", allow_other_model=force)

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path, vectors_dir: str | Path | None = None,
             write_vectors: bool = True) -> Path:
        """Write the calibration as JSON (small, never pickle) and the band's vectors.

        Args:
            path: the JSON file.
            vectors_dir: the folder of the vectors, one <emotion>.safetensors each (default:
                <path without .json>-vectors/); the JSON names it relative to itself.
            write_vectors: write the band's vectors there; False when the folder already
                holds the vectors the meter was fitted with (e.g. the shipped ones).
        """
        path = Path(path)
        folder = Path(vectors_dir) if vectors_dir is not None else path.with_name(
            f"{path.stem}-vectors")
        for emotion, vector in self.vectors.items():
            if write_vectors:
                vector.save(folder / f"{emotion}.safetensors")
        where = os.path.relpath(folder.resolve(), path.resolve().parent)
        body = {"format_version": FORMAT_VERSION, "kind": "emosteer emotion meter",
                "emotions": list(self.emotions), "site": self.site, "layers": list(self.layers),
                "vectors": Path(where).as_posix(),
                "calibration": {"mean": self.mean.tolist(), "std": self.std.tolist(),
                                "weight": self.weight.tolist(), "bias": self.bias.tolist()},
                "link": self.link, "warmup": self.warmup,
                "card": self.card}
        return write_text(path, json.dumps(body, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, vectors: Mapping[str, EmotionVector] | None = None) -> Meter:
        """Read a meter written by `save` (its vectors from the folder it names, unless given);
        a clear error for anything else, or for vectors that are not the ones it was fitted on."""
        from emosteer.vectors import load_vectors

        path = Path(path)
        hint = "fit one with `python scripts/fit_meter.py`"
        if not path.is_file():
            raise VectorFileError(f"meter file {path} does not exist: {hint}")
        try:
            if path.stat().st_size > MAX_FILE:
                raise ValueError(f"{path.stat().st_size} bytes, more than {MAX_FILE}")
            body = _parse(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as err:
            why = f"no {err.args[0]!r} field" if isinstance(err, KeyError) else str(err)
            raise VectorFileError(f"{path} is not an emosteer meter file ({why}): {hint}") from None
        emotions, layers, card = body["emotions"], body["layers"], body["card"]
        try:
            found = dict(vectors) if vectors is not None else load_vectors(
                path.parent / body["vectors"])
            draft = cls.from_vectors(found, layers, emotions)
            if any(draft.card["vectors"][e]["band_sha256"] != card["vectors"][e]["band_sha256"]
                   for e in emotions):
                raise VectorFileError(f"the vectors for meter {path} are not the ones it was "
                                      f"fitted with: {hint}")
            mean, std, weight, bias = body["calibration"]
            return cls(draft.vectors, mean, std, weight, bias, card, body["link"], body["warmup"])
        except VectorFileError:
            raise
        except EmosteerError as err:
            raise VectorFileError(f"{path} is not an emosteer meter file ({err}): {hint}") from None


def _parse(body: Any) -> dict[str, Any]:
    """A meter file's JSON, every field checked for its type and range (a ValueError or
    TypeError naming the first that is not): emotions, layers, the calibration as tensors in
    Meter's order (mean, std, weight, bias), card, link, warmup, vectors (a folder)."""
    if not isinstance(body, dict):
        raise TypeError(f"a JSON {type(body).__name__}, not an object")
    if body.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version {body.get('format_version')!r}, expected "
                         f"{FORMAT_VERSION!r}")
    emotions, layers = body["emotions"], body["layers"]
    if not isinstance(emotions, list) or not emotions or len(set(map(str, emotions))) != \
            len(emotions) or not all(isinstance(e, str) and e for e in emotions):
        raise ValueError("emotions must be a list of distinct names")
    if not isinstance(layers, list) or not layers or len(set(map(str, layers))) != len(layers) \
            or not all(type(i) is int and 0 <= i < MAX_LAYERS for i in layers):
        raise ValueError(f"layers must be distinct whole numbers 0..{MAX_LAYERS - 1}")
    cal = body["calibration"]
    if not isinstance(cal, dict):
        raise TypeError("calibration must be an object")
    tensors = []
    for key in ("mean", "std", "weight", "bias"):
        if not isinstance(cal[key], list) or not all(
                type(x) in (int, float) or (isinstance(x, list) and all(
                    type(y) in (int, float) for y in x)) for x in cal[key]):
            raise ValueError(f"calibration {key} must be a list of numbers (weight: of rows)")
        tensors.append(torch.tensor(cal[key], dtype=torch.float32))
    card, link, warmup = body["card"], body.get("link", "sigmoid"), body.get("warmup", 0)
    if not isinstance(card, dict) or not isinstance(card.get("vectors"), dict) or not all(
            isinstance(card["vectors"].get(e), dict) and isinstance(
                card["vectors"][e].get("band_sha256"), str) for e in emotions):
        raise ValueError("card.vectors must name each emotion's band_sha256")
    if link not in LINKS:
        raise ValueError(f"meter link {link!r}: use {' or '.join(LINKS)}")
    if type(warmup) is not int or not 0 <= warmup <= 1 << 20:
        raise ValueError(f"meter warmup {warmup!r}: use a whole number >= 0")
    if not isinstance(body["vectors"], str):
        raise TypeError("vectors must name a folder")
    return {"emotions": emotions, "layers": layers, "calibration": tensors, "card": card,
            "link": link, "warmup": warmup, "vectors": body["vectors"]}


def provenance(vector: EmotionVector, layers: Sequence[int]) -> dict[str, str]:
    """What a meter records of a vector: its metadata and a hash of its band directions."""
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(vector.directions[layer].float().contiguous().numpy().tobytes())
    keep = ("emotion", "method", "dataset", "dataset_sha256", "dataset_version", "created",
            "emosteer_version", "site", "scale", "limit", "n_queries")
    return {**{k: vector.meta[k] for k in keep if k in vector.meta},
            "band_sha256": digest.hexdigest()[:16]}


def load_meter(model: PreTrainedModel, source: Directions = None) -> Meter:
    """The meter for `model`: given, from a file, or shipped (source None or "default").

    Args:
        model: the model it will read (checked against the meter's card).
        source: a Meter; a meter JSON file; vectors (then the shipped meter fitted with exactly
            those directions); None / "default": the one shipped for this model.

    Example:
        m = load_meter(model)  # data/meter-smollm2-135m-instruct.json for the bundled model
    """
    if isinstance(source, Meter):
        found = source
    elif isinstance(source, (str, Path)) and str(source) != "default":
        found = Meter.load(source)
    else:
        found = _shipped(model, None if isinstance(source, (str, Path)) else source)
    found.check_model(model)
    return found


def shipped_meter_files(model_ids: set[str | None]) -> list[Path]:
    """The meter files shipped for any of these model ids (data/meter-<model>.json)."""
    return [path for path in sorted(SHIPPED.glob("meter-*.json"))
            if json.loads(path.read_text(encoding="utf-8")).get("card", {}).get("model_id")
            in model_ids]


def _shipped(model: PreTrainedModel, vectors: Mapping[str, EmotionVector] | None) -> Meter:
    wanted = model_shape(model)["model_id"]
    for path in shipped_meter_files({wanted}):
        try:
            return Meter.load(path, vectors)
        except (VectorFileError, BadInputError):
            if vectors is None:
                raise  # the shipped meter for this model is broken: say so
    which = "these vectors" if vectors is not None else f"model {wanted!r}"
    raise VectorFileError(f"no emotion meter is fitted for {which}: fit one (a few minutes on 2 "
                          "cores) with `python scripts/fit_meter.py --vectors <folder> --out "
                          "meter.json` and pass that file")
