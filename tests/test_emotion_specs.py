"""Emotions as data: a spec file round-trips, a bad one says what is wrong, and the zero-shot
judge reads a spec's own sentences as that spec (a synthetic encoder, then the shipped specs
with the MiniLM encoder on the sentences it never saw)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.emotion_specs import EmotionSpec, load_specs, save_specs, spec_for, specs_hash
from emosteer.errors import BadInputError, UnknownEmotionError
from emosteer.judges.zero_shot import ZeroShotJudge, held_out_accuracy, split

WORDS = ["apple", "pear", "plum", "rain", "storm", "cloud", "train", "bus", "car", "tram"]


def bag_of_words(texts):
    """A synthetic encoder: word counts over WORDS, normalised (plus a small constant)."""
    rows = [[t.lower().count(w) for w in WORDS] + [0.1] for t in texts]
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def synthetic_specs():
    return {
        "fruity": EmotionSpec("fruity", "apple pear plum", examples=(
            "an apple", "a pear and a plum", "plum pie", "apple and pear", "pear", "plum plum",
            "apple tart", "a ripe pear", "plum jam")),
        "stormy": EmotionSpec("stormy", "rain storm cloud", examples=(
            "rain again", "a storm", "cloud and rain", "storm cloud", "more rain", "a cloud",
            "rain rain", "the storm", "grey cloud")),
        "moving": EmotionSpec("moving", "train bus car tram", examples=(
            "the train", "a bus", "car and tram", "tram", "train and bus", "a car", "bus stop",
            "night train", "tram line")),
    }


def test_a_spec_file_round_trips(tmp_path):
    specs = synthetic_specs()
    path = save_specs(tmp_path / "specs.json", specs.values())
    back = load_specs(path)
    assert back == specs and specs_hash(back.values()) == specs_hash(specs.values())
    assert back["fruity"].elicit.startswith("Answer as someone who feels apple pear plum")
    changed = {**specs, "fruity": EmotionSpec("fruity", "apples only")}
    assert specs_hash(changed.values()) != specs_hash(specs.values())


@pytest.mark.parametrize("body, message", [
    ("not json", "not JSON"),
    ({"format": "something else", "version": 1, "emotions": []}, "not an emotion specs file"),
    ({"format": "emosteer-emotion-specs", "version": 9, "emotions": []}, "version 9"),
    ({"format": "emosteer-emotion-specs", "version": 1, "emotions": []}, "non-empty list"),
    ({"format": "emosteer-emotion-specs", "version": 1,
      "emotions": [{"name": "Calm!", "description": "x"}]}, "not usable"),
    ({"format": "emosteer-emotion-specs", "version": 1,
      "emotions": [{"name": "calm", "description": "x", "valence": 3}]}, "valence"),
    ({"format": "emosteer-emotion-specs", "version": 1,
      "emotions": [{"name": "calm", "description": "x", "colour": "blue"}]}, "unknown: colour"),
    ({"format": "emosteer-emotion-specs", "version": 1,
      "emotions": [{"name": "calm", "description": "x"}, {"name": "calm", "description": "y"}]},
     "specified twice"),
    ({"format": "emosteer-emotion-specs", "version": 1,
      "emotions": [{"name": "calm", "description": "x", "examples": "one string"}]},
     "list of strings"),
])
def test_a_bad_spec_file_says_what_is_wrong(tmp_path, body, message):
    path = tmp_path / "bad.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(BadInputError, match=message):
        load_specs(path)


def test_an_unknown_emotion_asks_for_a_description():
    specs = synthetic_specs()
    assert spec_for("fruity", specs=specs) is specs["fruity"]
    assert spec_for("smug", "smug and pleased with oneself", specs=specs).name == "smug"
    with pytest.raises(UnknownEmotionError, match="--emotion smug --describe"):
        spec_for("smug", specs=specs)


def test_the_zero_shot_judge_reads_each_spec_s_own_sentences_as_that_spec():
    judge = ZeroShotJudge(synthetic_specs(), embed=bag_of_words)
    for k, spec in enumerate(judge.specs.values()):
        probs = judge.probabilities(list(spec.examples))
        assert (probs.argmax(-1) == k).all()  # every own sentence ranks its spec first
    accuracy = held_out_accuracy(judge)
    assert {name: row["n"] for name, row in accuracy.items()} == {
        "fruity": 3, "stormy": 3, "moving": 3}
    assert all(row["accuracy"] == 1.0 for row in accuracy.values())
    rating = judge.rate(["?"], ["a storm and rain"])[0]
    assert rating.label == "stormy" and abs(sum(rating.probs.values()) - 1) < 1e-6
    assert judge.temperature in (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
    with pytest.raises(BadInputError, match="at least two"):
        ZeroShotJudge({"fruity": synthetic_specs()["fruity"]}, embed=bag_of_words)


def test_the_split_holds_out_every_third_sentence():
    spec = EmotionSpec("x", "x", examples=tuple(f"s{i}" for i in range(9)))
    train, held = split(spec)
    assert held == ["s2", "s5", "s8"] and len(train) == 6 and not set(train) & set(held)


def test_the_two_halves_read_disjoint_sentences_and_hold_out_the_same_third():
    spec = EmotionSpec("x", "x", examples=tuple(f"s{i}" for i in range(9)))
    a, held_a = split(spec, "a")
    b, held_b = split(spec, "b")
    assert a == ["s0", "s3", "s6"] and b == ["s1", "s4", "s7"]
    assert held_a == held_b == split(spec)[1] and sorted(a + b) == sorted(split(spec)[0])
    judges = [ZeroShotJudge(synthetic_specs(), embed=bag_of_words, half=h) for h in "ab"]
    assert [j.spec for j in judges] == ["zero-shot-a", "zero-shot-b"]
    assert not torch.equal(judges[0].prototypes, judges[1].prototypes)
    with pytest.raises(BadInputError, match="'a' or 'b'"):
        ZeroShotJudge(synthetic_specs(), embed=bag_of_words, half="c")


def test_a_shipped_spec_s_system_prompt_is_its_elicit_sentence():
    from emosteer import data

    assert data.system_prompt("calm") == load_specs()["calm"].elicit
    assert "joy" in data.system_prompt("joy")  # the five keep their template
    with pytest.raises(UnknownEmotionError, match="unknown emotion 'smug'"):
        data.system_prompt("smug")


def test_a_frontier_beyond_the_five_is_judged_by_the_zero_shot_halves():
    from emosteer.evaluate.frontier import FrontierConfig, judges_for

    assert judges_for(["joy", "anger"]) == ("embedded-a", "embedded-b")
    assert judges_for(["joy", "calm"]) == ("zero-shot-a", "zero-shot-b")
    with pytest.raises(BadInputError, match="knows only the five basic emotions, not calm"):
        FrontierConfig(emotions=("joy", "calm"))
    assert FrontierConfig(emotions=("calm",), judges=judges_for(["calm"])).judges[0] == \
        "zero-shot-a"
    from emosteer.cli.frontier import SearchOptions

    assert SearchOptions(emotions=["calm"]).config().judges == ("zero-shot-a", "zero-shot-b")
    assert SearchOptions(emotions=["joy"]).config().judges == ("embedded-a", "embedded-b")


def test_the_shipped_specs_and_the_zero_shot_judge_on_their_held_out_sentences():
    specs = load_specs()
    assert len(specs) == 20 and {"joy", "anger", "calm", "gratitude", "contempt"} <= set(specs)
    for spec in specs.values():
        assert len(spec.examples) == 60 and len(set(spec.examples)) == 60
        assert len(spec.questions) == 6 and -1 <= spec.valence <= 1
    judge = ZeroShotJudge(specs)  # the MiniLM encoder the embedded judge ships
    accuracy = held_out_accuracy(judge)
    mean = sum(row["accuracy"] for row in accuracy.values()) / len(accuracy)
    # measured 0.63 (benchmarks/zero_shot_judge.py); chance is 0.05
    assert mean > 0.4 and min(row["accuracy"] for row in accuracy.values()) > 0.1


def test_extracting_a_described_emotion_writes_a_vector_that_names_its_spec():
    from emosteer.extraction.extract import ExtractConfig, extract
    from emosteer.generation import GenerateConfig

    smug = EmotionSpec("smug", "smug, quietly superior and pleased with oneself")
    cfg = ExtractConfig(emotions=("smug", "calm"), dataset="emotion_specs", specs=(smug,),
                        limit=2, generation=GenerateConfig(max_new_tokens=4, batch_size=2))
    result = extract(tiny_model("llama"), byte_tokenizer(), cfg, progress=False)
    meta = result.vectors["smug"].meta
    assert (meta["spec"], meta["spec_sha256"]) == ("smug", specs_hash([smug]))
    assert meta["dataset"] == "emotion_specs" and meta["spec_description"] == smug.description
    calm = load_specs()["calm"]
    assert result.vectors["calm"].meta["spec_sha256"] == specs_hash([calm])
    # the questions are the specs' generic ones, the emotion asked for with the spec's sentence
    from emosteer import data

    assert {s["id"] for s in result.samples} <= {f"specq-{i:03d}"
                                                 for i in range(len(data.spec_questions()))}
    assert data.elicitation("emotion_specs", "Hi?", "smug", smug.elicit) == ("Hi?", smug.elicit)
    assert data.elicitation("emotion_specs", "Hi?", None)[1] == data.system_prompt(None)
    with pytest.raises(UnknownEmotionError, match="describe it"):
        ExtractConfig(emotions=("smug",), dataset="emotion_specs")


def test_the_cli_extracts_any_emotion_through_its_spec(extract_configs, capsys):
    from emosteer.cli import main

    runs = [["--emotion", "smug", "--describe", "smug and pleased with oneself"],
            ["--emotion", "calm"], ["--emotion", "joy"]]
    for args in runs:
        with pytest.raises(SystemExit):
            main(["extract", "--out", "/nonexistent/never-written", *args])
    smug, calm, joy = extract_configs
    assert smug.dataset == calm.dataset == "emotion_specs" and joy.dataset == "emotion_query"
    assert [s.name for s in smug.specs] == ["smug"] and smug.judge == "zero-shot"
    assert calm.emotions == ("calm",) and calm.specs == () and joy.judge == "embedded-a"
    with pytest.raises(SystemExit):
        main(["extract", "--emotion", "calm,smug", "--describe", "x", "--out", "/nowhere"])
    assert "--describe describes one emotion" in capsys.readouterr().err.replace("\n", " ")


def test_the_server_serves_custom_emotions_and_refuses_unserved_ones_in_openai_shape():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from live_server import random_vectors

    from emosteer.server import ServeConfig, create_app

    model, tok = tiny_model("llama"), byte_tokenizer()
    five = random_vectors(model)
    vectors = {"calm": five["joy"], "gratitude": five["anger"]}  # any names the folder holds
    app = create_app(model, tok, vectors, ServeConfig(max_tokens=8, batch_window=0.0),
                     model_name="tiny")
    with TestClient(app, base_url="http://127.0.0.1") as http:
        listed = http.get("/v1/models").json()["data"][0]
        assert listed["emotions"] == ["calm", "gratitude"]

        def ask(emotion):
            return http.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "How was it?"}],
                "max_tokens": 4, "temperature": 0, "emotion": emotion})

        ok = ask({"calm": 1, "gratitude": 0.5})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
        refused = ask({"nostalgia": 1})
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["code"] == "unknown_emotion"
        assert error["type"] == "invalid_request_error" and error["param"] == "emotion"
        assert "available are calm, gratitude" in error["message"]
        assert "emosteer extract --emotion nostalgia --describe" in error["message"]
