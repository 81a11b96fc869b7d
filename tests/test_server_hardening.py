"""The server against a hostile but honest client (issue 11): size caps, tokenizing off the
event loop, memory, content type, Host and Origin checks, odd bodies, and the catch-all."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from conftest import byte_tokenizer, tiny_model
from live_server import live_server, random_vectors

from emosteer.generation import GenerateConfig

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

BODY_CAP = 64 * 1024
CHAR_CAP = 4000
CONTEXT = 256


class CountingTokenizer:
    """The byte tokenizer, counting its calls; sleeps `delay` s on prompts over 1000 chars
    (a stand-in for a tokenizer busy with a huge prompt)."""

    def __init__(self, tok) -> None:
        self._tok, self.calls, self.delay = tok, 0, 0.0

    def __call__(self, text, **kwargs):
        self.calls += 1
        if self.delay and len(text) > 1000:
            time.sleep(self.delay)
        return self._tok(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.fixture(scope="module")
def served():
    from emosteer.server import ServeConfig, create_app

    model, tok = tiny_model("llama"), CountingTokenizer(byte_tokenizer())
    cfg = ServeConfig(max_tokens=32, max_context=CONTEXT, max_body_bytes=BODY_CAP,
                      max_prompt_chars=CHAR_CAP, allow_origins=("http://localhost:3000",))
    app = create_app(model, tok, random_vectors(model), cfg, model_name="tiny")
    with live_server(app) as url:
        yield {"url": url, "app": app, "tok": tok}


def send(url: str, path: str, body: bytes | None = None, headers: dict | None = None,
         method: str | None = None) -> tuple[int, dict, dict]:
    """(status, parsed JSON, response headers); the body is sent with a JSON content type
    unless `headers` says otherwise."""
    head = {"Content-Type": "application/json"} if body is not None else {}
    head.update(headers or {})
    req = urllib.request.Request(url + path, data=body, headers=head,
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def chat(content, **extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 3,
                       "temperature": 0, **extra}).encode()


def openai_error(status: int, body: dict, want_status: int, code: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]


def still_serving(served) -> None:
    status, body, _ = send(served["url"], "/v1/chat/completions", chat("still there?"))
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- item 1: one request must not stall the server ----------------------------------------
def test_a_body_over_the_cap_is_413_whole_or_chunked(served):
    big = chat("word " * (BODY_CAP // 4))
    assert len(big) > BODY_CAP
    openai_error(*send(served["url"], "/v1/chat/completions", big)[:2], 413,
                 "request_too_large")
    host = urlsplit(served["url"])
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    chunks = (big[i:i + 4096] for i in range(0, len(big), 4096))
    conn.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()  # no Content-Length: the cap is counted as the bytes arrive
    openai_error(resp.status, json.loads(resp.read()), 413, "request_too_large")
    conn.close()
    still_serving(served)


def test_a_prompt_over_the_character_cap_is_refused_before_tokenizing(served):
    tok = served["tok"]
    before = tok.calls
    status, body, _ = send(served["url"], "/v1/chat/completions", chat("x" * (CHAR_CAP + 1)))
    openai_error(status, body, 400, "context_length_exceeded")
    assert str(CHAR_CAP) in body["error"]["message"]
    parts = [{"type": "text", "text": "y" * (CHAR_CAP // 2 + 1)}] * 2  # the cap is the sum
    openai_error(*send(served["url"], "/v1/chat/completions", chat(parts))[:2], 400,
                 "context_length_exceeded")
    prompt = json.dumps({"prompt": "z" * (CHAR_CAP + 1)}).encode()
    openai_error(*send(served["url"], "/v1/completions", prompt)[:2], 400,
                 "context_length_exceeded")
    assert tok.calls == before  # refused without tokenizing


def test_health_answers_fast_while_a_long_prompt_is_tokenized(served):
    """Tokenizing runs on its own thread: /health does not wait for it (it used to wait for
    the whole tokenization, 14-21 s for a 20 MB prompt)."""
    tok = served["tok"]
    tok.delay = 1.5
    answer: list = []
    slow = threading.Thread(target=lambda: answer.append(
        send(served["url"], "/v1/chat/completions", chat("word " * 600))))
    try:
        slow.start()
        time.sleep(0.3)  # the long request is now on the tokenizing thread
        latencies = []
        for _ in range(5):
            start = time.perf_counter()
            status, health, _ = send(served["url"], "/health")
            latencies.append(time.perf_counter() - start)
            assert status == 200 and health["status"] == "ok"
        assert slow.is_alive(), "the long request should still be tokenizing"
    finally:
        slow.join(timeout=60)
        tok.delay = 0.0
    assert sorted(latencies)[2] < 0.1 and max(latencies) < 0.5, latencies
    assert answer[0][0] == 400  # 3000 characters are over this model's 256-token context


def test_memory_stays_near_its_baseline_after_oversized_bodies(served):
    big = chat("word " * (8 * 1024 * 1024 // 5))  # 8 MB, 128 times the cap
    send(served["url"], "/v1/chat/completions", big)  # warm-up: buffers, code paths
    before = rss_mib()
    for _ in range(3):
        openai_error(*send(served["url"], "/v1/chat/completions", big)[:2], 413,
                     "request_too_large")
    grown = rss_mib() - before
    assert grown < 32, f"RSS grew {grown:.0f} MiB over 3 refused 8 MB bodies"


# --- item 2: a web page must not drive the local server -----------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_post_needs_a_json_content_type(served, content_type):
    """The kinds of body a browser may send across origins without asking first."""
    host = urlsplit(served["url"])
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    if content_type:
        conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(chat("hi"))))
    conn.endheaders(chat("hi"))
    resp = conn.getresponse()
    openai_error(resp.status, json.loads(resp.read()), 415, "unsupported_media_type")
    conn.close()


def test_json_with_a_charset_is_fine(served):
    status, body, _ = send(served["url"], "/v1/chat/completions", chat("hi"),
                           {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200, body


def test_the_issue_repro_cross_origin_text_plain_post_is_refused(served):
    status, body, _ = send(served["url"], "/v1/chat/completions", chat("hi"),
                           {"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert status in (403, 415) and body["error"]["code"] in ("origin_not_allowed",
                                                              "unsupported_media_type")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2.evil.example",
                                  # issue 28: bracketed IPv6 hosts are parsed, not prefix-matched
                                  "[::1]evil.example", "[::1].evil.example:8765", "[::1]:80x",
                                  "[::1", "[::1]:80:80", "localhost:80:80", "localhost:8²",
                                  "[::2]:8000", "::1"])
def test_dns_rebinding_host_is_refused_on_loopback(served, host):
    for path, body in (("/health", None), ("/", None), ("/v1/chat/completions", chat("hi"))):
        status, err, _ = send(served["url"], path, body, {"Host": host})
        openai_error(status, err, 400, "invalid_host")


def test_loopback_host_names_are_served(served):
    port = urlsplit(served["url"]).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}",
                 "[::1]", f"[0:0:0:0:0:0:0:1]:{port}", "localhost:"):
        status, _, _ = send(served["url"], "/health", None, {"Host": host})
        assert status == 200, host


def test_origin_is_checked(served):
    port = urlsplit(served["url"]).port
    url = served["url"]
    for origin in ("http://evil.example", "null", f"http://evil.example:{port}"):
        openai_error(*send(url, "/v1/chat/completions", chat("hi"), {"Origin": origin})[:2],
                     403, "origin_not_allowed")
    # the playground's own origin, and a page allowed by allow_origins (--allow-origin)
    own = send(url, "/v1/chat/completions", chat("hi"), {"Origin": f"http://127.0.0.1:{port}"})
    assert own[0] == 200
    status, _, headers = send(url, "/v1/chat/completions", chat("hi"),
                              {"Origin": "http://localhost:3000"})
    assert status == 200 and headers.get("access-control-allow-origin") == "http://localhost:3000"
    req = urllib.request.Request(url + "/v1/chat/completions", method="OPTIONS", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # the browser's preflight
        assert resp.status == 200
        assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_host_names_are_parsed():
    from emosteer.server.guard import _host_name

    assert _host_name("[0:0::1]:8000") == "[::1]" and _host_name(" LocalHost:80 ") == "localhost"
    for bad in ("[::1]evil.example", "[::1].evil.example:8765", "[evil]", "[]", "", ":80",
                "a:b", "localhost:123456"):
        assert _host_name(bad) is None, bad


def test_allowed_hosts_and_a_public_bind():
    """A Host name added by allowed_hosts passes; bound publicly, any Host is answered (the
    key and the origin check still apply)."""
    from emosteer.server import ServeConfig, create_app

    model, tok = tiny_model("llama"), byte_tokenizer()
    vectors = random_vectors(model)
    named = create_app(model, tok, vectors, ServeConfig(allowed_hosts=("emo.internal",)))
    with live_server(named) as url:
        assert send(url, "/health", None, {"Host": "emo.internal:443"})[0] == 200
        assert send(url, "/health", None, {"Host": "other.internal"})[0] == 400
    public = create_app(model, tok, vectors, ServeConfig(host="0.0.0.0", api_key="k"))
    with live_server(public) as url:
        assert send(url, "/health", None, {"Host": "any.example"})[0] == 200
        assert send(url, "/v1/models", None, {"Host": "any.example"})[0] == 401
        assert send(url, "/v1/models", None, {"Authorization": "Bearer k",
                                               "Origin": "http://evil.example"})[0] == 403


# --- items 6 and 8: odd bodies get 400s, never a plain 500 --------------------------------
@pytest.mark.parametrize("path, raw, code", [
    ("/v1/completions", b'{"prompt":"hi \\udc80","max_tokens":4}', "invalid_prompt"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":"hi \\ud800"}]}',
     "invalid_messages"),
    ("/v1/completions", b'{"prompt":"hi","max_tokens":4,"stream":true,"stream_options":"yes"}',
     "invalid_type"),
    ("/v1/completions", b'{"prompt":"hi","stop":["\\udc80"]}', "invalid_value"),
    ("/v1/completions", b'{"prompt":"hi","temperature":NaN}', "invalid_value"),
    ("/v1/completions", b'{"prompt":"hi","emotion":{"joy":Infinity}}', "invalid_alpha"),
    ("/v1/completions", b'{"prompt":"hi","max_tokens":"4"}', "invalid_value"),
    ("/v1/completions", b'{"prompt":"I am \xff"}', "invalid_json"),
    ("/v1/completions", b"", "invalid_json"),
    ("/v1/completions", b"[" * 50_000, "invalid_json"),  # deeper than json can parse
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":[1,2]}]}',
     "invalid_messages"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":[{"type":"image_url",'
     b'"image_url":{"url":"http://x"}}]}]}', "invalid_messages"),
    ("/v1/chat/completions", b'{"messages":[{"role":"user","content":null}]}',
     "invalid_messages"),
])
def test_odd_bodies_get_openai_400s(served, path, raw, code):
    status, body, headers = send(served["url"], path, raw)
    openai_error(status, body, 400, code)
    assert headers["content-type"].startswith("application/json")
    still_serving(served)


def test_content_parts_of_type_text_are_served(served):
    parts = [{"type": "text", "text": "How did "}, {"type": "text", "text": "the exam go?"}]
    status, joined, _ = send(served["url"], "/v1/chat/completions", chat(parts))
    _, plain, _ = send(served["url"], "/v1/chat/completions", chat("How did the exam go?"))
    assert status == 200
    assert joined["choices"] == plain["choices"] and joined["usage"] == plain["usage"]


def test_an_unexpected_error_is_a_json_500_and_the_server_keeps_serving(served, monkeypatch):
    server = served["app"].state.server

    async def broken(render):
        raise RuntimeError("boom")

    monkeypatch.setattr(server, "tokenize", broken)
    status, body, headers = send(served["url"], "/v1/chat/completions", chat("hi"))
    assert status == 500 and headers["content-type"].startswith("application/json")
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == "internal_error"
    assert "boom" not in body["error"]["message"]  # no internals in the answer
    monkeypatch.undo()
    still_serving(served)


# --- the engine's sampling -----------------------------------------------------------------
def test_sampling_defaults_are_generate_configs():
    from emosteer.server import Sampling

    d, s = GenerateConfig(), Sampling()
    assert (s.temperature, s.top_p, s.repetition_penalty) == (
        d.temperature, d.top_p, d.repetition_penalty)


def test_processors_keep_the_top_p_nucleus_and_penalise_seen_tokens():
    """Known answer: top-p keeps the tokens whose higher-ranked mass is below p; the penalty
    divides a positive logit and multiplies a negative one."""
    from emosteer.server import Sampling

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])  # (1, vocab)
    seen = torch.tensor([[0, 3]])
    out = Sampling(temperature=1.0, top_p=0.7, repetition_penalty=2.0).processors()(seen, logits)
    penalised = torch.tensor([1.0, 1.0, 0.5, -2.0, -3.0])
    probs = torch.softmax(penalised, -1)
    order = torch.argsort(probs, descending=True)
    above = probs[order].cumsum(-1) - probs[order]
    keep = set(order[above < 0.7].tolist())
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == keep
    assert torch.allclose(out[0][list(keep)], penalised[list(keep)])
    greedy = Sampling(temperature=0, repetition_penalty=1.0).processors()
    assert len(greedy) == 0  # greedy without penalty: the raw argmax


def test_a_client_that_leaves_a_non_streamed_request_cancels_it(served, monkeypatch):
    """Not only streams: a plain request whose client hung up stops decoding (its row would
    otherwise decode to max_tokens for nobody)."""
    engine = served["app"].state.engine
    advance = engine._advance

    def slow_advance(job, token, *reading):  # the engine also passes the meter's reading
        time.sleep(0.1)  # 32 tokens would take 3.2 s
        return advance(job, token, *reading)

    monkeypatch.setattr(engine, "_advance", slow_advance)
    before = engine.stats["cancelled"]
    host = urlsplit(served["url"])
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=chat("hi", max_tokens=32),
                 headers={"Content-Type": "application/json"})
    time.sleep(0.5)
    conn.close()  # gone before the answer
    deadline = time.monotonic() + 2.5
    while engine.stats["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats["cancelled"] == before + 1
    monkeypatch.undo()
    still_serving(served)


# --- issue 28, items 6 and 10: the key, CORS, and an empty key ----------------------------
def test_a_preflight_needs_no_key_and_refusals_to_an_allowed_origin_carry_cors():
    """A browser sends no credentials on a preflight: it is answered without the key; the
    key's 401, the body cap's 413 and the content type's 415 tell an allowed page why."""
    from emosteer.server import ServeConfig, create_app

    page = "http://localhost:3000"
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = ServeConfig(api_key="k", allow_origins=(page,), max_body_bytes=1024, max_tokens=8)
    with live_server(create_app(model, tok, random_vectors(model), cfg)) as url:
        ask = {"Origin": page, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
        req = urllib.request.Request(url + "/v1/chat/completions", method="OPTIONS",
                                     headers=ask)
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            assert resp.headers["access-control-allow-origin"] == page
            assert "authorization" in resp.headers["access-control-allow-headers"].lower()
        # not a preflight (no Access-Control-Request-Method), or another page: refused
        plain = {"Origin": page}
        assert send(url, "/v1/models", None, plain, method="OPTIONS")[0] == 401
        assert send(url, "/v1/chat/completions", None, {**ask, "Origin": "http://evil.example"},
                    method="OPTIONS")[0] == 403
        key = {"Authorization": "Bearer k"}
        for status, code, body, headers in [
                (401, "invalid_api_key", chat("hi"), plain),
                (413, "request_too_large", chat("word " * 400), {**plain, **key}),
                (415, "unsupported_media_type", chat("hi"),
                 {**plain, **key, "Content-Type": "text/plain"})]:
            got, err, head = send(url, "/v1/chat/completions", body, headers)
            openai_error(got, err, status, code)
            assert head.get("access-control-allow-origin") == page, (status, head)
        # no Origin (not a browser), or the right key: as before
        status, _, head = send(url, "/v1/chat/completions", chat("hi"))
        assert status == 401 and "access-control-allow-origin" not in {
            k.lower() for k in head}
        status, _, head = send(url, "/v1/chat/completions", chat("hi"), {**plain, **key})
        assert status == 200 and head.get("access-control-allow-origin") == page


@pytest.mark.parametrize("key", ["", "  "])
def test_an_empty_api_key_is_refused(key):
    from emosteer.errors import BadInputError
    from emosteer.server import ServeConfig

    with pytest.raises(BadInputError, match="empty"):
        ServeConfig(api_key=key)


# --- issue 28, item 2: one request's failure is its own ------------------------------------
def test_a_tiny_temperature_is_greedy_on_both_parsers():
    from emosteer.generation import GREEDY_BELOW
    from emosteer.server.schemas import ChatRequest
    from emosteer.vllm.spec import request_temperature

    for tiny in (1e-40, 5e-324, GREEDY_BELOW / 2):
        body = {"messages": [{"role": "user", "content": "Hi"}], "temperature": tiny}
        assert ChatRequest.model_validate(body).temperature == 0.0
        assert request_temperature(tiny) == 0.0
    for kept in (0, 0.0, GREEDY_BELOW, 0.6, 2.0, None, "x", True, -1.0):
        assert request_temperature(kept) == kept  # vLLM checks the rest itself


def test_the_vllm_protocol_patch_makes_a_tiny_temperature_greedy(monkeypatch):
    """The plugin's to_sampling_params wrapper, on a stand-in for vLLM's request class."""
    from types import ModuleType, SimpleNamespace

    from emosteer.vllm import plugin

    class ChatCompletionRequest:
        def __init__(self, temperature):
            self.temperature, self.model_extra = temperature, {}

        def to_sampling_params(self):
            return SimpleNamespace(temperature=self.temperature, extra_args=None)

    module = ModuleType("protocol")
    module.ChatCompletionRequest = ChatCompletionRequest
    monkeypatch.setattr(plugin, "served_bank", lambda: None)
    plugin._patch_protocol(module)
    assert ChatCompletionRequest(1e-40).to_sampling_params().temperature == 0.0
    assert ChatCompletionRequest(0.7).to_sampling_params().temperature == 0.7
    assert ChatCompletionRequest(None).to_sampling_params().temperature is None


def test_the_issue_repro_a_tiny_temperature_fails_no_request(served):
    """temperature 1e-40 used to be a 500 (inf/NaN probabilities) and to fail the request
    batched with it: now it decodes greedily, and both answer."""
    url = served["url"]
    greedy = send(url, "/v1/chat/completions", chat("Hi", emotion={"joy": 1}))
    answers: list = [None, None, None]
    bodies = [chat("Hi", temperature=1e-40), chat("Hi", emotion={"joy": 1}),
              chat("Hi", temperature=1e-40, stream=True)]

    def ask(i):
        if i < 2:
            answers[i] = send(url, "/v1/chat/completions", bodies[i])
            return
        req = urllib.request.Request(url + "/v1/chat/completions", data=bodies[i],
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answers[i] = resp.read().decode()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    (s0, b0, _), (s1, b1, _), streamed = answers
    assert s0 == 200 and s1 == 200, (b0, b1)
    assert b1["choices"] == greedy[1]["choices"]
    solo = send(url, "/v1/chat/completions", chat("Hi"))[1]
    assert b0["choices"][0]["message"] == solo["choices"][0]["message"]  # greedy = temperature 0
    assert '"error"' not in streamed and streamed.rstrip().endswith("data: [DONE]")


class Collected:
    """A job's events, and a flag set when it finishes (done or error)."""

    def __init__(self) -> None:
        self.events: list = []
        self.finished = threading.Event()

    def __call__(self, kind, payload) -> None:
        self.events.append((kind, payload))
        if kind in ("done", "error"):
            self.finished.set()

    def text(self) -> str:
        return "".join(p for k, p in self.events if k == "delta")

    def end(self):
        return self.events[-1]


class NaNSampling:
    """Sampling whose processors turn the row's logits into NaN (its own step fails)."""

    def __new__(cls, **kw):
        from transformers import LogitsProcessorList

        from emosteer.server import Sampling

        class Poisoned(Sampling):
            def processors(self):
                return LogitsProcessorList([lambda ids, scores: scores * float("nan")])

        return Poisoned(**kw)


POISON = 7  # a prompt holding this token fails the forward pass (see engine_with)


def engine_with(fail_forward):
    """An engine over the tiny llama whose forward pass raises when fail_forward(input_ids)."""
    from emosteer.server.engine import Engine

    model = tiny_model("llama")

    def hook(module, args, kwargs):
        if fail_forward(kwargs["input_ids"]):
            raise RuntimeError("forward failed")

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return Engine(model, byte_tokenizer(), max_batch=8, batch_window=1.0)


def run_jobs(engine, specs):
    """Submit the jobs (prompt ids, Sampling) before the worker starts, so they share one
    batch; wait for all; the collectors."""
    from emosteer.server.engine import Job

    seen = [Collected() for _ in specs]
    for (ids, sampling), emit in zip(specs, seen, strict=True):
        engine.submit(Job(list(ids), None, sampling, emit))
    engine.start()
    try:
        for emit in seen:
            assert emit.finished.wait(60)
    finally:
        engine.stop()
    return seen


def solo_text(ids, max_tokens) -> str:
    from emosteer.server import Sampling

    (alone,) = run_jobs(engine_with(lambda ids: False),
                        [(ids, Sampling(max_tokens=max_tokens, temperature=0))])
    return alone.text()


def test_a_row_that_fails_its_own_step_fails_alone():
    from emosteer.server import Sampling

    good = Sampling(max_tokens=6, temperature=0)
    a, b = [72, 105, 33], [87, 104, 121, 63]
    engine = engine_with(lambda ids: False)
    seen = run_jobs(engine, [(a, good), (a, NaNSampling(max_tokens=6, temperature=1.0)),
                             (b, good)])
    assert engine.stats["batches"] == 1 and engine.stats["max_batch_seen"] == 3
    assert seen[1].end()[0] == "error" and "generation failed" in seen[1].end()[1]
    for emit, ids in ((seen[0], a), (seen[2], b)):
        assert emit.end()[0] == "done", emit.events
        assert emit.text() == solo_text(ids, 6)
    assert engine.stats["errors"] == 1


def test_a_failed_forward_pass_retries_each_request_alone():
    """The pass fails for any batch holding POISON: each request is retried alone, and only
    the poisoned one fails."""
    from emosteer.server import Sampling

    good = Sampling(max_tokens=6, temperature=0)
    a, b = [72, 105, 33], [87, 104, 121, 63]
    engine = engine_with(lambda ids: bool((ids == POISON).any()))
    seen = run_jobs(engine, [(a, good), ([72, POISON, 33], good), (b, good)])
    assert engine.stats["retried"] == 3 and engine.stats["errors"] == 1
    assert seen[1].end()[0] == "error" and "forward failed" in seen[1].end()[1]
    for emit, ids in ((seen[0], a), (seen[2], b)):
        assert emit.end()[0] == "done", emit.events
        assert emit.text() == solo_text(ids, 6)


def test_a_retried_request_continues_from_its_tokens():
    """A batched pass that fails mid-answer (the third decoding step): each request goes
    on alone after the tokens it has, none sent twice, none lost, within max_tokens."""
    from emosteer.server import Sampling

    calls = {"batched": 0}

    def third_batched_pass(ids):
        if ids.shape[0] > 1:
            calls["batched"] += 1
            return calls["batched"] == 3
        return False

    engine = engine_with(third_batched_pass)
    prompts = [[72, 105, 33], [87, 104, 121, 63]]
    seen = run_jobs(engine, [(p, Sampling(max_tokens=6, temperature=0)) for p in prompts])
    assert engine.stats["retried"] == 2 and engine.stats["errors"] == 0
    for emit, ids in zip(seen, prompts, strict=True):
        assert emit.end() in (("done", "length"), ("done", "stop")), emit.events
        assert len([k for k, _ in emit.events if k == "delta"]) >= 1
        assert emit.text() == solo_text(ids, 6)
