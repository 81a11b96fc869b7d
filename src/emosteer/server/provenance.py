"""Where the served vectors came from, as `/v1/models` shows it under `emosteer`.

Each vector file records how it was made (safetensors metadata, `emosteer.vectors`); this
picks the facts a user needs to trust a mix (method and filter, calibrated strength, the
judge that filtered or calibrated, the model, when) and says whether the folder is the one
shipped for the bundled model or one given to `--vectors` (by its name: no server path is
shown).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emosteer.vectors import DEFAULT_VECTORS, EmotionVector

__all__ = ["FIELDS", "describe", "source_of", "vector_facts"]

# metadata key -> the name shown; kept as the file has them (strings), numbers parsed
FIELDS = {"method": "method", "filter": "filter", "calibrated_strength": "calibrated_strength",
          "calibration": "calibration", "judge": "judge", "model_id": "model",
          "dataset": "dataset", "n_queries": "n_queries", "band": "band",
          "created": "created"}
NUMBERS = {"calibrated_strength": float, "n_queries": int}


def source_of(folder: str | Path | None) -> dict[str, str | None]:
    """{"kind": "shipped" | "folder" | "library", "folder": its name or None}.

    Example:
        source_of(DEFAULT_VECTORS)  # {"kind": "shipped", "folder": "smollm2-135m-instruct"}
    """
    if folder is None:  # create_app called with vectors built in Python
        return {"kind": "library", "folder": None}
    path = Path(folder)
    shipped = path.resolve() == DEFAULT_VECTORS.resolve()
    return {"kind": "shipped" if shipped else "folder", "folder": path.resolve().name}


def vector_facts(vector: EmotionVector) -> dict[str, Any]:
    """The provenance of one vector from its metadata (keys it lacks are left out).

    Example:
        vector_facts(load_vectors("default")["joy"])["calibrated_strength"]  # 0.5
    """
    out: dict[str, Any] = {}
    for key, shown in FIELDS.items():
        value = vector.meta.get(key)
        if value in (None, "", "-"):
            continue
        try:
            out[shown] = NUMBERS[key](value) if key in NUMBERS else value
        except ValueError:
            out[shown] = value
    return out


def describe(vectors: Mapping[str, EmotionVector], folder: str | Path | None,
             site: str | None) -> dict[str, Any]:
    """The `emosteer` object of a /v1/models entry (without the meter and judge fields).

    Example:
        describe(load_vectors("default"), DEFAULT_VECTORS, "attn")["vectors"]["joy"]["method"]
    """
    return {"emotions": sorted(vectors), "site": site, "source": source_of(folder),
            "vectors": {name: vector_facts(vectors[name]) for name in sorted(vectors)}}
