"""The emotion meter: per token, a 0-1 reading per emotion, read back from the model itself.

At each layer l of a band, the output of the vectors' site (the attention output by default)
is projected on the unit emotion directions u_le = EV_le / |EV_le|: p_le = <h_l, u_le>. A
logistic regression, fitted on labelled text (`meter_fit.fit_meter`, on the training part of
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
`meter_read.py`; fitting the band and the calibration in `meter_fit.py`.
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

from emosteer.errors import BadInputError, VectorFileError, VectorMismatchError
from emosteer.files import write_text
from emosteer.models import model_shape
from emosteer.vectors import made_for, shape_differences

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.models import Site
    from emosteer.vectors import EmotionVector

__all__ = ["Meter", "Readings", "as_dict", "load_meter", "provenance"]

FORMAT_VERSION = "1"  # "link" and "warmup" came later: a file without them means sigmoid, 0
LINKS = ("sigmoid", "softmax")
SHIPPED = Path(__file__).parent / "data"  # meter-<model>.json files, one per bundled model
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


def as_dict(emotions: Sequence[str], values: torch.Tensor, digits: int = 4) -> dict[str, float]:
    """{emotion: value rounded} for one row of readings."""
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
        for key, value in (("emotions", names), ("site", sites.pop()), ("layers", band),
                           ("directions", directions), ("vectors", MappingProxyType(
                               dict(self.vectors)))):
            object.__setattr__(self, key, value)

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, EmotionVector], layers: Sequence[int],
                     emotions: Sequence[str] | None = None) -> Meter:
        """An uncalibrated meter over `layers` of the vectors: reading_e = sigmoid of the mean
        over the band of the projection on e's direction; `meter_fit.fit_meter` calibrates.

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
        card["vectors"] = {e: provenance(vectors[e], band) for e in names}
        return cls({e: vectors[e].select(band) for e in names}, torch.zeros(n * width),
                   torch.ones(n * width), weight, torch.zeros(n), card)

    def band(self) -> dict[int, torch.Tensor]:
        """{layer: (emotions, d_model) unit directions}."""
        return {layer: self.directions[i] for i, layer in enumerate(self.layers)}

    def raw(self, projections: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Features (..., layers * emotions) from projections {layer: (..., emotions)}."""
        return torch.stack([projections[layer] for layer in self.layers], dim=-2).flatten(-2)

    def calibrate(self, features: torch.Tensor) -> torch.Tensor:
        """0-1 readings (..., emotions) from features (..., layers * emotions)."""
        z = (features.float().cpu() - self.mean) / self.std
        logits = z @ self.weight.T + self.bias
        if self.link == "softmax":
            return torch.softmax(logits, -1)[..., :len(self.emotions)]
        return torch.sigmoid(logits)

    def check_model(self, model: PreTrainedModel) -> None:
        """Raise VectorMismatchError if the meter was fitted for another model."""
        self.check_shape(model_shape(model), "for this model with `python scripts/fit_meter.py "
                                             "--model ... --vectors ...`")

    def check_shape(self, shape: Mapping[str, str], fix: str, force: bool = False) -> None:
        """Raise VectorMismatchError if the meter was fitted for another model than `shape`'s
        (model_shape); the message ends "fit one {fix}"."""
        diffs = shape_differences({k: str(v) for k, v in self.card.items()}, shape, force)
        if int(shape["hidden_size"]) != self.directions.shape[-1]:
            diffs.append(f"direction length {self.directions.shape[-1]} vs hidden_size "
                         f"{shape['hidden_size']}")
        if diffs:
            raise VectorMismatchError(
                f"the emotion meter {made_for(self.card, shape)} ({'; '.join(diffs)}): "
                f"fit one {fix}")

    def matches(self, vectors: Mapping[str, EmotionVector]) -> bool:
        """True when `vectors` hold exactly the directions this meter was fitted with."""
        fitted = self.card.get("vectors", {})
        return all(e in vectors and e in fitted and set(self.layers) <= set(vectors[e].layers)
                   and fitted[e].get("band_sha256") ==
                   provenance(vectors[e], self.layers)["band_sha256"] for e in self.emotions)

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
            body = json.loads(path.read_text(encoding="utf-8"))
            if body.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {body.get('format_version')!r}, expected "
                                 f"{FORMAT_VERSION!r}")
            emotions, layers = list(body["emotions"]), [int(i) for i in body["layers"]]
            cal = {k: torch.tensor(v, dtype=torch.float32) for k, v in body["calibration"].items()}
            card = dict(body["card"])
            link, warmup = body.get("link", "sigmoid"), body.get("warmup", 0)
            fitted = {e: card["vectors"][e]["band_sha256"] for e in emotions}
            folder = path.parent / body["vectors"]
        except (ValueError, KeyError, TypeError) as err:
            raise VectorFileError(f"{path} is not an emosteer meter file ({err}): {hint}") from None
        if not all(torch.isfinite(t).all() for t in cal.values()):
            raise VectorFileError(f"{path} holds NaN or infinite values: {hint}")
        found = dict(vectors) if vectors is not None else load_vectors(folder)
        draft = cls.from_vectors(found, layers, emotions)
        if any(draft.card["vectors"][e]["band_sha256"] != fitted[e] for e in emotions):
            raise VectorFileError(f"the vectors for meter {path} are not the ones it was fitted "
                                  f"with: {hint}")
        try:
            return cls(draft.vectors, cal["mean"], cal["std"], cal["weight"], cal["bias"], card,
                       link, warmup)
        except BadInputError as err:
            raise VectorFileError(f"{path} is not an emosteer meter file ({err}): {hint}") from None


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


def _shipped(model: PreTrainedModel, vectors: Mapping[str, EmotionVector] | None) -> Meter:
    wanted = model_shape(model)["model_id"]
    for path in sorted(SHIPPED.glob("meter-*.json")):
        if json.loads(path.read_text(encoding="utf-8")).get("card", {}).get(
                "model_id") != wanted:
            continue
        try:
            return Meter.load(path, vectors)
        except (VectorFileError, BadInputError):
            if vectors is None:
                raise  # the shipped meter for this model is broken: say so
    which = "these vectors" if vectors is not None else f"model {wanted!r}"
    raise VectorFileError(f"no emotion meter is fitted for {which}: fit one (a few minutes on 2 "
                          "cores) with `python scripts/fit_meter.py --vectors <folder> --out "
                          "meter.json` and pass that file")
