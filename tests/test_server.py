"""The OpenAI-compatible server on a tiny random model: the official client, SSE, per-request
emotions, batch isolation, a reference check against generate(), and errors."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from live_server import live_server, random_vectors

import emosteer
from emosteer.generation import GenerateConfig, generate
from emosteer.vectors import mix

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key"
CONTEXT = 256  # small, so a long prompt can exceed it
CAP = 64


@pytest.fixture(scope="module")
def served():
    from emosteer.server import ServeConfig, create_app

    model, tok = tiny_model("llama"), byte_tokenizer()
    vectors = random_vectors(model)
    cfg = ServeConfig(api_key=KEY, max_tokens=CAP, max_context=CONTEXT, batch_window=0.25)
    app = create_app(model, tok, vectors, cfg, model_name="tiny")
    with live_server(app) as url:
        yield {"url": url, "app": app, "model": model, "tok": tok, "vectors": vectors}


def call(served, path, body=None, key=KEY, raw: bytes | None = None):
    """(status, parsed JSON body) for a request; never raises on 4xx."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(served["url"] + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat_body(question, emotion=None, max_tokens=10, **extra):
    body = {"model": "tiny", "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "repetition_penalty": 1.0, **extra}
    if emotion is not None:
        body["emotion"] = emotion
    return body


def client(served):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_health_models_and_api_key(served):
    status, health = call(served, "/health", key=None)
    assert status == 200 and health["status"] == "ok"
    status, err = call(served, "/v1/models", key=None)
    assert status == 401 and err["error"]["code"] == "invalid_api_key"
    status, err = call(served, "/v1/models", key="wrong")
    assert status == 401
    models = client(served).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].model_extra["emotions"] == ["anger", "joy", "sadness"]


def test_openai_client_chat_plain_and_per_request_emotion(served):
    c = client(served)
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "How did the exam go?"}],
          "max_tokens": 12, "temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
    plain = c.chat.completions.create(**kw)
    again = c.chat.completions.create(**kw)
    joy = c.chat.completions.create(**{**kw, "extra_body": {"repetition_penalty": 1.0,
                                                           "emotion": {"joy": 1.5}}})
    anger = c.chat.completions.create(**{**kw, "extra_body": {"repetition_penalty": 1.0,
                                                             "emotion": {"anger": 1.5}}})
    texts = [r.choices[0].message.content for r in (plain, joy, anger)]
    assert plain.choices[0].message.content == again.choices[0].message.content  # greedy
    assert len(set(texts)) == 3, texts  # each emotion steers its own request differently
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    assert plain.usage.completion_tokens <= 12 and plain.usage.prompt_tokens > 5
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert joy.model_extra["emotion"] == {"joy": 1.5}  # the mix is echoed as applied


def test_openai_client_streaming_equals_non_streaming(served):
    c = client(served)
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me about rain."}],
          "max_tokens": 16, "temperature": 0,
          "extra_body": {"repetition_penalty": 1.0, "emotion": {"sadness": 2, "joy": -1}}}
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finals[-1] == whole.choices[0].finish_reason and not any(finals[:-1])
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 2


def test_sse_wire_format(served):
    """Exactly OpenAI's framing: `data: {json}` events separated by a blank line, then [DONE]."""
    body = json.dumps({"model": "tiny", "prompt": "Once upon", "max_tokens": 6, "stream": True,
                       "temperature": 0}).encode()
    req = urllib.request.Request(served["url"] + "/v1/completions", data=body, method="POST")
    req.add_header("Authorization", f"Bearer {KEY}")
    req.add_header("Content-Type", "application/json")  # urllib's default, a form, is refused
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    parsed = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert {p["object"] for p in parsed} == {"text_completion"}
    assert parsed[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_endpoint_with_openai_client(served):
    c = client(served)
    out = c.completions.create(model="tiny", prompt="The weather today", max_tokens=8,
                               temperature=0, extra_body={"emotion": {"anger": 1.0}})
    assert out.object == "text_completion" and out.usage.completion_tokens >= 1
    assert isinstance(out.choices[0].text, str)


def test_mixed_concurrent_batch_is_isolated(served):
    """Each request of a mixed concurrent batch returns exactly what it returns alone."""
    engine = served["app"].state.engine
    bodies = [
        chat_body("Hi", None, max_tokens=6),
        chat_body("How did the exam go?", {"joy": 1.5}, max_tokens=12),
        chat_body("What is your favourite season and why?", {"anger": 2.0, "joy": -0.5},
                  max_tokens=9),
        chat_body("Hi", {"sadness": 3.0}, max_tokens=12),
        chat_body("Describe a cat.", {"joy": -1.0}, max_tokens=4),
        # sampled, but seeded: each row samples from its own generator
        chat_body("Tell me a story.", {"anger": 1.0}, max_tokens=10, temperature=0.9, seed=7),
    ]
    alone = [call(served, "/v1/chat/completions", b)[1] for b in bodies]
    batches_before = engine.stats["batches"]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: call(served, "/v1/chat/completions", b)[1], bodies))
    assert engine.stats["batches"] - batches_before < len(bodies)  # they did share a pass
    assert engine.stats["max_batch_seen"] >= 3
    for a, t in zip(alone, together, strict=True):
        assert t["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
        assert t["usage"] == a["usage"]
    assert len({a["choices"][0]["message"]["content"] for a in alone}) >= 4


@pytest.mark.parametrize("penalty", [1.0, 1.15])
def test_engine_matches_generate_under_steer(served, penalty):
    """A request through the engine gives the tokens of transformers' generate() inside
    emosteer.steer with the same mix, greedy (repetition penalty included)."""
    from emosteer.server import Job, Sampling

    model, tok, vectors = served["model"], served["tok"], served["vectors"]
    engine = served["app"].state.engine
    deadline = time.monotonic() + 60
    while not engine.idle() and time.monotonic() < deadline:  # an earlier test's request may
        time.sleep(0.01)  # still be decoding on this model, its steering hooks live
    weights = {"joy": 1.5, "anger": -0.5}
    prompt = "User: How was your day?\nAssistant:"
    cfg = GenerateConfig(max_new_tokens=12, do_sample=False, repetition_penalty=penalty)
    with emosteer.steer(model, mix(vectors, weights), 1.0):
        ref = generate(model, tok, [prompt], cfg)
    expected = ref.input_ids[0, ref.prompt_len:][ref.response_mask[0, ref.prompt_len:].bool()]
    job = Job(tok(prompt, add_special_tokens=False)["input_ids"], mix(vectors, weights),
              Sampling(max_tokens=12, temperature=0, repetition_penalty=penalty),
              lambda kind, payload: None)
    served["app"].state.engine.run_batch([job])
    assert job.tokens == expected.tolist()
    unsteered = generate(model, tok, [prompt], cfg)
    assert not torch.equal(unsteered.input_ids, ref.input_ids)  # the mix did change the answer


def test_stop_sequence_cuts_the_answer(served):
    _, full = call(served, "/v1/chat/completions", chat_body("Stop test", None, 20))
    text = full["choices"][0]["message"]["content"]
    assert len(text) >= 6, text
    stop = text[3:5]
    _, cut = call(served, "/v1/chat/completions", chat_body("Stop test", None, 20, stop=[stop]))
    assert cut["choices"][0]["message"]["content"] == text[:text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status, code", [
    (chat_body("hi", {"fear": 1.0}), 400, "unknown_emotion"),
    (chat_body("hi", {"joy": 1000}), 400, "invalid_alpha"),
    (chat_body("hi", {"joy": "a lot"}), 400, "invalid_alpha"),
    (chat_body("hi", ["joy"]), 400, "invalid_emotion"),
    (chat_body("hi", max_tokens=CAP + 1), 400, "max_tokens_exceeded"),
    (chat_body("hi", max_tokens=0), 400, "invalid_value"),
    (chat_body("x" * (CONTEXT + 10)), 400, "context_length_exceeded"),
    (chat_body("x" * (CONTEXT - 40), max_tokens=CAP), 400, "context_length_exceeded"),
    (chat_body("hi", n=2), 400, "unsupported_parameter"),
    (chat_body("hi", temperature=5), 400, "invalid_value"),
    ({"model": "tiny"}, 400, "invalid_messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "invalid_messages"),
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(served, body, status, code):
    raw = body if isinstance(body, bytes) else None
    got, err = call(served, "/v1/chat/completions", None if raw else body, raw=raw)
    assert got == status, err
    assert err["error"]["code"] == code and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"]
    ok, answer = call(served, "/v1/chat/completions", chat_body("still there?", max_tokens=3))
    assert ok == 200 and answer["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_client_sees_bad_request(served):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError, match="fear"):
        client(served).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}],
            extra_body={"emotion": {"fear": 1}})


def test_unknown_route_is_a_json_404(served):
    status, err = call(served, "/v1/embeddings", {"input": "x"})
    assert status == 404 and err["error"]["code"] == "not_found"
    status, err = call(served, "/etc/passwd", key=None)
    assert status == 404


def test_playground_page_is_served(served):
    with urllib.request.urlopen(served["url"] + "/", timeout=30) as resp:
        page = resp.read().decode()
    assert "<title>emosteer playground</title>" in page and "/v1/chat/completions" in page



def test_cancelled_row_leaves_the_batch_and_the_others_are_unchanged(served):
    """What a client that disconnects mid-stream triggers (the SSE generator cancels its job):
    its row leaves the batch at the next step; its batch-mates still get their own tokens."""
    from emosteer.server import Job, Sampling

    tok, vectors, engine = served["tok"], served["vectors"], served["app"].state.engine
    greedy = Sampling(max_tokens=16, temperature=0, repetition_penalty=1.0)

    def job(prompt, vector, emit=lambda kind, payload: None):
        return Job(tok(prompt, add_special_tokens=False)["input_ids"], vector, greedy, emit)

    prompts = [("User: Hi\nAssistant:", vectors["joy"]), ("User: Rain?\nAssistant:", None)]
    alone = []
    for prompt, vector in prompts:
        j = job(prompt, vector)
        engine.run_batch([j])
        alone.append(j.tokens)
    seen = []

    def leave_after_three(kind, payload):
        seen.append(kind)
        if len(seen) == 3:
            leaving.cancel()

    leaving = job("User: Tell me a long story.\nAssistant:", vectors["anger"], leave_after_three)
    staying = [job(p, v) for p, v in prompts]
    before = engine.stats["cancelled"]
    engine.run_batch([staying[0], leaving, staying[1]])
    assert leaving.finish_reason == "cancelled" and len(leaving.tokens) <= 4
    assert engine.stats["cancelled"] == before + 1
    assert [j.tokens for j in staying] == alone


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "gemma2", "opt"])
def test_engine_batches_other_families_in_isolation(family):
    """The engine's KV-cache loop (row drops included) on other layouts of the table."""
    from emosteer.server import Engine, Job, Sampling

    model, tok = tiny_model(family), byte_tokenizer()
    vectors = random_vectors(model)
    engine = Engine(model, tok)
    cases = [("User: Hi\nAssistant:", vectors["joy"], 5),
             ("User: How did the exam go?\nAssistant:", None, 9),
             ("User: Rain\nAssistant:", vectors["anger"] * -2, 7)]

    def jobs():
        return [Job(tok(p, add_special_tokens=False)["input_ids"], v,
                    Sampling(max_tokens=n, temperature=0, repetition_penalty=1.0),
                    lambda kind, payload: None) for p, v, n in cases]

    alone = []
    for job in jobs():
        engine.run_batch([job])
        alone.append(job.tokens)
    together = jobs()
    engine.run_batch(together)
    assert [j.tokens for j in together] == alone
    assert any(len(t) > 1 for t in alone)
