"""Shipped datasets: counts, disjointness, deterministic sampling and splits."""

from __future__ import annotations

import pytest

from emosteer import data
from emosteer.errors import UnknownEmotionError
from emosteer.vectors import EMOTIONS


def words(text: str) -> set[str]:
    return set("".join(c.lower() if c.isalnum() else " " for c in text).split())


def test_emotion_query_has_100_per_emotion():
    queries = data.load_queries("emotion_query")
    assert [q.emotion for q in queries].count("joy") == 100
    assert data.emotions_of("emotion_query") == list(EMOTIONS)
    assert len(queries) == 500 and len({q.id for q in queries}) == 500


def test_emotion_query_plus_is_disjoint_from_extraction_queries():
    plus = data.load_queries("emotion_query_plus")
    assert len(plus) == 400 and sum(q.emotion == "neutral" for q in plus) == 150
    train = [words(q.question) for q in data.load_queries("emotion_query")]
    for q in plus:
        w = words(q.question)
        overlap = max(len(w & t) / max(len(w), 1) for t in train)
        assert overlap <= 0.6, q


def test_limit_is_a_seeded_sample():
    a = data.load_queries("emotion_query", ["fear"], limit=10, seed=3)
    assert a == data.load_queries("emotion_query", ["fear"], limit=10, seed=3)
    assert a != data.load_queries("emotion_query", ["fear"], limit=10, seed=4)
    assert len(a) == 10 and all(q.emotion == "fear" for q in a)


def test_split_is_deterministic_and_complete():
    queries = data.load_queries("emotion_query", ["joy"])
    train, held = data.split(queries, 0.2, seed=0)
    assert (train, held) == data.split(queries, 0.2, seed=0)
    assert sorted(q.id for q in train + held) == sorted(q.id for q in queries)
    assert 10 <= len(held) <= 30


def test_versions_and_hashes():
    info = data.dataset_info("emotion_query")
    assert info.version == data.DATASETS["emotion_query"] and len(info.sha256) == 64


def test_unknown_emotion_and_prompts():
    with pytest.raises(UnknownEmotionError, match="'glee'.*joy"):
        data.load_queries("emotion_query", ["glee"])
    assert "furious" in data.system_prompt("anger")
    assert data.system_prompt(None) == data.system_prompt("neutral")
