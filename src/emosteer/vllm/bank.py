"""The served vectors: one folder, loaded once per process, checked against the served model.

No vLLM import: the front-end, the engine and every worker load the same folder (named by
`$EMOSTEER_VECTORS`), and the checks read the served model's Hugging Face config.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from emosteer.bounds import FLOAT32_MAX, MAX_ALPHA
from emosteer.errors import BadInputError, VectorFileError
from emosteer.models import DEFAULT_MODEL_ID, cache_dir
from emosteer.vector_files import check_fits
from emosteer.vectors import DEFAULT_VECTORS, EmotionVector, load_vectors

VECTORS_ENV = "EMOSTEER_VECTORS"  # the folder of <emotion>.safetensors to serve
FORCE_ENV = "EMOSTEER_ALLOW_OTHER_MODEL"  # "1": accept vectors of another model id, same shape

__all__ = ["FORCE_ENV", "VECTORS_ENV", "VectorBank", "config_shape", "served_bank",
           "served_model_id"]


@dataclass(frozen=True, eq=False)
class VectorBank:
    """Every vector of a folder, by emotion name, plus what a worker adds with them.

    Example:
        bank = VectorBank.load("vectors/")
        bank.check(config_shape(hf_config, "HuggingFaceTB/SmolLM2-135M-Instruct"))
        stack = bank.stacked(30)  # (layers, emotions, hidden)
    """

    folder: Path
    vectors: Mapping[str, EmotionVector]
    fingerprint: str  # sha256 of the files' bytes: a cache salt covers the vectors too

    @classmethod
    def load(cls, folder: str | Path) -> VectorBank:
        """The vectors of `folder` (see emosteer.load_vectors), refusing a site not "attn"."""
        folder = DEFAULT_VECTORS if str(folder) == "default" else Path(folder).expanduser()
        vectors = load_vectors(folder)
        other = sorted(name for name, v in vectors.items() if v.site != "attn")
        if other:
            raise VectorFileError(
                f"vectors {other} in {folder} were read at site "
                f"{vectors[other[0]].site!r}; the vLLM plugin adds at the attention output "
                "projection only: extract them with `emosteer extract --site attn`")
        peak = sum(max(float(v.abs().max()) for v in vector.directions.values())
                   for vector in vectors.values())  # what one request can add, per alpha
        if peak * MAX_ALPHA > FLOAT32_MAX:
            raise VectorFileError(
                f"the vectors in {folder} hold values summing to {peak:.3g}: a request mixing "
                f"them at alpha {MAX_ALPHA:g} would overflow float32; re-extract them, or serve "
                "fewer at once")
        digest = hashlib.sha256()
        for path in sorted(folder.glob("*.safetensors")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return cls(folder, vectors, digest.hexdigest()[:16])

    @classmethod
    def from_env(cls) -> VectorBank | None:
        """The bank named by $EMOSTEER_VECTORS; None when it is unset (the plugin is off)."""
        folder = os.environ.get(VECTORS_ENV, "").strip()
        return cls.load(folder) if folder else None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.vectors)

    def check(self, shape: Mapping[str, str], allow_other_model: bool | None = None) -> None:
        """Raise VectorMismatchError naming both models if a vector does not fit `shape`.

        Args:
            shape: the served model's model_id, architecture, hidden_size, num_layers
                (config_shape builds it).
            allow_other_model: accept another model id of the same shape (default:
                $EMOSTEER_ALLOW_OTHER_MODEL is "1").
        """
        if allow_other_model is None:
            allow_other_model = os.environ.get(FORCE_ENV, "") == "1"
        for name, vector in self.vectors.items():
            check_fits(shape, vector.meta, vector.hidden_size, vector.layers,
                       f"vector {name!r} in {self.folder}", "extract vectors for the served "
                       "model with `emosteer extract --model ...`", f"set {FORCE_ENV}=1 (--force)",
                       allow_other_model)

    def stacked(self, num_layers: int) -> torch.Tensor:
        """(num_layers, emotions, hidden) float32: vectors[k].directions[l] at [l, k], zeros
        where a vector has no direction for a layer (that layer is not steered by it)."""
        first = next(iter(self.vectors.values()))
        out = torch.zeros(num_layers, len(self.vectors), first.hidden_size)
        for k, vector in enumerate(self.vectors.values()):
            for layer, direction in vector.directions.items():
                out[layer, k] = direction
        return out

    def weights(self, spec: Mapping[str, float]) -> list[float]:
        """A spec as one weight per served emotion, in `names` order (unknown names: 0)."""
        return [float(spec.get(name, 0.0)) for name in self.vectors]


def served_model_id(model: str) -> str:
    """The model id vector files record for a model vLLM serves, as emosteer.load_model names it.

    emosteer's cached copy of the bundled model is "HuggingFaceTB/SmolLM2-135M-Instruct"; a
    local folder is its folder name; a hub id is itself.

    Example:
        >>> served_model_id("HuggingFaceTB/SmolLM2-135M-Instruct")
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    path = Path(model).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        if resolved == (cache_dir() / "smollm2-135m-instruct").resolve():
            return DEFAULT_MODEL_ID
        return resolved.name
    return model


def config_shape(hf_config: Any, model_id: str) -> dict[str, str]:
    """What a vector must agree on with a served model (emosteer.models.model_shape's keys),
    from its Hugging Face config.

    Args:
        hf_config: the served model's transformers config (vLLM: model_config.hf_config).
        model_id: served_model_id of the served model.
    """
    text = getattr(hf_config, "text_config", None) or hf_config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    if layers is None:
        raise BadInputError(f"the config of {model_id!r} names no layer count "
                            "(num_hidden_layers): emosteer cannot place vectors in it")
    return {"model_id": model_id,
            "architecture": str(getattr(text, "model_type", "unknown")),
            "hidden_size": str(text.hidden_size),
            "num_layers": str(layers)}


def served_bank() -> VectorBank:
    """This process's vectors: the folder $EMOSTEER_VECTORS names now (each folder loaded once,
    so a second engine made in the same process with other vectors is checked against its
    own)."""
    folder = os.environ.get(VECTORS_ENV, "").strip()
    if not folder:
        raise BadInputError(f"${VECTORS_ENV} is not set: point it at a folder of vectors")
    return _bank_of(folder)


@cache
def _bank_of(folder: str) -> VectorBank:
    return VectorBank.load(folder)
