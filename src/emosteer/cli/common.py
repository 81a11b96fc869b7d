"""What several commands do: print, load a model, read a vector folder, save vectors safely.

Text is text: whatever a user or a file gives us (questions, answers, metadata, names,
paths) is printed through `plain` (a string rich reads as markup) or `clean` (a string put
in a `rich.text.Text`), never interpreted as markup or terminal control.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from emosteer.errors import BadInputError, VectorFileError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.vectors import EmotionVector

# emoji=False: ":apple:" in a question stays ":apple:"
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

# what a terminal acts on instead of showing: C0 controls but tab and newline (ESC starts
# ANSI sequences, CR rewrites the line), DEL, C1 controls, and the bidi overrides that
# reorder what is shown
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: object) -> str:
    r"""`text` as a string with each terminal control character shown as an escape.

    For a string that goes into a `rich.text.Text` (never read as markup); `plain` for one
    that rich reads as markup.

    Example:
        >>> clean("ok\x1b[2J")
        'ok\\x1b[2J'
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                        else f"\\u{ord(m[0]):04x}", str(text))


def plain(text: object) -> str:
    r"""`text` ready for a rich markup string (console.print, a Table cell or title): its
    control characters escaped (`clean`) and its square brackets never read as tags.

    Example:
        >>> plain("What does [/INST] mean?")
        'What does \\[/INST] mean?'
    """
    return escape(clean(text))


def writable_folder(folder: Path, option: str = "--out") -> Path:
    """Check, before any model work, that `folder` can be created and written to; raise a
    one-line BadInputError naming `option` when not. Folders made for the check are removed
    again, so nothing is left behind when the command fails later.

    Example:
        writable_folder(Path("circuits"))  # a file named circuits, or /proc/x: BadInputError
    """
    missing = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise BadInputError(f"{option} {folder}: {parent} is a file, not a folder: choose "
                            f"another {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".emosteer-check-"):
            pass
    except OSError as err:
        raise BadInputError(f"cannot write to {option} {folder} "
                            f"({err.strerror or type(err).__name__}): choose a folder you "
                            "can write to") from None
    finally:
        for made in missing:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break
    return folder


def load(model: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a --model spec, with a status line while it loads.

    Example:
        m, tok = load("default")
    """
    from emosteer.models import load_model

    with console.status(f"loading model {plain(model)} ..."), warnings.catch_warnings():
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
