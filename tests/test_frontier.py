"""The method frontier and its second judge: judges A and B on disjoint halves of the corpus,
the selection rule on synthetic scores, and the whole frontier on a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from emosteer.data import dataset_info, dataset_path
from emosteer.data import held_out_flags as held_out
from emosteer.evaluate.classifier import LABELS, features, shipped, training_flags
from emosteer.evaluate.judges import load_judge


# --- judges A and B --------------------------------------------------------------------------
def _corpus() -> list[dict]:
    return [json.loads(line) for line in dataset_path("emotion_corpus").read_text().splitlines()
            if line.strip()]


def test_judges_a_and_b_are_registered_and_differ():
    a, b = load_judge("embedded-a"), load_judge("embedded-b")
    assert (a.spec, b.spec) == ("embedded-a", "embedded-b")
    assert a.version != b.version != load_judge("embedded").version
    assert shipped("a").card["half"] == "a" and shipped("b").card["half"] == "b"


def test_judges_a_and_b_never_saw_the_same_sentence_nor_the_held_out_part():
    ids = [r["id"] for r in _corpus()]
    test = held_out(ids, 0.2, 0)
    seen = {}
    for half in "ab":
        card = shipped(half).card
        assert card["corpus_sha256"] == dataset_info("emotion_corpus").sha256
        flags = training_flags(ids, card["held_out_share"], card["split_seed"], half,
                               card["half_seed"])
        seen[half] = {i for i, f in zip(ids, flags, strict=True) if f}
        assert seen[half] == set(card["train_ids"]) and len(seen[half]) == card["n_train"]
        assert not seen[half] & {i for i, t in zip(ids, test, strict=True) if t}
    assert not seen["a"] & seen["b"]
    # together they cover the whole training part of the default judge
    assert seen["a"] | seen["b"] == {i for i, f in zip(ids, training_flags(ids), strict=True)
                                     if f}


def test_judges_a_and_b_reach_80_percent_on_sentences_neither_saw():
    """Recomputed from the corpus and the weights, not read from the cards."""
    rows = _corpus()
    test = [r for r, t in zip(rows, held_out([r["id"] for r in rows], 0.2, 0), strict=True) if t]
    x = features([r["text"] for r in test])
    truth = torch.tensor([LABELS.index(r["label"]) for r in test])
    for half in "ab":
        heads = shipped(half)
        accuracy = float((heads.probs(x).argmax(-1) == truth).float().mean())
        assert len(test) == heads.card["n_held_out"]
        assert accuracy >= 0.8
        assert abs(accuracy - heads.card["held_out_accuracy"]) < 2e-3


def test_training_flags_split_the_training_part_in_two():
    ids = [f"s-{i}" for i in range(1000)]
    a, b, whole = training_flags(ids, half="a"), training_flags(ids, half="b"), training_flags(ids)
    assert not any(x and y for x, y in zip(a, b, strict=True))
    assert [x or y for x, y in zip(a, b, strict=True)] == whole
    assert 350 < sum(a) < 450 and 350 < sum(b) < 450
    with pytest.raises(ValueError, match="half"):
        training_flags(ids, half="c")
