"""The emotion meter: per token, a 0-1 reading per emotion, read back from the model itself.

At each layer l of a band, the output of the vectors' site (the attention output by default)
is projected on the unit emotion directions u_le = EV_le / |EV_le|; the mean over the band is
the raw reading f_e, and a logistic fitted on labelled text (`meter_fit.fit_meter`, on the
training part of emotion_corpus) maps it to 0-1: reading_e = sigmoid(w_e . z + b_e), z the
standardised raw readings.

Reading (a text again, or each token while generating, through read-only hooks) is in
`meter_read.py`; fitting the band and the calibration in `meter_fit.py`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

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

FORMAT_VERSION = "1"
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

    def mean(self) -> dict[str, float]:
        """The text-level reading: the mean over tokens per emotion (0 for an empty text)."""
        if not self.tokens:
            return {e: 0.0 for e in self.emotions}
        return {e: float(v) for e, v in zip(self.emotions, self.values.mean(0), strict=True)}

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
    """Unit emotion directions over a layer band and the calibration that maps them to 0-1.

    Example:
        m = load_meter(model)  # the one shipped for the bundled model
        with metering(model, m) as steps: model.generate(...)
    """

    emotions: tuple[str, ...]
    site: Site
    layers: tuple[int, ...]  # the band, sorted
    directions: torch.Tensor  # (layers, emotions, d_model), unit rows
    mean: torch.Tensor  # (emotions,) raw readings' mean on the fitting tokens
    std: torch.Tensor  # (emotions,)
    weight: torch.Tensor  # (emotions, emotions): row e reads the standardised raw readings
    bias: torch.Tensor  # (emotions,)
    card: dict = field(default_factory=dict)  # provenance: model, vectors, corpus, selection

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, EmotionVector], layers: Sequence[int],
                     emotions: Sequence[str] | None = None) -> Meter:
        """An uncalibrated meter over `layers` of the vectors (reading_e = sigmoid of the raw
        reading); `meter_fit.fit_meter` calibrates it.

        Example:
            Meter.from_vectors(vectors, layers=[10, 11, 12], emotions=["joy", "anger"])
        """
        names = tuple(emotions or vectors)
        missing = [e for e in names if e not in vectors]
        if missing:
            raise BadInputError(f"no vector for {missing}: the vectors are {sorted(vectors)}")
        sites = {vectors[e].site for e in names}
        if len(sites) != 1:
            raise BadInputError(f"the vectors mix sites {sorted(sites)}: meter one site")
        band = tuple(sorted(set(layers)))
        if not band:
            raise BadInputError("a meter needs at least one layer")
        rows = []
        for layer in band:
            stack = []
            for e in names:
                if layer not in vectors[e].directions:
                    raise BadInputError(f"vector {e!r} has no layer {layer}")
                v = vectors[e].directions[layer]
                stack.append(v / v.norm().clamp(min=1e-12))
            rows.append(torch.stack(stack))
        n = len(names)
        first = vectors[names[0]].meta
        card = {k: first[k] for k in ("model_id", "architecture", "hidden_size", "num_layers")
                if k in first}
        card["vectors"] = {e: provenance(vectors[e], band) for e in names}
        return cls(names, sites.pop(), band, torch.stack(rows), torch.zeros(n), torch.ones(n),
                   torch.eye(n), torch.zeros(n), card)

    def band(self) -> dict[int, torch.Tensor]:
        """{layer: (emotions, d_model) unit directions}."""
        return {layer: self.directions[i] for i, layer in enumerate(self.layers)}

    def raw(self, projections: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Band mean of per-layer projections {layer: (..., emotions)}: (..., emotions)."""
        return torch.stack([projections[layer] for layer in self.layers]).mean(0)

    def calibrate(self, raw: torch.Tensor) -> torch.Tensor:
        """0-1 readings from raw band readings (..., emotions)."""
        z = (raw.float().cpu() - self.mean) / self.std
        return torch.sigmoid(z @ self.weight.T + self.bias)

    def check_model(self, model: PreTrainedModel) -> None:
        """Raise VectorMismatchError if the meter was fitted for another model."""
        shape = model_shape(model)
        diffs = shape_differences({k: str(v) for k, v in self.card.items()}, shape)
        if int(shape["hidden_size"]) != self.directions.shape[-1]:
            diffs.append(f"direction length {self.directions.shape[-1]} vs hidden_size "
                         f"{shape['hidden_size']}")
        if diffs:
            raise VectorMismatchError(
                f"the emotion meter {made_for(self.card, shape)} ({'; '.join(diffs)}): fit one "
                "for this model with `python scripts/fit_meter.py --model ... --vectors ...`")

    def matches(self, vectors: Mapping[str, EmotionVector]) -> bool:
        """True when `vectors` hold exactly the directions this meter was fitted with."""
        fitted = self.card.get("vectors", {})
        return all(e in vectors and e in fitted and fitted[e].get("band_sha256") ==
                   provenance(vectors[e], self.layers)["band_sha256"] for e in self.emotions)

    # --- files -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        directions = self.directions.float().contiguous().numpy().tobytes()
        return {"format_version": FORMAT_VERSION, "kind": "emosteer emotion meter",
                "emotions": list(self.emotions), "site": self.site, "layers": list(self.layers),
                "calibration": {"mean": self.mean.tolist(), "std": self.std.tolist(),
                                "weight": self.weight.tolist(), "bias": self.bias.tolist()},
                "directions": {"dtype": "float32 little-endian, base64",
                               "shape": list(self.directions.shape),
                               "data": base64.b64encode(directions).decode("ascii")},
                "card": self.card}

    def save(self, path: str | Path) -> Path:
        """Write the meter as one JSON file, atomically (never pickle)."""
        return write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Meter:
        """Read a file written by `save`; a clear error for anything else."""
        path = Path(path)
        hint = "fit one with `python scripts/fit_meter.py`"
        if not path.is_file():
            raise VectorFileError(f"meter file {path} does not exist: {hint}")
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_json(body)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise VectorFileError(f"{path} is not an emosteer meter file ({err}): {hint}") from None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Meter:
        if body.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {body.get('format_version')!r}, expected "
                             f"{FORMAT_VERSION!r}")
        emotions, layers = tuple(body["emotions"]), tuple(int(i) for i in body["layers"])
        d = body["directions"]
        raw = bytearray(base64.b64decode(d["data"], validate=True))
        directions = torch.frombuffer(raw, dtype=torch.float32).reshape(d["shape"]).clone()
        cal = {k: torch.tensor(v, dtype=torch.float32) for k, v in body["calibration"].items()}
        n = len(emotions)
        if directions.shape[:2] != (len(layers), n) or cal["weight"].shape != (n, n) or any(
                cal[k].shape != (n,) for k in ("mean", "std", "bias")):
            raise ValueError("shapes do not agree with the emotions and layers")
        if not all(torch.isfinite(t).all() for t in (directions, *cal.values())):
            raise ValueError("NaN or infinite values")
        return cls(emotions, cast("Site", body["site"]), layers, directions, cal["mean"],
                   cal["std"], cal["weight"], cal["bias"], dict(body.get("card", {})))


def provenance(vector: EmotionVector, layers: Sequence[int]) -> dict[str, str]:
    """What a meter records of a vector: its metadata and a hash of its band directions."""
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(vector.directions[layer].float().contiguous().numpy().tobytes())
    keep = ("emotion", "method", "dataset", "dataset_sha256", "dataset_version", "created",
            "emosteer_version", "site", "scale", "limit")
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
    meters = [Meter.load(p) for p in sorted(SHIPPED.glob("meter-*.json"))]
    mine = [m for m in meters if m.card.get("model_id") == wanted]
    if vectors is not None:
        mine = [m for m in mine if m.matches(vectors)]
    if not mine:
        which = "these vectors" if vectors is not None else f"model {wanted!r}"
        raise VectorFileError(f"no emotion meter is fitted for {which}: fit one (about a "
                              "minute) with `python scripts/fit_meter.py --vectors <folder> "
                              "--out meter.json` and pass that file")
    return mine[0]
