"""The vLLM plugin's steering op: compiled vLLM with the plugin vs stock compiled vLLM vs the
eager hook fallback (what the plugin was before the op), side by side in one run.

Three engines on the bundled model, each in its own process (the plugin is per process), all
alive at once, driven in turn: every round runs each batch size on each (engine, side) in an
order that rotates round by round, so slow drift of the machine falls on all of them alike.
  stock   stock vLLM, every plugin off (VLLM_PLUGINS=""), vLLM's default compilation
  op      emosteer's plugin, the steering op in the compiled graph (the default)
  hooks   emosteer's plugin with EMOSTEER_VLLM_STEERING=hooks (eager, forward hooks)
Sides: "unsteered" (no emotion) and "steered" (every request its own mix, in turn); greedy,
ignore_eos (every answer exactly --tokens long), prefix caching off (each run prefills).
Round 0 warms up and is not counted; tokens/s is batch x tokens / the median time.

`host` times the per-step host work alone (no engine): the op's Steerer.fill and the hooks'
Steerer.plan on a hand-made batch layout of N decoding requests, all steered.

Writes benchmarks/results/vllm_op-<machine>.json (or --out) and prints a markdown table.
Only meaningful on an otherwise idle machine (loadavg is recorded).

    .venv-vllm/bin/python benchmarks/vllm_op.py                   # the shipped vectors
    .venv-vllm/bin/python benchmarks/vllm_op.py --tiny --out /tmp/o.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine_info import machine, results_path  # noqa: E402
from serve_load import MIXES, QUESTIONS  # noqa: E402

STEERED_MIXES = [m for m in MIXES if m]
VARIANTS = {"stock": {"VLLM_PLUGINS": ""},
            "op": {"EMOSTEER_VLLM_STEERING": "op"},
            "hooks": {"EMOSTEER_VLLM_STEERING": "hooks"}}
SIDES = {"stock": ("unsteered",), "op": ("unsteered", "steered"),
         "hooks": ("unsteered", "steered")}


def engine_process(conn, engine_kwargs: dict) -> None:
    """One engine: answers ("run", batch, side, tokens) with seconds, ("info",) with its
    settings, ("stop",) by exiting."""
    from vllm import LLM

    from emosteer.generation import GenerateConfig, chat_prompt
    from emosteer.vllm import model_source, sampling_params

    engine = LLM(model=model_source("default"), **engine_kwargs)
    tok = engine.get_tokenizer()
    conn.send("ready")
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        if message[0] == "info":
            config = engine.llm_engine.vllm_config
            conn.send({"enforce_eager": config.model_config.enforce_eager,
                       "compilation_mode": str(config.compilation_config.mode),
                       "dtype": str(config.model_config.dtype)})
            continue
        _, batch, side, tokens = message
        cfg = GenerateConfig(do_sample=False, max_new_tokens=tokens, repetition_penalty=1.0)
        prompts = [chat_prompt(tok, QUESTIONS[i % len(QUESTIONS)], None) for i in range(batch)]
        params = [sampling_params(cfg, None if side == "unsteered" else
                                  STEERED_MIXES[i % len(STEERED_MIXES)], ignore_eos=True)
                  for i in range(batch)]
        start = time.perf_counter()
        engine.generate(prompts, params, use_tqdm=False)
        conn.send(time.perf_counter() - start)


def start_engines(variants: list[str], vectors: str, engine_kwargs: dict) -> dict:
    """Each variant's engine process (started one after the other: each compiles)."""
    ctx = mp.get_context("spawn")
    engines = {}
    for name in variants:
        env = dict(os.environ)
        os.environ.pop("EMOSTEER_VECTORS", None)
        if name != "stock":
            os.environ["EMOSTEER_VECTORS"] = str(Path(vectors).resolve())
        os.environ.update(VARIANTS[name])
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=engine_process, args=(child, engine_kwargs))
        start = time.perf_counter()
        proc.start()
        os.environ.clear()
        os.environ.update(env)  # the next variant starts from this process's own env
        if parent.recv() != "ready":
            raise SystemExit(f"engine {name} failed to start")
        print(f"engine {name} ready in {time.perf_counter() - start:.0f} s", flush=True)
        engines[name] = (proc, parent)
    return engines


def throughput(engines: dict, batches: list[int], tokens: int, rounds: int) -> dict:
    runs = [(name, side) for name in engines for side in SIDES[name]]
    times: dict[tuple, list[float]] = {(b, n, s): [] for b in batches for n, s in runs}
    for r in range(rounds + 1):  # round 0 warms up
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        for batch in batches:
            for name, side in order:
                conn = engines[name][1]
                conn.send(("run", batch, side, tokens))
                seconds = conn.recv()
                if r:
                    times[(batch, name, side)].append(seconds)
                else:
                    print(f"warm-up: batch {batch} {name} {side} {seconds:.1f} s", flush=True)
        print(f"round {r}/{rounds} done", flush=True)
    out = {}
    for batch in batches:
        rate = {f"{n}_{s}": round(batch * tokens / statistics.median(times[(batch, n, s)]), 2)
                for n, s in runs}
        row = {"tok_s": rate, "rounds": rounds}
        if "op_steered" in rate:
            row["op_steered_over_unsteered"] = round(rate["op_steered"] / rate["op_unsteered"], 4)
        if "hooks_steered" in rate:
            row["hooks_steered_over_unsteered"] = round(
                rate["hooks_steered"] / rate["hooks_unsteered"], 4)
        if "stock_unsteered" in rate and "op_unsteered" in rate:
            row["op_unsteered_over_stock"] = round(
                rate["op_unsteered"] / rate["stock_unsteered"], 4)
        if "hooks_steered" in rate and "op_steered" in rate:
            row["op_over_hooks_steered"] = round(rate["op_steered"] / rate["hooks_steered"], 4)
            row["op_over_hooks_unsteered"] = round(
                rate["op_unsteered"] / rate["hooks_unsteered"], 4)
        out[str(batch)] = row
    return out


def host(vectors: str, sizes: list[int], calls: int) -> dict:
    """Microseconds per step of host work: the op's fill vs the hooks' plan, N decoding
    requests, all steered (the mixes in turn), after one warm-up step."""
    import numpy as np
    import torch

    from emosteer.vllm.bank import VectorBank
    from emosteer.vllm.worker import Steerer

    bank = VectorBank.load(vectors)
    out = {}
    for n in sizes:
        ids = [f"req-{i}" for i in range(n)]
        requests = {rid: SimpleNamespace(sampling_params=SimpleNamespace(
            extra_args={"emotion": STEERED_MIXES[i % len(STEERED_MIXES)]}))
            for i, rid in enumerate(ids)}
        runner = SimpleNamespace(input_batch=SimpleNamespace(req_ids=ids, num_reqs=n),
                                 requests=requests,
                                 query_start_loc=SimpleNamespace(np=np.arange(n + 1)))
        model = torch.nn.ModuleDict({str(k): torch.nn.Identity() for k in range(30)})
        steerer = Steerer(bank, {k: model[str(k)] for k in range(30)}, bank.stacked(30))
        steerer.compile(model, 8192)
        row = {}
        for name, step in (("op_fill", steerer.fill), ("hooks_plan", steerer.plan)):
            step(runner)
            start = time.perf_counter()
            for _ in range(calls):
                step(runner)
            row[f"{name}_us"] = round((time.perf_counter() - start) / calls * 1e6, 1)
        out[str(n)] = row
    return out


def table(report: dict) -> str:
    lines = ["| batch | stock | op unsteered | op steered | hooks unsteered | hooks steered | "
             "op steered/unsteered | op unsteered/stock | op/hooks (steered) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for batch, row in report.get("throughput", {}).items():
        t = row["tok_s"]
        lines.append(f"| {batch} | {t.get('stock_unsteered', '-')} | {t.get('op_unsteered', '-')}"
                     f" | {t.get('op_steered', '-')} | {t.get('hooks_unsteered', '-')} | "
                     f"{t.get('hooks_steered', '-')} | "
                     f"{row.get('op_steered_over_unsteered', '-')} | "
                     f"{row.get('op_unsteered_over_stock', '-')} | "
                     f"{row.get('op_over_hooks_steered', '-')} |")
    return "\n".join(lines)


def main() -> None:
    from emosteer.files import write_text
    from emosteer.vectors import DEFAULT_VECTORS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", default=str(DEFAULT_VECTORS),
                    help="folder of vectors (needs joy, anger, sadness, fear, disgust)")
    ap.add_argument("--variants", default="stock,op,hooks")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dtype", default="auto", help="vLLM's dtype (auto: bfloat16 on CPU)")
    ap.add_argument("--cudagraphs", choices=("default", "off"), default="default",
                    help="off: compilation_config cudagraph_mode NONE (GPU: torch.compile "
                    "without CUDA graphs; the CPU has none either way)")
    ap.add_argument("--host-sizes", default="1,8,32,64,256")
    ap.add_argument("--tiny", action="store_true", help="prove it runs: batch 1 and 2, 4 "
                    "tokens, 1 round (numbers meaningless)")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/)")
    args = ap.parse_args()
    if args.tiny:
        args.batches, args.tokens, args.rounds, args.host_sizes = "1,2", 4, 1, "1,8"
    batches = [int(b) for b in args.batches.split(",")]
    report = {"benchmark": "vllm_op", "machine": machine(), "tiny": args.tiny,
              "command": " ".join(["benchmarks/vllm_op.py", *sys.argv[1:]]),
              "vectors": str(args.vectors), "tokens": args.tokens, "variants": VARIANTS}
    report["host"] = host(args.vectors, [int(n) for n in args.host_sizes.split(",")],
                          200 if args.tiny else 2000)
    engine_kwargs = {"dtype": args.dtype, "max_model_len": 1024,
                     "enable_prefix_caching": False, "max_num_seqs": max(batches),
                     "kv_cache_memory_bytes": 1 << 30, "seed": 0}
    if args.cudagraphs == "off":
        engine_kwargs["compilation_config"] = {"cudagraph_mode": "NONE"}
    report["cudagraphs"] = args.cudagraphs
    engines = start_engines(args.variants.split(","), args.vectors, engine_kwargs)
    try:
        report["engines"] = {}
        for name, (_, conn) in engines.items():
            conn.send(("info",))
            report["engines"][name] = conn.recv()
        report["throughput"] = throughput(engines, batches, args.tokens, args.rounds)
    finally:
        for proc, conn in engines.values():
            conn.send(("stop",))
            proc.join(timeout=30)
            if proc.is_alive():  # vLLM's shutdown can hang; its processes follow their parent
                proc.kill()
    report["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    path = Path(args.out) if args.out else results_path("vllm_op", report["machine"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":  # vLLM spawns processes
    main()
