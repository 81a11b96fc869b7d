"""What the emotion meter costs the built-in server: tokens/s with the meter off, on, and
without its code at all.

The built-in server's own decode loop (`emosteer.server.Engine.run_batch`, called directly,
no HTTP) generates the same prompts on the bundled model with the shipped vectors and the
shipped meter, greedy, exactly --new-tokens per request (end tokens are not honoured, so
every kind produces the same number of tokens). Three kinds, run in turn inside every round
(the order rotating), so drift of a shared machine falls on all alike:

- `no_meter_code`: the engine as it was before the meter landed (engine.py at commit
  217b716, read with `git show`; the meter commits changed nothing else in that file);
- `meter_off`: today's engine, requests without "meter" (the shipped meter loaded);
- `meter_on`: today's engine, every request with "meter": true (its hooks on every layer of
  the meter's band, one reading per token decoded into an event).

For each batch size, tokens/s per kind (median over rounds) and the ratios meter_on /
meter_off and meter_off / no_meter_code (median over rounds of the within-round ratios), in
wall-clock and in this process's CPU time. The events' way to the client (asyncio, JSON) is
not timed. Writes benchmarks/results/meter_cost-<machine>.json (with --quick,
meter_cost-quick-<machine>.json: a check of the plumbing, not a result); the last stdout line
is its JSON.

    python benchmarks/meter_cost.py [--rounds 9] [--new-tokens 48] [--batch 1 --batch 4]
    python benchmarks/meter_cost.py --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from machine_info import machine, write_results

import emosteer
from emosteer import data
from emosteer.generation import chat_prompt
from emosteer.server import Engine, Job, Sampling
from emosteer.vectors import DEFAULT_VECTORS, load_vectors

ROOT = Path(__file__).resolve().parent.parent
PREMETER = "217b716"  # the last commit of server/engine.py before the meter
MIXES: list[dict[str, float] | None] = [{"joy": 1.5}, None, {"anger": 1.0}, {"sadness": 1.0}]


def premeter_module() -> ModuleType | str:
    """engine.py as of PREMETER, imported under its own name; a reason string when git or
    the import fails (the kind is then skipped)."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show",
                                 f"{PREMETER}:src/emosteer/server/engine.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        return f"git show {PREMETER} failed: {err}"
    name = "emosteer_engine_premeter"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        exec(compile(source, f"{PREMETER}:src/emosteer/server/engine.py", "exec"),
             module.__dict__)
    except Exception as err:  # the old file no longer imports against today's library
        return f"engine.py at {PREMETER} does not import: {type(err).__name__}: {err}"
    return module


def run_once(engine: Any, job_class: Any, prompts: list[list[int]], vectors: list, n: int,
             meter: bool | None) -> tuple[float, float, int]:
    """(tokens/s wall, tokens/s CPU, tokens) for one batch; meter None = the old Job."""
    sampling = Sampling(max_tokens=n, temperature=0)
    extra = {} if meter is None else {"meter": meter}
    jobs = [job_class(p, v, sampling, lambda kind, payload: None, **extra)
            for p, v in zip(prompts, vectors, strict=True)]
    start, cpu = time.perf_counter(), time.process_time()
    engine.run_batch(jobs)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(j.tokens) for j in jobs)
    return tokens / seconds, tokens / cpu_seconds, tokens


def compare(kinds: dict[str, tuple[Any, Any, bool | None]], prompts: list[list[int]],
            vectors: list, rounds: int, n: int) -> dict[str, Any]:
    names = list(kinds)
    for engine, job_class, meter in kinds.values():  # warm-up, untimed
        run_once(engine, job_class, prompts, vectors, 4, meter)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    tokens: dict[str, set[int]] = {k: set() for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            w, c, t = run_once(*kinds[name][:2], prompts, vectors, n, kinds[name][2])
            wall[name].append(w)
            cpu[name].append(c)
            tokens[name].add(t)

    def ratio(table: dict[str, list[float]], a: str, b: str) -> float | None:
        if a not in table or b not in table:
            return None
        return round(statistics.median(x / y for x, y in zip(table[a], table[b], strict=True)),
                     4)

    pairs = [("meter_on", "meter_off"), ("meter_off", "no_meter_code"),
             ("meter_on", "no_meter_code")]
    return {"tokens_per_s": {k: round(statistics.median(v), 2) for k, v in wall.items()},
            "cpu_tokens_per_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
            "ratios": {f"{a}/{b}": ratio(wall, a, b) for a, b in pairs},
            "cpu_ratios": {f"{a}/{b}": ratio(cpu, a, b) for a, b in pairs},
            "tokens_per_run": {k: sorted(v) for k, v in tokens.items()},
            "runs": wall, "cpu_runs": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9,
                        help="interleaved rounds (the ratio is the median over rounds)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens per request")
    parser.add_argument("--batch", type=int, action="append", default=None,
                        help="requests per forward pass; repeat for several (default 1 and 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 on a busy machine)")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 6 tokens at batch 1: checks the plumbing only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.new_tokens, args.batch = 2, 6, [1]
    batches = args.batch or [1, 4]
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = emosteer.load_model("default")
    shipped = load_vectors(DEFAULT_VECTORS)
    meter = emosteer.load_meter(model)  # the one shipped for the bundled model
    questions = [q.question for q in data.load_queries("emotion_query_plus", ["neutral"])]
    prompts = [tok(chat_prompt(tok, q, None), add_special_tokens=False)["input_ids"]
               for q in questions[:max(batches)]]

    today = Engine(model, tok)
    today.meter = meter
    kinds: dict[str, tuple[Any, Any, bool | None]] = {
        "meter_off": (today, Job, False), "meter_on": (today, Job, True)}
    old = premeter_module()
    skipped = old if isinstance(old, str) else None
    if not isinstance(old, str):
        kinds = {"no_meter_code": (old.Engine(model, tok), old.Job, None), **kinds}
    for engine, _, _ in kinds.values():
        engine.eos_ids = frozenset()  # exactly --new-tokens: every kind decodes as much

    detail: dict[str, Any] = {}
    for batch in batches:
        vectors = [None if m is None else emosteer.mix(shipped, m)
                   for m in (MIXES * batch)[:batch]]
        detail[f"batch_{batch}"] = compare(kinds, prompts[:batch], vectors, args.rounds,
                                           args.new_tokens)
    first = detail[f"batch_{batches[0]}"]
    report = {
        "benchmark": "meter_cost", "machine": machine(), "quick": args.quick,
        "model": "bundled SmolLM2-135M-Instruct (default)",
        "vectors": "shipped", "meter_emotions": list(meter.emotions),
        "meter_layers": list(meter.layers),
        "rounds": args.rounds, "new_tokens": args.new_tokens, "batches": batches,
        "mixes": [m or {} for m in MIXES], "premeter_commit": PREMETER,
        "no_meter_code_skipped": skipped,
        "meter_on_over_meter_off": first["ratios"]["meter_on/meter_off"],
        "meter_off_over_no_meter_code": first["ratios"]["meter_off/no_meter_code"],
        "summary_batch": batches[0],
        "detail": detail,
    }
    write_results("meter_cost-quick" if args.quick else "meter_cost", report)


if __name__ == "__main__":
    main()
