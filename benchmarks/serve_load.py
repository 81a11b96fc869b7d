"""Load on the OpenAI-compatible server: a bounded run on loopback, mixed emotions.

Starts `emosteer serve` as a child process on a free 127.0.0.1 port (the bundled model and a
folder of vectors), sends REQUESTS chat completions, CONCURRENCY at a time, half of them
streamed, each with its own emotion mix (some plain), and reports requests/s, completion
tokens/s, p50/p95 latency (and time to first token for the streamed ones), errors, and the
server's resident memory before and after. Writes benchmarks/results/serve_load-<machine>.json
and prints that JSON as the last line. Nothing leaves the machine; the run stops by itself.

    .venv/bin/python benchmarks/serve_load.py --vectors vectors
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine_info import machine

QUESTIONS = ["How did the exam go?", "What do you think about the rain today?",
             "Tell me about your weekend.", "How was the train ride?",
             "What happened at the meeting?", "Describe your neighbour's dog.",
             "How is the new job?", "What did you cook last night?"]
MIXES = [None, {"joy": 1.0}, {"anger": 1.0}, {"sadness": 1.5}, {"joy": 1.0, "anger": -0.5},
         {"fear": 1.0}, {"disgust": 0.8}, {"joy": -1.0}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(url: str, i: int, max_tokens: int) -> dict:
    stream = i % 2 == 1
    body = {"model": "default", "max_tokens": max_tokens, "stream": stream, "seed": i,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if MIXES[i % len(MIXES)] is not None:
        body["emotion"] = MIXES[i % len(MIXES)]
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    first = None
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            if not stream:
                tokens = json.loads(resp.read())["usage"]["completion_tokens"]
            else:
                tokens, done = 0, False
                for raw in resp:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get(
                            "content"):
                        first = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                if not done:
                    raise RuntimeError("stream ended without [DONE]")
        return {"ok": True, "stream": stream, "latency": time.perf_counter() - start,
                "ttft": first, "tokens": tokens}
    except Exception as err:  # counted, reported
        return {"ok": False, "stream": stream, "latency": time.perf_counter() - start,
                "error": f"{type(err).__name__}: {err}"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--vectors", default="vectors", help="folder of <emotion>.safetensors")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    names = {p.stem for p in Path(args.vectors).glob("*.safetensors")}
    missing = {k for m in MIXES if m for k in m} - names
    if missing:
        sys.exit(f"{args.vectors} lacks {sorted(missing)}: run `emosteer extract --out "
                 f"{args.vectors}` first")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "emosteer", "serve", "--model", args.model,
                               "--vectors", args.vectors, "--port", str(port),
                               "--max-batch", str(args.concurrency),
                               *(["--threads", str(args.threads)] if args.threads else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                sys.exit(f"server exited: {server.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("server did not come up in 300 s")
                time.sleep(0.5)
        one(url, 0, 4)  # warm-up, not counted
        rss_before = rss_mib(server.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda i: one(url, i, args.max_tokens),
                                    range(args.requests)))
        wall = time.perf_counter() - start
        rss_after = rss_mib(server.pid)
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            health = json.loads(resp.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    tokens = sum(r["tokens"] for r in ok)
    report = {
        "benchmark": "serve_load", "machine": machine(), "model": health["model"],
        "requests": args.requests, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens, "streamed": sum(r["stream"] for r in results),
        "server_torch_threads": args.threads or "default",
        "emotion_mixes": [m or {} for m in MIXES],
        "errors": len(results) - len(ok),
        "error_samples": [r["error"] for r in results if not r["ok"]][:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(pct(lat, 0.95), 3) if lat else None,
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p95_s": round(pct(ttft, 0.95), 3) if ttft else None,
        "server_rss_mib_before": round(rss_before, 1),
        "server_rss_mib_after": round(rss_after, 1),
        "server_batches": health["batches"], "server_max_batch_seen": health["max_batch_seen"],
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{report['machine']['host'] or 'unknown'}-{report['machine']['cores']}cpu"
    (out_dir / f"serve_load-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
