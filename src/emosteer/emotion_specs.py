"""An emotion as data: a spec (name, one-line description, the sentence that asks a model for
it, where it sits in valence and arousal, example sentences, eliciting questions), in a small
versioned JSON file. The 20 emotions emosteer ships are specs (data/emotion_specs.json, written
by us, datasheet in data/DATASHEET.md); a user's own emotion is one more spec, from a file or
from a name and a description.

File format:
    {"format": "emosteer-emotion-specs", "version": 1, "emotions": [
        {"name": "calm", "description": "...", "elicit": "...", "valence": 0.6,
         "arousal": -0.7, "examples": ["...", ...], "questions": ["...", ...]}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from emosteer.errors import BadInputError, UnknownEmotionError
from emosteer.files import write_text

FORMAT = "emosteer-emotion-specs"
VERSION = 1
SHIPPED_SPECS = Path(__file__).parent / "data" / "emotion_specs.json"
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_TEXT = 400  # characters in a description, prompt, example or question

__all__ = ["EmotionSpec", "load_specs", "save_specs", "spec_for", "specs_hash"]


@dataclass(frozen=True)
class EmotionSpec:
    """One emotion, as data.

    Args:
        name: lowercase, what requests and files call it ("calm", "gratitude").
        description: one line, what it feels like ("calm, composed and reassuring").
        elicit: the system prompt asking a model to answer feeling it (default: built from the
            description).
        valence, arousal: where it sits, each in [-1, 1] (None: not given).
        examples: sentences that express it (the zero-shot judge learns from them).
        questions: everyday questions whose answers can carry it without presupposing it.

    Example:
        EmotionSpec("calm", "calm, composed and reassuring")
    """

    name: str
    description: str
    elicit: str = ""
    valence: float | None = None
    arousal: float | None = None
    examples: tuple[str, ...] = field(default_factory=tuple)
    questions: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        where = f"emotion spec {self.name!r}"
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise BadInputError(f"emotion name {self.name!r} is not usable: use 1-32 lowercase "
                                "letters, digits, '-' or '_', starting with a letter (e.g. calm)")
        _text(self.description, f"{where}: description")
        if not self.elicit:
            object.__setattr__(self, "elicit", f"Answer as someone who feels {self.description}"
                               ", and let it show in every sentence.")
        _text(self.elicit, f"{where}: elicit")
        for key in ("valence", "arousal"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not math.isfinite(value) or abs(value) > 1):
                raise BadInputError(f"{where}: {key} must be a number in [-1, 1], not {value!r}")
        for key in ("examples", "questions"):
            items = getattr(self, key)
            if isinstance(items, str) or not isinstance(items, Iterable):
                raise BadInputError(f"{where}: {key} must be a list of strings")
            items = tuple(items)
            for i, text in enumerate(items):
                _text(text, f"{where}: {key}[{i}]")
            object.__setattr__(self, key, items)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _text(value: object, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{where} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise BadInputError(f"{where} has {len(value)} characters; keep it under {MAX_TEXT}")


def load_specs(path: str | Path | None = None) -> dict[str, EmotionSpec]:
    """name -> EmotionSpec, from a specs file (default: the 20 shipped ones).

    Raises BadInputError naming the file and what is wrong with it (never unpickles).

    Example:
        load_specs()["gratitude"].description
    """
    if path is None:  # read once per process: extraction asks for it per batch and emotion
        return dict(_shipped_specs())
    return _read_specs(Path(path).expanduser())


@cache
def _shipped_specs() -> dict[str, EmotionSpec]:
    return _read_specs(SHIPPED_SPECS)


def _read_specs(path: Path) -> dict[str, EmotionSpec]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"no emotion specs file at {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(f"{path} is not an emotion specs file (not JSON: {err})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadInputError(f"{path} is not an emotion specs file (its \"format\" is not "
                            f"{FORMAT!r}): write one with emosteer.emotion_specs.save_specs")
    if body.get("version") != VERSION:
        raise BadInputError(f"{path} has specs version {body.get('version')!r}; this emosteer "
                            f"reads version {VERSION}")
    entries = body.get("emotions")
    if not isinstance(entries, list) or not entries:
        raise BadInputError(f"{path}: \"emotions\" must be a non-empty list of specs")
    specs: dict[str, EmotionSpec] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadInputError(f"{path}: emotions[{i}] is not an object")
        known = {"name", "description", "elicit", "valence", "arousal", "examples", "questions"}
        unknown = sorted(set(entry) - known)
        if unknown or "name" not in entry or "description" not in entry:
            raise BadInputError(f"{path}: emotions[{i}] needs name and description and may have "
                                f"{', '.join(sorted(known - {'name', 'description'}))}"
                                + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        spec = EmotionSpec(**entry)
        if spec.name in specs:
            raise BadInputError(f"{path}: emotion {spec.name!r} is specified twice")
        specs[spec.name] = spec
    return specs


def save_specs(path: str | Path, specs: Iterable[EmotionSpec]) -> Path:
    """Write specs as a versioned JSON file, atomically."""
    body = {"format": FORMAT, "version": VERSION, "emotions": [s.to_json() for s in specs]}
    return write_text(path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")


def spec_for(name: str, describe: str | None = None,
             specs: Mapping[str, EmotionSpec] | None = None) -> EmotionSpec:
    """The spec of `name`: a shipped (or given) one, or a new one from `describe`.

    Example:
        spec_for("calm")  # shipped
        spec_for("smug", "smug, quietly superior and pleased with oneself")
    """
    specs = load_specs() if specs is None else specs
    if describe:
        return EmotionSpec(name, describe)
    if name in specs:
        return specs[name]
    raise UnknownEmotionError(f"no spec for emotion {name!r} (specified: {', '.join(specs)}): "
                              f"describe it, e.g. --emotion {name} --describe \"...\"")


def specs_hash(specs: Iterable[EmotionSpec]) -> str:
    """A short sha256 of the specs' content: part of what a vector or judge records."""
    text = json.dumps([s.to_json() for s in specs], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
