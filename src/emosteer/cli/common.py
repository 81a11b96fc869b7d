"""What several commands do: print, load a model, read a vector folder, save vectors safely."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from emosteer.errors import BadInputError, VectorFileError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.vectors import EmotionVector

console = Console()
err_console = Console(stderr=True)


def load(model: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a --model spec, with a status line while it loads.

    Example:
        m, tok = load("default")
    """
    from emosteer.models import load_model

    with console.status(f"loading model {model} ..."), warnings.catch_warnings():
        # torch warns about pickle protocols while refusing a pickle: the error says it all
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        return load_model(model)


def vectors_in(folder: Path, option: str = "--vectors") -> dict[str, EmotionVector]:
    """Every vector file of `folder` by file stem, or an error naming the option to use.

    The default folder (./vectors), when it holds no vectors, falls back to the vectors shipped
    for the bundled model, so `emosteer generate --emotion anger` works right after install.

    Example:
        vectors = vectors_in(Path("vectors"))  # {"joy": ..., "base": ...}
    """
    from emosteer.cli.options import VECTORS
    from emosteer.vectors import EmotionVector, shipped_vectors

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files and folder == VECTORS and (shipped := shipped_vectors()):
        console.print("[dim]no ./vectors folder: using the vectors shipped for the bundled "
                      "model (emosteer.load_vectors('default'))[/dim]")
        return shipped
    if not files:
        raise VectorFileError(f"no vector files in {folder}: run `emosteer extract --out "
                              f"{folder}` first, or pass the folder with {option}")
    return {f.stem: EmotionVector.load(f) for f in files}


def refuse_overwrite(folder: Path, names: Iterable[str], overwrite: bool) -> None:
    """Raise unless none of `folder`/<names> exists (or overwrite is True); lists them.

    Example:
        refuse_overwrite(Path("vectors"), ["joy.safetensors", "base.safetensors"], False)
    """
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise BadInputError(f"{folder}/ already holds {', '.join(existing)}: pass --overwrite "
                            "to replace them, or choose another --out folder")


def save_vectors(folder: Path, vectors: Mapping[str, EmotionVector],
                 samples: list[dict] | None = None) -> list[Path]:
    """Write <name>.safetensors for each vector (and samples.jsonl), each file atomically.

    Example:
        save_vectors(Path("vectors"), result.vectors, result.samples)
    """
    from emosteer.files import write_text

    paths = [vector.save(folder / f"{name}.safetensors") for name, vector in vectors.items()]
    if samples is not None:
        lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        paths.append(write_text(folder / "samples.jsonl", lines))
    return paths
