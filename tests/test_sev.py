"""SEV (Scenario-Event with Valence) data file, read directly as JSON lines."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

SEV = Path(__file__).resolve().parents[1] / "src" / "emosteer" / "data" / "sev.jsonl"
VALENCES = ("positive", "neutral", "negative")
SPLITS = {"discovery", "test"}

# Emotion words and close synonyms (with their usual inflections) that must not appear in a
# scenario or an event: the emotion is requested by the instruction, never by the event.
_EMOTION_TEXT = """
    happy happier happiest happily happiness unhappy joy joyful joyous overjoyed glad gladly
    cheerful delighted delight delightful elated ecstatic thrilled excited excitement exciting
    pleased pleasure content contented bliss blissful grateful gratitude love loved loving sad
    sadder saddest sadly sadness unhappily sorrow sorrowful grief grieving grieve mourn mourning
    miserable misery depressed depressing gloomy heartbroken heartbreaking tearful tears cry
    cried crying weep wept lonely loneliness despair hopeless disappointed disappointing
    disappointment regret angry angrier angrily anger furious fury rage raging enraged irritated
    irritating annoyed annoying annoyance mad livid outraged outrage resentful resentment
    frustrated frustrating frustration hate hated hatred bitter indignant afraid fear feared
    fearful scared scary scare scares frightened frightening fright terrified terrifying terror
    panic panicked panicking anxious anxiety nervous nervously worried worry worrying dread
    dreaded alarmed horrified horror uneasy disgust disgusted disgusting gross grossed revolted
    revolting repulsed repulsive sickened nauseated nauseating vile surprise surprised
    surprising surprisingly shock shocked shocking astonished astonishing amazed amazing
    astounded stunned startled ashamed shame embarrassed embarrassing embarrassment guilty guilt
    proud pride jealous envious relieved relief calm emotion emotional emotions feel feeling
    feelings felt mood unfortunately fortunately luckily
"""
EMOTION_WORDS = frozenset(_EMOTION_TEXT.split())


def rows() -> list[dict]:
    with SEV.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def sev() -> list[dict]:
    return rows()


def test_shape_and_counts(sev):
    assert len(sev) >= 200
    assert sum(r["split"] == "test" for r in sev) >= 80
    for r in sev:
        assert set(r) == {"id", "theme", "scenario", "events", "split"}, r
        assert re.fullmatch(r"sev-\d{4}", r["id"]), r
        assert r["split"] in SPLITS, r
        assert r["scenario"].strip() and r["theme"].strip(), r
        assert set(r["events"]) == set(VALENCES), r
        for v in VALENCES:
            assert isinstance(r["events"][v], str) and r["events"][v].strip(), (r["id"], v)
        assert len(set(r["events"].values())) == 3, r


def test_ids_are_unique(sev):
    ids = [r["id"] for r in sev]
    assert len(ids) == len(set(ids))


def test_themes_are_spread_and_each_has_both_splits(sev):
    themes = Counter(r["theme"] for r in sev)
    assert 12 <= len(themes) <= 16, themes
    assert max(themes.values()) <= 2 * min(themes.values()), themes
    for theme in themes:
        assert {r["split"] for r in sev if r["theme"] == theme} == SPLITS, theme


def test_no_emotion_words(sev):
    for r in sev:
        for field, text in [("scenario", r["scenario"]), *r["events"].items()]:
            found = words(text) & EMOTION_WORDS
            assert not found, (r["id"], field, sorted(found))


def test_splits_are_disjoint(sev):
    test = [r for r in sev if r["split"] == "test"]
    disc = [r for r in sev if r["split"] == "discovery"]
    assert {r["id"] for r in test}.isdisjoint(r["id"] for r in disc)
    assert {r["scenario"] for r in test}.isdisjoint(r["scenario"] for r in disc)
    test_events = {e for r in test for e in r["events"].values()}
    assert test_events.isdisjoint(e for r in disc for e in r["events"].values())


def test_no_near_duplicate_scenarios(sev):
    bags = [(r["id"], words(r["scenario"])) for r in sev]
    for (a, wa), (b, wb) in itertools.combinations(bags, 2):
        assert len(wa & wb) / min(len(wa), len(wb)) <= 0.7, (a, b)
