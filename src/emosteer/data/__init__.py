"""Shipped datasets (versioned JSONL written by the emosteer team) and prompt templates."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from emosteer.errors import EmosteerError, UnknownEmotionError

DATA_DIR = Path(__file__).parent
DATASETS = {  # name -> version; bump the version whenever a file changes
    "emotion_query": "1.0",  # 5 emotions x 100 questions, for extraction
    "emotion_query_plus": "1.0",  # 250 emotion + 150 neutral questions, for evaluation only
    "emotion_corpus": "1.1",  # labelled sentences for the embedded emotion judge
    "sev": "1.0",  # scenario skeletons with one event per valence, for emotion circuits
    "written_answers": "1.0",  # an emotional and a neutral answer we wrote per emotion_query
}
VALENCES = ("positive", "neutral", "negative")


@dataclass(frozen=True)
class Query:
    id: str
    emotion: str
    question: str


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    version: str
    sha256: str


def dataset_path(name: str) -> Path:
    if name not in DATASETS:
        raise EmosteerError(f"unknown dataset {name!r}: shipped are {', '.join(DATASETS)}")
    return DATA_DIR / f"{name}.jsonl"


@cache
def dataset_info(name: str) -> DatasetInfo:
    if name == "emotion_specs":  # a JSON file of its own format (emosteer.emotion_specs)
        from emosteer.emotion_specs import SHIPPED_SPECS, VERSION

        return DatasetInfo(name, str(VERSION),
                           hashlib.sha256(SHIPPED_SPECS.read_bytes()).hexdigest())
    digest = hashlib.sha256(dataset_path(name).read_bytes()).hexdigest()
    return DatasetInfo(name, DATASETS[name], digest)


@cache
def _rows(name: str) -> tuple[dict, ...]:
    with dataset_path(name).open(encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def emotions_of(name: str) -> list[str]:
    if name == "sev":  # scenes carry no emotion: every emotion the templates can ask for
        return list(templates()["adjectives"])
    if name == "emotion_specs":  # the shipped specs (ExtractConfig.specs adds a user's own)
        from emosteer.emotion_specs import load_specs

        return list(load_specs())
    return list(dict.fromkeys(row["emotion"] for row in _rows(name)))


EXTRACTION_DATASETS = ("emotion_query", "sev", "emotion_specs")
"""What extraction can read: EmotionQuery's questions (the emotion asked for in the system
prompt), SEV's discovery scenes (the emotion asked for in the reply request, as the circuits
paper elicits; the test scenes are never read), or, for any emotion spec, the generic
questions of all shipped specs (the spec's elicit sentence as the system prompt)."""


def spec_questions() -> list[str]:
    """The generic questions extraction asks for any emotion spec: every shipped spec's
    everyday questions, none presupposing an emotion (120 for the 20 shipped specs)."""
    from emosteer.emotion_specs import load_specs

    return list(dict.fromkeys(q for spec in load_specs().values() for q in spec.questions))


def extraction_queries(name: str, emotions: list[str], limit: int | None = None,
                       seed: int = 0) -> list[Query]:
    """The queries extraction answers: a seeded sample of `limit` per emotion.

    Example:
        extraction_queries("sev", ["anger"], 40)  # 40 discovery scenes, id "sev-0001:negative"
    """
    if name not in EXTRACTION_DATASETS:
        raise EmosteerError(f"extraction reads {' or '.join(EXTRACTION_DATASETS)}, not {name!r}")
    if name == "emotion_specs":
        questions = spec_questions()
        pool = [Query(f"specq-{i:03d}", e, q) for e in emotions for i, q in enumerate(questions)]
        return sample(pool, limit, seed, emotions)
    if name != "sev":
        return load_queries(name, emotions, limit, seed)
    scenes = load_sev("discovery")
    pool = [Query(f"{s.id}:{s.valence}", e, s.text) for e in emotions for s in scenes]
    return sample(pool, limit, seed, emotions)


def elicitation(name: str, question: str, emotion: str | None,
                elicit: str | None = None) -> tuple[str, str | None]:
    """(user message, system prompt) asking for `emotion` (None: the neutral request).

    Args:
        name: the extraction dataset.
        question: the question (or SEV scene).
        emotion: the emotion asked for; None: the neutral request.
        elicit: for "emotion_specs", the spec's system prompt (default: the shipped spec's).

    Example:
        user, system = elicitation("emotion_query", "How was your day?", "joy")
    """
    if name == "sev":
        return sev_message(question, emotion), None
    if name == "emotion_specs" and emotion is not None:
        if elicit is None:
            from emosteer.emotion_specs import spec_for

            elicit = spec_for(emotion).elicit
        return question, elicit
    return question, system_prompt(emotion)


def load_queries(name: str = "emotion_query", emotions: list[str] | None = None,
                 limit: int | None = None, seed: int = 0) -> list[Query]:
    """Questions of the chosen emotions; with limit, a seeded sample of `limit` per emotion."""
    known = emotions_of(name)
    for emotion in emotions or []:
        if emotion not in known:
            raise UnknownEmotionError(f"unknown emotion {emotion!r} for dataset {name}: "
                                      f"choose from {', '.join(known)}")
    queries = [Query(r["id"], r["emotion"], r["question"]) for r in _rows(name)]
    return sample(queries, limit, seed, emotions or known)


def sample(queries: list[Query], limit: int | None, seed: int = 0,
           emotions: list[str] | None = None) -> list[Query]:
    """A seeded sample of `limit` queries per emotion (all when limit is None), by emotion.

    Example:
        sample(split(load_queries("emotion_query_plus"), 0.2)[0], 5, emotions=["joy"])
    """
    out = []
    for emotion in emotions or list(dict.fromkeys(q.emotion for q in queries)):
        rows = [q for q in queries if q.emotion == emotion]
        if limit is not None and limit < len(rows):
            rows = sorted(random.Random(f"{seed}:{emotion}").sample(rows, limit),
                          key=lambda q: q.id)
        out.extend(rows)
    return out


@dataclass(frozen=True)
class WrittenAnswer:
    """Two answers we wrote to one emotion_query question: in its emotion, and neutral."""

    id: str  # the emotion_query id it answers
    emotional: str
    neutral: str


def written_answers() -> dict[str, WrittenAnswer]:
    """emotion_query id -> the answers we wrote to it (extraction's answers="written").

    The two answers tell the same facts in the first person, 2-4 sentences each; only the
    emotion differs, so their difference carries the emotion and not the content.

    Example:
        written_answers()["eq-anger-001"].emotional
    """
    return {r["id"]: WrittenAnswer(r["id"], r["emotional"], r["neutral"])
            for r in _rows("written_answers")}


def held_out_flags(ids: list[str], share: float = 0.2, seed: int = 0) -> list[bool]:
    """Deterministic held-out flag per id: a seeded hash, so the split never depends on order."""
    def score(i: str) -> float:
        digest = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return [score(i) < share for i in ids]


def split(queries: list[Query], held_out: float, seed: int = 0) -> tuple[list[Query], list[Query]]:
    """Deterministic (train, held_out) split by a seeded hash of each query id."""
    flags = held_out_flags([q.id for q in queries], held_out, seed)
    return ([q for q, f in zip(queries, flags, strict=True) if not f],
            [q for q, f in zip(queries, flags, strict=True) if f])


@dataclass(frozen=True)
class Scene:
    """One SEV context: a skeleton's scenario with the event of one valence."""

    id: str  # skeleton id
    theme: str
    valence: str
    text: str  # scenario and event, as the user describes them


def load_sev(split: str, limit: int | None = None, seed: int = 0) -> list[Scene]:
    """SEV scenes of a split ("discovery" or "test"): every valence of each skeleton.

    With limit, a seeded sample of `limit` skeletons. The test split is never used to find
    directions or components.
    """
    if split not in ("discovery", "test"):
        raise EmosteerError(f"unknown SEV split {split!r}: use 'discovery' or 'test'")
    rows = [r for r in _rows("sev") if r["split"] == split]
    if limit is not None and limit < len(rows):
        rows = sorted(random.Random(f"{seed}:sev:{split}").sample(rows, limit),
                      key=lambda r: r["id"])
    return [Scene(r["id"], r["theme"], v, f"{r['scenario']} {r['events'][v]}")
            for r in rows for v in VALENCES]


def sev_request(scene: Scene, emotion: str | None) -> str:
    """The user message for a scene: the emotion asked for explicitly, or the neutral ask."""
    return sev_message(scene.text, emotion)


def sev_message(text: str, emotion: str | None) -> str:
    """The user message for a scene's text (sev_request)."""
    t = templates()
    if emotion is None or emotion == "neutral":
        return f"{text}\n\n{t['sev_neutral']}"
    if emotion not in t["adjectives"]:
        raise UnknownEmotionError(f"unknown emotion {emotion!r}: choose from "
                                  f"{', '.join(t['adjectives'])}")
    return f"{text}\n\n" + t["sev_emotion"].format(adjective=t["adjectives"][emotion],
                                                        emotion=emotion)


@cache
def templates() -> dict:
    return json.loads((DATA_DIR / "templates.json").read_text(encoding="utf-8"))


def system_prompt(emotion: str | None) -> str:
    """The neutral system prompt (emotion None) or the one asking for `emotion` (the five's
    template, or a shipped emotion spec's elicit sentence)."""
    t = templates()
    if emotion is None or emotion == "neutral":
        return t["neutral_system"]
    if emotion not in t["adjectives"]:  # beyond the five: a shipped spec's elicit sentence
        from emosteer.emotion_specs import load_specs

        specs = load_specs()
        if emotion in specs:
            return specs[emotion].elicit
        raise UnknownEmotionError(f"unknown emotion {emotion!r}: choose from "
                                  f"{', '.join(specs)}")
    return t["emotion_system"].format(adjective=t["adjectives"][emotion], emotion=emotion)
