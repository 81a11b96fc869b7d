"""vLLM's OpenAI-compatible server started by emosteer.vllm.serve, driven by the openai client:
concurrent requests with different emotions, streaming, vllm_xargs, 400s, the playground."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import ENGINE, QUESTIONS

openai = pytest.importorskip("openai")

MAX_TOKENS = 12
VLLM_ARGS = ["--dtype", ENGINE["dtype"], "--max-model-len", str(ENGINE["max_model_len"]),
             "--kv-cache-memory-bytes", str(ENGINE["kv_cache_memory_bytes"]),
             "--seed", str(ENGINE["seed"]), "--enable-prefix-caching"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(vectors, tmp_path_factory):
    port = _free_port()
    code = ("import sys, emosteer.vllm as v; "
            f"sys.exit(v.serve('default', {str(vectors)!r}, port={port}, "
            f"extra_vllm_args={VLLM_ARGS!r}))")
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:  # its own process group: the teardown ends vLLM's processes
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while not _up(base + "/health"):
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the vLLM server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(2)
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server):
    listing = json.load(urllib.request.urlopen(server + "/v1/models"))
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    client.model_id = listing["data"][0]["id"]
    return client


def ask(client, question=QUESTIONS[0], stream=False, **body):
    kw = {"model": client.model_id, "messages": [{"role": "user", "content": question}],
          "max_tokens": MAX_TOKENS, "temperature": 0, "extra_body": {"ignore_eos": True, **body}}
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    chunks = client.chat.completions.create(stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_models_and_playground(server, client):
    assert client.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"  # as emosteer names it
    entry = json.load(urllib.request.urlopen(server + "/v1/models"))["data"][0]
    assert entry["emotions"] == ["anger", "joy", "sadness"] and entry["site"] == "attn"
    page = urllib.request.urlopen(server + "/").read().decode()
    assert "/v1/chat/completions" in page and "emotion" in page
    # like emosteer's own server, it answers to model "default"
    r = client.chat.completions.create(model="default", max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content


def test_concurrent_requests_get_their_own_emotion(client):
    mixes = [{"joy": 1.5}, {"anger": 1.5}]
    with ThreadPoolExecutor(2) as pool:  # one continuous batch in vLLM
        together = list(pool.map(lambda m: ask(client, emotion=m), mixes))
    alone = [ask(client, emotion=m) for m in mixes]
    plain = ask(client)
    assert together == alone  # each answer depends only on its own emotion
    assert len({*together, plain}) == 3  # and the emotions differ from each other and none


def test_streaming_matches_the_full_answer(client):
    assert ask(client, stream=True, emotion={"sadness": 1.0}) == \
        ask(client, emotion={"sadness": 1.0})


def test_vllm_xargs_json_string_is_the_body_field(client):
    mix = {"joy": 1.0, "anger": -0.5}
    assert ask(client, vllm_xargs={"emotion": json.dumps(mix)}) == ask(client, emotion=mix)
    assert ask(client, vllm_xargs={"emotion": "joy"}) == ask(client, emotion={"joy": 1.0})


def test_completions_endpoint_steers(client):
    def complete(**body):
        return client.completions.create(model=client.model_id, prompt="My day at work was",
                                         max_tokens=MAX_TOKENS, temperature=0,
                                         extra_body=body).choices[0].text
    assert complete(emotion={"anger": 2.0}) != complete()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "words"), [
    ({"emotion": {"fear": 1.0}}, "unknown emotion 'fear': available are anger, joy, sadness"),
    ({"vllm_xargs": {"emotion": '{"joy": NaN}'}}, "finite"),
    ({"emotion": {"joy": 1e3}}, "outside"),
    ({"emotion": {"joy": "lots"}}, "must be a number"),
    ({"vllm_xargs": {"emotion": "{oops"}}, "not valid JSON"),
    ({"emotion": {"joy": 1}, "vllm_xargs": {"emotion": '{"joy": 2}'}}, "send the emotion once"),
])
def test_bad_emotion_is_a_400_and_the_server_keeps_serving(client, body, words, stream):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, stream=stream, **body)
    assert caught.value.status_code == 400
    assert words in caught.value.body["message"] and caught.value.body["param"] == "emotion"
    assert ask(client, emotion={"joy": 1.0})  # still serving


def test_nan_in_the_body_is_a_400(server, client):
    # the openai client will not send NaN; raw JSON can, and Python's json reads it
    body = json.dumps({"model": client.model_id, "max_tokens": 2,
                       "messages": [{"role": "user", "content": "Hi"}],
                       "emotion": {"joy": float("nan")}})  # json.dumps writes NaN
    request = urllib.request.Request(server + "/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == 400
    error = json.load(caught.value)["error"]
    assert "finite" in error["message"] and error["param"] == "emotion"
