"""The vectors shipped for the bundled model: they load, fit it, and at alpha 1 raise every one of
their emotions on held-out questions (the confirmation run's held-out sample, on which the
frontier chose nothing: docs/frontier.md). Measured 2026-12-02 with the default judge on
those 30 questions, alpha 0 -> 1: joy 0.07 -> 0.77, anger 0.07 -> 0.17, sadness 0.23 -> 0.60,
fear 0.03 -> 0.37, disgust 0.03 -> 0.27."""

from __future__ import annotations

import json

import pytest
import torch

from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.vectors import DEFAULT_VECTORS, load_vectors

FOLDER = DEFAULT_VECTORS


def test_the_twenty_ship_calibrated_with_their_provenance():
    from emosteer.emotion_specs import load_specs

    vectors = load_vectors("default")
    assert set(vectors) == set(load_specs())  # the five, and the 15 other shipped specs
    provenance = json.loads((FOLDER / "provenance.json").read_text())
    beyond = provenance["beyond_the_five"]
    assert set(provenance["emotions"]) == set(VECTOR_EMOTIONS)
    assert set(beyond["emotions"]) == set(vectors) - set(VECTOR_EMOTIONS)
    for emotion, v in vectors.items():
        record = provenance if emotion in VECTOR_EMOTIONS else beyond
        assert v.emotion == emotion and v.meta["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert float(v.meta["calibrated_strength"]) == record["emotions"][emotion]["strength"]
        assert v.meta["method"] == record["method"] and float(v.meta["max_dose"]) > 0
        assert record["emotions"][emotion]["held_out"]["n"] == 30
        assert all(torch.isfinite(d).all() and d.norm() > 0 for d in v.directions.values())
    assert all(vectors[e].meta["spec"] == e for e in beyond["emotions"])  # made from the spec


@pytest.mark.slow
def test_shipped_vectors_fit_the_bundled_model_and_raise_their_emotion(tmp_path, monkeypatch):
    from emosteer.evaluate.conditions import evaluation_queries
    from emosteer.generation import GenerateConfig, generate_text
    from emosteer.judges.registry import load_judge
    from emosteer.models import load_model

    model, tok = load_model("default")
    vectors = load_vectors("default")
    questions = [q.question for q in evaluation_queries(5, seed=1)]  # the frontier's held-out 30
    judge = load_judge("embedded")
    cfg = GenerateConfig(max_new_tokens=48)

    def share(emotion: str, alpha: float) -> float:
        answers = generate_text(model, tok, questions, vectors[emotion], alpha, cfg=cfg)
        return sum(r.label == emotion for r in judge.rate(questions, answers)) / len(questions)

    for emotion in VECTOR_EMOTIONS:  # all five, on the held-out questions above
        vectors[emotion].check_model(model)
        before, after = share(emotion, 0.0), share(emotion, 1.0)
        assert after > before, f"{emotion}: {before:.2f} at alpha 0, {after:.2f} at alpha 1"

    # right after install: no ./vectors, no extraction
    from emosteer.cli import main

    monkeypatch.chdir(tmp_path)
    for emotion in ("anger", "calm"):  # one of the five, one beyond them
        with pytest.raises(SystemExit) as stop:
            main(["generate", "How was your day?", "--emotion", emotion, "--max-new-tokens", "8"])
        assert stop.value.code == 0


def test_the_demo_questions_exist_and_were_never_extracted_from():
    from emosteer import data
    from emosteer.cli.demo import DEMO_QUESTIONS

    held = {q.id for q in data.load_queries("emotion_query_plus")}
    assert set(DEMO_QUESTIONS) <= held
    assert not set(DEMO_QUESTIONS) & {q.id for q in data.load_queries("emotion_query")}
