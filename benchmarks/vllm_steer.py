"""Emotion steering inside vLLM: what the plugin costs, and what vLLM buys over our own engines.

Three measurements on the bundled model, same prompts (run in .venv-vllm, `make test-vllm`
builds it; the built-in server side runs in .venv):
  throughput  greedy tokens/s of one offline vLLM batch, steered (every request its own mix)
              and unsteered, at batch 1, 8 and 32, interleaved round by round (order
              alternating), prefix caching off so both sides prefill every round;
  serve       benchmarks/serve_load.py's load (requests, concurrency, mixed emotions, half
              streamed) against vLLM's OpenAI server with the plugin, and against
              `emosteer serve` (serve_load.py itself, run with --builtin-python);
  sweep       an alpha sweep's generation (questions x alphas of one emotion, emosteer's
              sampling settings): one vLLM batch vs transformers generate per alpha.
Prints one JSON object as the last line and writes benchmarks/results/vllm_steer-<machine>.json
(or --out). Timings are only meaningful on an otherwise idle machine (loadavg is recorded).

    .venv-vllm/bin/python benchmarks/vllm_steer.py --vectors vectors
    .venv-vllm/bin/python benchmarks/vllm_steer.py --vectors vectors --tiny --out /tmp/v.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine_info import machine, results_path  # noqa: E402
from serve_load import MIXES, QUESTIONS, free_port, one, pct  # noqa: E402

STEERED_MIXES = [m for m in MIXES if m]  # each steered request gets one, in turn


def throughput(engine, batches: list[int], tokens: int, rounds: int) -> dict:
    """Steered / unsteered greedy tokens/s per batch size, interleaved rounds."""
    from emosteer.generation import GenerateConfig, chat_prompt
    from emosteer.vllm import sampling_params

    cfg = GenerateConfig(do_sample=False, max_new_tokens=tokens, repetition_penalty=1.0)
    tok = engine.get_tokenizer()
    out = {}
    for batch in batches:
        prompts = [chat_prompt(tok, QUESTIONS[i % len(QUESTIONS)], None) for i in range(batch)]
        # every answer exactly `tokens` long (ignore_eos), so both sides do the same work
        sides = {"unsteered": [sampling_params(cfg, ignore_eos=True)] * batch,
                 "steered": [sampling_params(cfg, STEERED_MIXES[i % len(STEERED_MIXES)],
                                             ignore_eos=True) for i in range(batch)]}
        times: dict[str, list[float]] = {side: [] for side in sides}
        for r in range(rounds + 1):  # round 0 warms up, not counted
            for side in (list(sides) if r % 2 else list(sides)[::-1]):
                start = time.perf_counter()
                engine.generate(prompts, sides[side], use_tqdm=False)
                if r:
                    times[side].append(time.perf_counter() - start)
        rate = {side: batch * tokens / statistics.median(t) for side, t in times.items()}
        out[str(batch)] = {"unsteered_tok_s": round(rate["unsteered"], 2),
                           "steered_tok_s": round(rate["steered"], 2),
                           "ratio": round(rate["steered"] / rate["unsteered"], 4),
                           "rounds": rounds}
    return out


def sweep(engine, emotion: str, alphas: list[float], n_questions: int, vectors: str) -> dict:
    """An alpha sweep's generation: one vLLM batch vs transformers generate per alpha."""
    import emosteer
    from emosteer.generation import GenerateConfig
    from emosteer.vllm import alpha_sweep

    cfg = GenerateConfig()  # emosteer's sampling settings, 48 new tokens
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n_questions)]
    start = time.perf_counter()
    alpha_sweep(engine, questions, emotion, alphas, cfg=cfg)
    vllm_s = time.perf_counter() - start
    model, tok = emosteer.load_model("default")
    vector = emosteer.load_vectors(vectors)[emotion]
    start = time.perf_counter()
    for alpha in alphas:
        emosteer.generate_text(model, tok, questions, vector if alpha else None, alpha, cfg=cfg)
    hf_s = time.perf_counter() - start
    return {"emotion": emotion, "alphas": alphas, "questions": n_questions,
            "max_new_tokens": cfg.max_new_tokens, "vllm_s": round(vllm_s, 2),
            "transformers_s": round(hf_s, 2), "speedup": round(hf_s / vllm_s, 2)}


def serve(vectors: str, requests: int, concurrency: int, max_tokens: int,
          builtin_python: str | None) -> dict:
    """serve_load.py's load against vLLM's server (and against `emosteer serve`)."""
    from emosteer.vllm import serve_command

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv, env = serve_command("default", vectors, port=port)  # answers to model "default"
    # the log goes to a file, not a pipe: a full pipe would stall the server
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                  start_new_session=True)
        try:
            _wait(url, server, log)
            one(url, 0, 4)  # warm-up, not counted
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lambda i: one(url, i, max_tokens), range(requests)))
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    out = {"vllm": _load_summary(results, wall), "requests": requests,
           "concurrency": concurrency, "max_tokens": max_tokens}
    if builtin_python:
        done = subprocess.run([builtin_python, str(HERE / "serve_load.py"), "--vectors", vectors,
                               "--requests", str(requests), "--concurrency", str(concurrency),
                               "--max-tokens", str(max_tokens), "--out", "/tmp"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"serve_load.py failed: {done.stderr[-2000:]}")
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        keys = ("requests_per_s", "tokens_per_s", "latency_p50_s", "latency_p95_s", "errors")
        out["builtin"] = {k: theirs[k] for k in keys}
        out["requests_per_s_ratio_vllm_over_builtin"] = round(
            out["vllm"]["requests_per_s"] / theirs["requests_per_s"], 3)
    return out


def _wait(url: str, server: subprocess.Popen, log, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"vLLM server exited: {log.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"vLLM server did not come up in {timeout:.0f} s") from None
            time.sleep(1)


def _load_summary(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    return {"requests_per_s": round(len(ok) / wall, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
            "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
            "latency_p95_s": round(pct(lat, 0.95), 3) if lat else None,
            "errors": len(results) - len(ok),
            "error_samples": [r["error"] for r in results if not r["ok"]][:3]}


NOT_MEASURED = (
    "GPU (benchmarks/gpu_check.sh runs benchmarks/vllm_op.py there, CUDA graphs on and off), "
    "the V2 runner (default on GPU with Triton; not supported), tensor and pipeline parallel "
    "serving, multi-node, and models other than the bundled one. The plugin's compiled op "
    "against stock vLLM and the eager hook fallback: benchmarks/vllm_op.py.")

PEERS = {  # what the peers report for their own systems, for comparison (not run here)
    "EasySteer": "arXiv 2509.25175: 5.5-11.4x (v1), 10.8-22.3x (v2) over other steering "
                 "frameworks (a framework-vs-framework speedup, like our 'sweep')",
    "vllm-lens": "README: steering and capture overhead shown as plots only "
                 "(perf_generate.png, perf_prefill.png), no figures in text",
    "vLLM fork (rhizonymph.com, 'Activation Steering Part 2')": "+2.7% end-to-end latency "
                 "vs steering disabled, Gemma 3 27B, 16 requests with distinct configs "
                 "(CUDA graphs kept: steering always on, zero vectors as no-op)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", required=True, help="folder of <emotion>.safetensors "
                    "(serve_load's mixes need joy, anger, sadness, fear, disgust)")
    ap.add_argument("--sections", default="throughput,serve,sweep")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer (throughput)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32, help="per request (serve)")
    ap.add_argument("--builtin-python", default=str(HERE.parent / ".venv" / "bin" / "python"),
                    help="the interpreter with emosteer's server ('' skips that side)")
    ap.add_argument("--alphas", default="-1,0,1,2,4")
    ap.add_argument("--sweep-questions", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="prove it runs: batch 1 and 2, 4 "
                    "tokens, 1 round, 4 requests, 2 questions (numbers meaningless)")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/)")
    args = ap.parse_args()
    if args.tiny:
        args.batches, args.tokens, args.rounds = "1,2", 4, 1
        args.requests, args.concurrency, args.max_tokens = 4, 2, 4
        args.alphas, args.sweep_questions = "0,1", 2
    sections = args.sections.split(",")
    names = {p.stem for p in Path(args.vectors).glob("*.safetensors")}
    missing = sorted({k for m in MIXES if m for k in m} - names)
    if missing:
        raise SystemExit(f"{args.vectors} lacks {missing}: run `emosteer extract --out "
                         f"{args.vectors}` first")
    report = {"benchmark": "vllm_steer", "machine": machine(), "tiny": args.tiny,
              "not_measured": NOT_MEASURED,
              "peers_reported": PEERS}
    if "serve" in sections:  # first: no offline engine competes for the cores
        report["serve"] = serve(args.vectors, args.requests, args.concurrency,
                                args.max_tokens, args.builtin_python or None)
    if {"throughput", "sweep"} & set(sections):
        import emosteer.vllm

        engine = emosteer.vllm.llm("default", args.vectors, enable_prefix_caching=False,
                                   max_num_seqs=max(32, *map(int, args.batches.split(","))))
        report["dtype"] = str(engine.llm_engine.model_config.dtype)
        eager = engine.llm_engine.vllm_config.model_config.enforce_eager
        report["runner"] = f"vLLM V1 model runner, {'eager' if eager else 'compiled'}"
        if "throughput" in sections:
            report["throughput"] = throughput(engine, [int(b) for b in args.batches.split(",")],
                                              args.tokens, args.rounds)
        if "sweep" in sections:
            report["sweep"] = sweep(engine, "joy", [float(a) for a in args.alphas.split(",")],
                                    args.sweep_questions, args.vectors)
    path = Path(args.out) if args.out else results_path("vllm_steer", report["machine"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":  # vLLM spawns processes
    main()
