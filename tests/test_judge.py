"""Judges: the embedded MiniLM classifier, the hf: backend (tiny random models) and the openai:
LLM judge against a fake server on loopback."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import byte_tokenizer

from emosteer.data import held_out_flags as held_out
from emosteer.errors import BadInputError
from emosteer.judges.embedded import (
    LABELS,
    LinearJudge,
    confusion,
    fit_softmax,
    shipped,
    train,
)
from emosteer.judges.llm import OpenAIJudge, parse_reply
from emosteer.judges.registry import SCORED, JudgeError, load_judge

# --- the embedded judge ---------------------------------------------------------------------------
CLEAR = {  # written for this test, not in the corpus
    "joy": "We won the championship and I can't stop smiling, this is the best day ever!",
    "anger": "How dare you lie to my face again? I am absolutely furious.",
    "sadness": "Since she passed, the house feels empty and I cry every night.",
    "fear": "I heard footsteps behind me in the dark alley and my heart pounded with terror.",
    "disgust": "The sink was full of rotting food and maggots; I gagged at the stench.",
    "surprise": "Wait, what? You're moving to Japan tomorrow? I had no idea!",
    "neutral": "The meeting is at 3 pm in room 12; bring the quarterly figures.",
}
NAMING_EMOTIONS = [  # neutral sentences that only mention emotion words
    "The report covers anger management programs.",
    "The psychology module has a lecture on fear and disgust next Monday.",
    "Sadness is one of the six basic emotions in Ekman's list.",
    "Our survey asked staff how often they felt joy or anger at work.",
]
POLITE = ["I'm glad I could help! The museum opens at ten and closes at six.",
          "Great question! Water boils at 100 degrees Celsius at sea level."]


@pytest.fixture(scope="module")
def embedded():
    return load_judge("embedded")


def test_embedded_judge_reads_each_emotion(embedded):
    ratings = embedded.rate(list(CLEAR.values()), list(CLEAR.values()))
    assert [r.label for r in ratings] == list(CLEAR)
    for r in ratings:
        assert abs(sum(r.probs.values()) - 1) < 1e-5
        assert set(r.scores) == set(SCORED) and all(0 <= s <= 100 for s in r.scores.values())
    assert embedded.eas_is_proxy  # the EAS of this backend is labelled a proxy


def test_embedded_judge_is_not_fooled_by_emotion_words_or_politeness(embedded):
    texts = NAMING_EMOTIONS + POLITE
    assert [r.label for r in embedded.rate(texts, texts)] == ["neutral"] * len(texts)


def test_shipped_card_reports_the_held_out_split():
    card = shipped().card
    assert card["n_held_out"] > 200 and 0 < card["held_out_accuracy"] <= 1
    counts = torch.tensor(card["held_out_confusion"])
    assert counts.shape == (7, 7) and int(counts.sum()) == card["n_held_out"]
    assert abs(float(counts.trace()) / card["n_held_out"] - card["held_out_accuracy"]) < 1e-3


def test_shipped_weights_reach_85_percent_on_the_held_out_split(embedded):
    """Recomputed from the corpus and the shipped weights, not read from the card."""
    from emosteer.data import dataset_info, dataset_path

    card = embedded.heads.card
    assert card["corpus_sha256"] == dataset_info("emotion_corpus").sha256  # trained on this file
    rows = [json.loads(line) for line in dataset_path("emotion_corpus").read_text().splitlines()
            if line.strip()]
    flags = held_out([r["id"] for r in rows], card["held_out_share"], card["split_seed"])
    test = [r for r, f in zip(rows, flags, strict=True) if f]
    predicted = [x["label"] for x in embedded.classify([r["text"] for r in test])]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, test, strict=True)) / len(test)
    assert len(test) == card["n_held_out"]
    assert accuracy >= 0.85
    assert abs(accuracy - card["held_out_accuracy"]) < 2e-3


def test_linear_judge_round_trip_is_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g)
    y = torch.arange(40) % len(LABELS)
    judge = train(x, y, LABELS, l2=0.1, card={"note": "test"})
    loaded = LinearJudge.load(judge.save(tmp_path / "j.safetensors"))
    assert loaded.labels == LABELS and loaded.card["note"] == "test"
    assert torch.equal(loaded.probs(x), judge.probs(x))
    assert torch.equal(loaded.presence(x), judge.presence(x))
    raw = (tmp_path / "j.safetensors").read_bytes()
    assert b"pickle" not in raw and raw[:8] != b"\x80\x04\x95"  # safetensors, not a pickle


def test_logistic_regression_separates_separable_data():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 5, generator=g) * 4
    y = torch.arange(90) % 3
    x = centres[y] + 0.3 * torch.randn(90, 5, generator=g)
    w, b = fit_softmax(x, y, 3, l2=1e-3)
    assert torch.equal((x @ w.T + b).argmax(-1), y)


def test_confusion_counts_and_held_out_split_are_deterministic():
    counts = confusion(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    ids = [f"x-{i}" for i in range(500)]
    flags = held_out(ids)
    assert flags == held_out(ids) and 60 < sum(flags) < 140
    assert dict(zip(ids, flags, strict=True)) == dict(zip(ids[::-1], held_out(ids[::-1]),
                                                          strict=True))


def test_unknown_judge_spec_is_a_clear_error():
    with pytest.raises(BadInputError, match="unknown judge"):
        load_judge("gpt4")
    with pytest.raises(BadInputError, match="no model"):
        load_judge("openai:http://127.0.0.1:9/v1")


# --- hf: backend on tiny random models --------------------------------------------------------
def _tiny_classifier(path, id2label: dict[int, str], problem_type=None, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=260, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, pad_token_id=256,
                        max_position_embeddings=512, id2label=id2label,
                        initializer_range=0.5,  # large random weights: outputs differ by text
                        label2id={v: k for k, v in id2label.items()}, problem_type=problem_type)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return model


def test_hf_zero_shot_matches_a_manual_entailment_softmax(tmp_path):
    model = _tiny_classifier(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    judge = load_judge(f"hf:{tmp_path}")
    text = "The exam was brutal and the grading unfair."
    (rating,) = judge.rate(["q"], [text])
    from emosteer.judges.hf import HYPOTHESES, HYPOTHESIS

    tok = byte_tokenizer()
    with torch.no_grad():
        logits = torch.stack([model(**tok(text, HYPOTHESIS.format(HYPOTHESES[label]),
                                          return_tensors="pt")).logits[0] for label in LABELS])
    expected = torch.softmax(logits[:, 0], dim=0)
    got = torch.tensor([rating.probs[label] for label in LABELS])
    assert expected.max() - expected.min() > 0.01  # the check below can fail
    assert torch.allclose(got, expected, atol=1e-4)
    alone = torch.softmax(logits[:, [2, 0]], dim=-1)[:, 1] * 100
    assert rating.scores["anger"] == pytest.approx(float(alone[LABELS.index("anger")]), abs=1e-3)


def test_hf_text_classification_maps_label_names(tmp_path):
    model = _tiny_classifier(tmp_path, {0: "happiness", 1: "sad", 2: "weird-label"})
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 8.0, 0.0]))
    model.save_pretrained(tmp_path)
    (rating,) = load_judge(f"hf:{tmp_path}").rate(["q"], ["anything at all"])
    assert rating.label == "sadness"
    assert rating.probs["anger"] == 0 and abs(sum(rating.probs.values()) - 1) < 1e-6
    assert rating.probs["sadness"] > 0.99  # weird-label's share is dropped, the rest renormalised


def test_hf_model_without_usable_labels_is_refused(tmp_path):
    _tiny_classifier(tmp_path, {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(BadInputError, match="neither an NLI model"):
        load_judge(f"hf:{tmp_path}")


# --- openai: judge against a fake server ------------------------------------------------------
GOOD = {"joy": 10, "anger": 80, "sadness": 5, "fear": 0, "disgust": 20, "surprise": 0,
        "on_topic": 90}


class FakeChat:
    """A loopback chat-completions server that plays scripted replies in order."""

    def __init__(self, script: list):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                step = outer.script.pop(0) if outer.script else ("text", json.dumps(GOOD))
                kind, value = step
                if kind == "status":
                    self.send_response(value)
                    self.end_headers()
                    return
                if kind == "sleep":
                    time.sleep(value)
                    value = json.dumps(GOOD)
                reply = json.dumps({"choices": [{"message": {"role": "assistant",
                                                             "content": value}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a client that timed out
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def start(*script):
        servers.append(FakeChat(list(script)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def judge_for(server, **kw) -> OpenAIJudge:
    return load_judge(f"openai:{server.url}#judge-model",
                      **{"backoff": 0, "timeout": 2, "workers": 1, **kw})


def test_llm_judge_scores_and_topic(fake):
    server = fake(("text", json.dumps(GOOD)))
    (r,) = judge_for(server).rate(["How was the exam?"], ["Brutal. They lied to us."])
    assert r.scores["anger"] == 80 and r.topic == pytest.approx(0.9) and r.label == "anger"
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert body["model"] == "judge-model" and "Brutal" in body["messages"][1]["content"]


def test_llm_judge_reads_fenced_and_prose_replies(fake):
    fenced = "Sure!\n```json\n" + json.dumps(GOOD) + "\n```\nHope that helps."
    pairs = "joy: 5\nanger: 70%\nsadness: 0\nfear: 0\ndisgust: 0\nsurprise: 10\non_topic: 60"
    server = fake(("text", fenced), ("text", pairs))
    first, second = judge_for(server).rate(["q", "q"], ["a", "b"])
    assert first.scores["anger"] == 80 and second.scores["anger"] == 70
    assert second.topic == pytest.approx(0.6)


def test_llm_judge_asks_again_after_a_malformed_reply_then_gives_up(fake):
    server = fake(("text", "I think it's mostly angry."), ("text", json.dumps(GOOD)))
    (r,) = judge_for(server).rate(["q"], ["a"])
    assert r.scores["anger"] == 80 and len(server.requests) == 2
    server = fake(*[("text", "no idea")] * 3)
    with pytest.raises(JudgeError, match="without the JSON scores"):
        judge_for(server, retries=2).rate(["q"], ["a"])


def test_llm_judge_retries_server_errors_and_fails_fast_on_auth(fake):
    server = fake(("status", 503), ("status", 500), ("text", json.dumps(GOOD)))
    (r,) = judge_for(server).rate(["q"], ["a"])
    assert r.scores["joy"] == 10 and len(server.requests) == 3
    server = fake(("status", 401))
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge_for(server).rate(["q"], ["a"])
    assert len(server.requests) == 1


def test_llm_judge_unreachable_and_timeout_are_clear_errors(fake):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0, timeout=1)
    with pytest.raises(JudgeError, match="unreachable"):
        dead.rate(["q"], ["a"])
    server = fake(("sleep", 1.5), ("sleep", 1.5))
    with pytest.raises(JudgeError, match="unreachable|timed out"):
        judge_for(server, timeout=0.3, retries=1).rate(["q"], ["a"])


def test_parse_reply_clamps_and_rejects_incomplete():
    assert parse_reply(json.dumps({**GOOD, "anger": 150, "fear": -3}))["anger"] == 100
    assert parse_reply(json.dumps({**GOOD, "fear": -3}))["fear"] == 0
    assert parse_reply(json.dumps({"joy": 10})) is None
    assert parse_reply("") is None
    assert parse_reply(json.dumps({k.upper(): str(v) for k, v in GOOD.items()}))["joy"] == 10


def test_llm_judge_makes_at_most_retries_plus_one_requests_per_answer(fake):
    # server errors, unreadable replies and a mix of both share one budget of retries + 1
    scripts = {"errors": [("status", 503)] * 10, "malformed": [("text", "no idea")] * 10,
               "mixed": [("status", 500), ("text", "hm"), ("status", 429), ("text", "?")] * 3}
    for name, script in scripts.items():
        server = fake(*script)
        with pytest.raises(JudgeError):
            judge_for(server, retries=2).rate(["q"], ["a"])
        assert len(server.requests) == 3, name
    server = fake(*[("status", 503)] * 10)
    with pytest.raises(JudgeError, match="after 1 tries"):
        judge_for(server, retries=0).rate(["q"], ["a"])
    assert len(server.requests) == 1


def test_llm_judge_without_the_openai_client_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # import openai now raises ImportError
    with pytest.raises(Exception, match=r"emosteer\[eval\]"):
        load_judge("openai:http://127.0.0.1:9/v1#m")


def test_judges_are_a_registry_without_import_cycles():
    import subprocess
    import sys

    from emosteer.judges import registry as judges

    class Always:
        spec, version, eas_is_proxy, rates_topic = "always", "1", True, False

        def rate(self, questions, answers):
            return [judges.Rating(judges.normalise({"joy": 1}), {"joy": 100.0}) for _ in answers]

    judges.register_judge("always-test", lambda argument, **options: Always())
    try:
        assert load_judge("always-test").rate(["q"], ["a"])[0].label == "joy"
        with pytest.raises(ValueError, match="twice"):
            judges.register_judge("always-test", lambda argument, **options: Always())
        with pytest.raises(BadInputError, match="unknown judge"):
            load_judge("always-test:extra")  # this judge takes no argument
    finally:
        del judges._REGISTRY["always-test"]
    with pytest.raises(BadInputError, match="names no model"):
        load_judge("hf:")
    # a backend imported first, alone, never needs the registry module
    for backend in ("embedded", "hf", "llm"):
        code = (f"import sys, emosteer.judges.{backend}\n"
                "print('emosteer.judges.registry' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        assert out.stdout.strip() == "False", (backend, out.stderr[-500:])


def test_judge_labels_come_from_the_one_emotion_list():
    from emosteer.emotions import CIRCUIT_EMOTIONS, JUDGE_LABELS

    assert LABELS == JUDGE_LABELS and tuple(SCORED) == CIRCUIT_EMOTIONS
