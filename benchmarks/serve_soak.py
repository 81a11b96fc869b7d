"""Soak the OpenAI-compatible server: a bounded run of mixed, partly hostile load on loopback.

Starts `emosteer serve` as a child process on a free 127.0.0.1 port and, for --duration
seconds, has --clients threads send an interleaved mix: valid chat and completion requests
(streamed and not, plain and with emotion mixes), clients that leave mid-stream, invalid
requests (bad JSON, unknown emotion, lone surrogate, wrong content type, foreign Host or
Origin...) and bodies over the size cap. Meanwhile /health is timed every 0.2 s and the
server's RSS sampled every second. Reports crashes (the server process exiting), valid
requests not answered, invalid ones not refused with an OpenAI-shaped 4xx, RSS growth
against --rss-bound-mib, and /health p50/p99/max. Writes
benchmarks/results/serve_soak-<machine>.json; the last stdout line is that JSON.

    .venv/bin/python benchmarks/serve_soak.py --vectors vectors            # 5 minutes
    .venv/bin/python benchmarks/serve_soak.py --vectors vectors --duration 30   # a quick check
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from machine_info import machine, write_results
from serve_load import QUESTIONS, free_port, pct, rss_mib

BAD = [  # (body, headers): each must be refused with an OpenAI-shaped 4xx
    (b"{not json", {}),
    (b"[1, 2]", {}),
    (b'{"messages":[{"role":"user","content":"hi"}],"emotion":{"nostalgia":1}}', {}),
    (b'{"messages":[{"role":"user","content":"hi"}],"emotion":{"joy":1e39}}', {}),
    (b'{"messages":[{"role":"user","content":"hi \\udc80"}],"max_tokens":4}', {}),
    (b'{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":"yes"}', {}),
    (b'{"messages":[{"role":"user","content":[1,2]}]}', {}),
    (b'{"messages":[{"role":"wizard","content":"hi"}]}', {}),
    (b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}', {}),
    (b'{"messages":[{"role":"user","content":"hi"}],"temperature":NaN}', {}),
    (b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}',
     {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
    (b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}', {"Host": "evil.example"}),
    (b"I am \xff not UTF-8", {}),
]


class Soak:
    """The load generator: counters shared by the client threads."""

    def __init__(self, host: str, port: int, emotions: list[str], max_tokens: int) -> None:
        self.host, self.port, self.emotions, self.max_tokens = host, port, emotions, max_tokens
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.health: list[float] = []
        self.lock = threading.Lock()

    def count(self, key: str, failure: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if failure is not None:
                self.counts["failures"] += 1
                if len(self.failures) < 20:
                    self.failures.append(f"{key}: {failure}")

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None,
             chunked: bool = False) -> tuple[http.client.HTTPConnection,
                                             http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        head = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            parts = (body[i:i + 65536] for i in range(0, len(body), 65536))
            conn.request("POST", path, body=parts, headers=head, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=head)
        return conn, conn.getresponse()

    def valid_body(self, rng: random.Random, stream: bool) -> bytes:
        body: dict = {"model": "default", "max_tokens": self.max_tokens, "stream": stream,
                      "seed": rng.randrange(1 << 30),
                      "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.emotions and rng.random() < 0.7:
            names = rng.sample(self.emotions, k=min(len(self.emotions), rng.choice((1, 2))))
            body["emotion"] = {n: round(rng.uniform(-1.5, 2.0), 2) for n in names}
        return json.dumps(body).encode()

    def valid(self, rng: random.Random) -> None:
        stream = rng.random() < 0.5
        key = "valid_stream" if stream else "valid"
        try:
            conn, resp = self.post("/v1/chat/completions", self.valid_body(rng, stream))
            raw = resp.read().decode()
            conn.close()
            if resp.status != 200:
                return self.count(key, f"status {resp.status}: {raw[:200]}")
            if stream:
                events = [e for e in raw.split("\n\n") if e]
                if events[-1] != "data: [DONE]" or any('"error"' in e for e in events):
                    return self.count(key, f"stream did not end cleanly: {raw[-200:]}")
            elif not isinstance(json.loads(raw)["choices"][0]["message"]["content"], str):
                return self.count(key, f"no answer text: {raw[:200]}")
            self.count(key)
        except Exception as err:  # a valid request that was not answered
            self.count(key, f"{type(err).__name__}: {err}")

    def leave_mid_stream(self, rng: random.Random) -> None:
        try:
            conn, resp = self.post("/v1/chat/completions", self.valid_body(rng, True))
            for _ in range(rng.choice((1, 2, 3))):
                resp.readline()
            conn.close()  # the client goes away; the server must free its batch row
            self.count("left_mid_stream")
        except Exception as err:
            self.count("left_mid_stream", f"{type(err).__name__}: {err}")

    def refused(self, rng: random.Random, oversized: bool) -> None:
        key = "oversized" if oversized else "invalid"
        if oversized:
            body = json.dumps({"messages": [{"role": "user", "content": "word " * 500_000}]})
            raw, headers, chunked = body.encode(), {}, rng.random() < 0.5
        else:
            (raw, headers), chunked = rng.choice(BAD), False
        try:
            conn, resp = self.post("/v1/chat/completions", raw, headers, chunked)
            answer = resp.read()
            conn.close()
            error = json.loads(answer)["error"]
            if not 400 <= resp.status < 500 or not error.get("code") or not error.get("message"):
                return self.count(key, f"status {resp.status}: {answer[:200]!r}")
            self.count(key)
        except Exception as err:
            self.count(key, f"{type(err).__name__}: {err}")

    def client(self, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.45:
                self.valid(rng)
            elif roll < 0.60:
                self.leave_mid_stream(rng)
            elif roll < 0.90:
                self.refused(rng, oversized=False)
            else:
                self.refused(rng, oversized=True)

    def probe_health(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            with self.lock:
                self.health.append(time.perf_counter() - start if ok else float("inf"))
            time.sleep(0.2)


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "emosteer", "serve", "--model", args.model, "--vectors",
         args.vectors, "--port", str(port), "--max-batch", str(args.max_batch),
         *(["--threads", str(args.threads)] if args.threads else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            sys.exit(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            conn.getresponse().read()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                sys.exit("server did not come up in 300 s")
            time.sleep(0.5)


def run(args: argparse.Namespace) -> dict:
    emotions = sorted(p.stem for p in Path(args.vectors).glob("*.safetensors"))
    if not emotions:
        sys.exit(f"no vectors in {args.vectors}: run `emosteer extract --out {args.vectors}`")
    port = free_port()
    server = start_server(args, port)
    soak = Soak("127.0.0.1", port, emotions, args.max_tokens)
    rss: list[float] = []
    try:
        soak.valid(random.Random(0))  # warm-up, not counted in the RSS baseline
        soak.counts.clear()
        baseline = rss_mib(server.pid)
        deadline = time.monotonic() + args.duration
        threads = [threading.Thread(target=soak.client, args=(i, deadline), daemon=True)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=soak.probe_health, args=(deadline,),
                                        daemon=True))
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if server.poll() is None:
                rss.append(rss_mib(server.pid))
            time.sleep(1.0)
        crashed = server.poll() is not None
        final = rss_mib(server.pid) if not crashed else float("nan")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return summary(args, soak, baseline, rss, final, crashed)


def summary(args: argparse.Namespace, soak: Soak, baseline: float, rss: list[float],
            final: float, crashed: bool) -> dict:
    health = [h for h in soak.health if h != float("inf")]
    growth = (max(rss) if rss else baseline) - baseline
    valid_total = soak.counts["valid"] + soak.counts["valid_stream"]
    report = {
        "benchmark": "serve_soak", "machine": machine(), "model": args.model,
        "duration_s": args.duration, "clients": args.clients, "max_tokens": args.max_tokens,
        "server_torch_threads": args.threads or "default",
        "crashes": int(crashed), "failures": soak.counts["failures"],
        "valid_requests": valid_total,
        "requests": {k: v for k, v in sorted(soak.counts.items()) if k != "failures"},
        "health_checks": len(soak.health),
        "health_unanswered": len(soak.health) - len(health),
        "health_p50_ms": round(statistics.median(health) * 1000, 1) if health else None,
        "health_p99_ms": round(pct(health, 0.99) * 1000, 1) if health else None,
        "health_max_ms": round(max(health) * 1000, 1) if health else None,
        "rss_mib_baseline": round(baseline, 1), "rss_mib_max": round(max(rss, default=0), 1),
        "rss_mib_final": round(final, 1), "rss_bound_mib": args.rss_bound_mib,
        "rss_within_bound": growth <= args.rss_bound_mib,
        "failure_samples": soak.failures,
    }
    report["ok"] = (not crashed and report["failures"] == 0 and report["rss_within_bound"]
                    and report["health_unanswered"] == 0 and valid_total > 0)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--vectors", default="vectors", help="folder of <emotion>.safetensors")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    ap.add_argument("--clients", type=int, default=6, help="concurrent client threads")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    ap.add_argument("--rss-bound-mib", type=float, default=150.0,
                    help="allowed RSS growth over the post-warm-up baseline")
    report = run(ap.parse_args())
    write_results("serve_soak", report)
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
