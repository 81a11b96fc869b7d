"""`make bench`: every CPU benchmark in one run, one results file, the table in the docs.

Runs extraction_peers.py and steer_overhead.py (each prints its JSON on its last line),
writes benchmarks/results/<machine>.json with everything they measured, and rewrites the
generated part of docs/benchmarks.md (between the bench markers) from it.

    python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine_info import machine, results_path  # noqa: E402  (a script beside this one)

DOCS = HERE.parent / "docs" / "benchmarks.md"
START, END = "<!-- bench:start (written by `make bench`) -->", "<!-- bench:end -->"

BENCHMARKS = {
    "extraction_peers": [],
    "steer_overhead": [],
}
QUICK = {
    "extraction_peers": ["--pairs", "20", "--rounds", "1", "--memory-pairs", "10",
                         "--memory-generate"],
    "steer_overhead": ["--rounds", "1", "--new-tokens", "8", "--pairs", "2"],
}


def run(name: str, extra: list[str], env: dict) -> tuple[dict, float, list[float]]:
    load = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], cwd=HERE,
                          capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    m = summary["machine"]
    full = results_path(name, m)
    report = json.loads(full.read_text()) if full.exists() else summary
    print(f"{name}: {seconds:.0f} s", file=sys.stderr)
    return report, seconds, load


def verdict(value: float, target: float) -> str:
    return f"{value:.3f} | >= {target:g} | {'met' if value >= target else '**missed**'}"


def table(results: dict) -> str:
    ex = results["benchmarks"]["extraction_peers"]
    so = results["benchmarks"]["steer_overhead"]
    m = results["machine"]
    sides = ex["detail"]["sides"]
    gen = so["detail"]["generation"]
    proj = so["detail"]["gpu_projection"]
    gpu = so["detail"]["gpu_assumptions"]
    mem = ex["detail"]["memory_by_queries"]
    genmem = ex["detail"].get("extract_generate_memory", {})
    load = results["loadavg_1min_by_benchmark"]
    repeng_layers = len(ex["detail"]["cosine_vs_repeng_mean_diff"]) - 1
    targets = [  # (what, measured, target): one row each of the targets table
        (f"extraction speedup vs the faster peer ({ex['faster_peer']})",
         ex["extraction_speedup_vs_faster_peer"], 1.5),
        ("identical vectors: min cosine vs steering-vectors (mean difference, all layers)",
         ex["min_cosine_vs_steering_vectors"], 0.999),
        (f"identical vectors: min cosine vs repeng's reading, mean difference (layers "
         f"0-{repeng_layers})", ex["min_cosine_vs_repeng_mean_diff"], 0.999),
        ("steered / unsteered tokens/s, hook, batch 1",
         so["steered_over_unsteered_tokens_per_s"], 0.97),
        ("steered / unsteered tokens/s, hook, batch 8",
         so["steered_over_unsteered_tokens_per_s_batch_8"], 0.97),
        ("steered / unsteered tokens/s, fold, batch 1",
         so["fold_over_unsteered_tokens_per_s"], 0.97),
        ("steered / unsteered tokens/s, fold, batch 8",
         so["fold_over_unsteered_tokens_per_s_batch_8"], 0.97),
        ("per-row steering (5 emotions in a batch of 8) / unsteered batch of 8",
         so["per_row_over_unsteered_tokens_per_s_batch_8"], 0.95),
        ("GPU projected, hook, worst case (no overlap), batch 1",
         so["projected_gpu_steered_over_unsteered_batch_1"], 0.97),
        ("GPU projected, hook, worst case (no overlap), batch 32",
         so["projected_gpu_steered_over_unsteered_batch_32"], 0.97),
        ("GPU projected, hook, GPU-bound (CPU work overlapped), batch 1",
         so["projected_gpu_overlapped_steered_over_unsteered_batch_1"], 0.97),
        ("GPU projected, fold", 1.0, 0.97),
    ]
    lines = [
        f"Machine: `{results['name']}`, {m['cpu']} ({m['cores']} cores, {m['threads']} torch "
        f"threads), torch {m['torch']}, CUDA: {'yes' if m['cuda'] else 'no'}. "
        f"`make bench` took {results['wall_seconds'] / 60:.1f} min; 1-minute load average "
        f"when each benchmark started: "
        + ", ".join(f"{k} {v[0]}" for k, v in load.items())
        + " (2 cores: above 1-2, other work was competing; ratios are measured side by side, "
        "absolute tokens/s are not comparable across runs).",
        "",
        "### Targets",
        "",
        "| what | measured | target | |",
        "|---|---|---|---|",
        *[f"| {what} | {verdict(value, target)} |" for what, value, target in targets],
        "",
        "### 1. Extraction throughput (`benchmarks/extraction_peers.py`)",
        "",
        f"{ex['pairs']} contrast pairs ({ex['tokens']} tokens): an emotion's system prompt + "
        "a question vs the neutral system prompt + the same question, chat-formatted, the five "
        "emotions in turn. Every side reads the residual stream (decoder layer output) at the "
        f"last token of each text, {2 * ex['batch_pairs']} texts per forward pass, and takes "
        "the mean difference. Each side is a process of its own, loaded and warmed up once, "
        f"then timed in turn ({ex['rounds']} rounds, order alternating); the speedup is the "
        "median over rounds of the within-round ratio.",
        "",
        "| side | seconds | tokens/s | s per 100 queries | peak RSS during extraction (MB) "
        "| speedup of emosteer |",
        "|---|---|---|---|---|---|",
    ]
    speed = {"repeng": ex["extraction_speedup_vs_repeng"],
             "steering_vectors": ex["extraction_speedup_vs_steering_vectors"]}
    names = {"emosteer": "emosteer `read_pairs`", "repeng": "repeng 0.4.0 (its reading, "
             "`batched_get_hiddens`, + mean difference)",
             "steering_vectors": "steering-vectors 0.12.2 `train_steering_vector` (mean)"}
    for side, s in sides.items():
        lines.append(f"| {names[side]} | {s['seconds']:.1f} | {s['tokens_per_s']:.0f} | "
                     f"{s['seconds_per_100_queries']:.1f} | {s['peak_rss_mb']:.0f} | "
                     + (f"{speed[side]:.2f}x" if side in speed else "-") + " |")
    train = ex["detail"].get("repeng_train_pca_diff")
    if train:
        lines += ["", f"repeng's own `ControlVector.train` (PCA of differences, what a repeng "
                      f"user runs) took {train['seconds']:.1f} s on the same pairs, once."]
    lines += [
        "",
        "### 4. Peak memory of extraction",
        "",
        "Peak RSS is each process's high-water mark during extraction alone (reset after the "
        "model is loaded), against the RSS of the loaded model.",
        "",
        "| extraction | queries | RSS with model loaded (MB) | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for n, r in mem.items():
        lines.append(f"| `read_pairs` (contrast pairs) | {n} | {r['rss_after_load_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    for n, r in genmem.items():
        lines.append(f"| `extract` (generates 48 tokens twice, re-reads) | {n} | "
                     f"{r['rss_after_load_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += [
        "",
        "### 2-3. Steered generation (`benchmarks/steer_overhead.py`)",
        "",
        f"Greedy, exactly {so['new_tokens']} new tokens per run, {so['rounds']} rounds; in "
        "every round each kind runs once (order rotating); ratio = median over rounds of the "
        f"within-round ratio. One joy vector on all {so['layers_steered']} layers at the "
        "self-attention output, alpha 1. Per-row: the five emotions' vectors over the 8 rows "
        "(`steer_rows`).",
        "",
        "| batch | kind | tokens/s (median) | / unsteered |",
        "|---|---|---|---|",
    ]
    for key, label in (("batch_1", "1"), ("batch_8", "8"), ("rows_batch_8", "8")):
        g = gen[key]
        for kind, tps in g["tokens_per_s"].items():
            ratio = g["over_unsteered"].get(kind)
            lines.append(f"| {label} | {kind} | {tps:.1f} | "
                         + (f"{ratio:.3f}" if ratio is not None else "-") + " |")
    cost = so["detail"]["hook_cost_us"]
    lines += [
        "",
        "### 5. GPU, projected",
        "",
        ("A GPU was present and measured. " if so["gpu_measured"]
         else "No GPU here: projected, not measured. ") +
        "CPU-side cost of one steering hook call (module call with the hook minus without), "
        "Python and dispatch only, on a (batch, 1, 1) tensor: "
        f"{cost['dispatch_batch_1']['us_per_hook_call']:.1f} us at batch 1, "
        f"{cost['dispatch_batch_32']['us_per_hook_call']:.1f} us at batch 32 "
        f"({so['hook_cpu_us_per_decode_step_batch_1']:.0f} "
        f"and {so['hook_cpu_us_per_decode_step_batch_32']:.0f} us per "
        f"decode step over {gpu['layers']} layers). With the add done on CPU at d = 4096: "
        f"{cost['cpu_add_batch_1']['us_per_hook_call']:.1f} and "
        f"{cost['cpu_add_batch_32']['us_per_hook_call']:.1f} us.",
        "",
        f"Assumed: {gpu['model']} on {gpu['gpu']}; decode step "
        f"{gpu['decode_step_ms']['1']} ms at batch 1 and {gpu['decode_step_ms']['32']} ms at "
        "batch 32 (16.1 GB of weights read per step: 4.8 ms at full bandwidth); "
        f"{gpu['cuda_launch_us']:g} us of CPU to launch the add kernel, {gpu['add_kernel_us']:g} "
        "us for the add on the GPU. Steered / unsteered = step / (step + layers x per-hook):",
        "",
    ]
    for b in ("1", "32"):
        p = proj[f"batch_{b}"]
        lines.append(f"- batch {b}, worst case (nothing overlaps): {p['arithmetic']}")
        lines.append(f"- batch {b}, GPU-bound (the CPU runs ahead, only the add kernels "
                     f"count): {p['overlapped_arithmetic']}")
    lines.append("- fold: the vector sits in o_proj's bias, added inside the existing matmul "
                 "kernel: no hook, no kernel, 1.000.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, checks the plumbing: writes <machine>-quick.json and "
                             "leaves the docs alone (the scripts' own files are overwritten)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every process (default: 1 if the machine is "
                             "busy, 1-minute load average > 1, else torch's default)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))

    # Other work on the machine makes torch's threads wait for each other (a descheduled
    # thread stalls every matmul): one thread per process keeps side-by-side ratios honest.
    threads = args.threads or (1 if os.getloadavg()[0] > 1.0 else None)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    benchmarks, seconds, loads = {}, {}, {}
    for name, extra in BENCHMARKS.items():
        benchmarks[name], seconds[name], loads[name] = run(
            name, QUICK[name] if args.quick else extra, env)
    m = machine()
    name = f"{m['host'] or 'unknown'}-{m['cores']}cpu"
    results = {"name": name, "machine": {**m, "threads": threads or m["threads"]},
               "quick": args.quick,
               "wall_seconds": time.perf_counter() - start, "seconds_by_benchmark": seconds,
               "loadavg_1min_by_benchmark": loads, "loadavg_at_end": os.getloadavg(),
               "benchmarks": benchmarks}
    out = HERE / "results" / f"{name}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{START}\n{table(results)}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    if not args.quick:
        DOCS.write_text(text)
    summary = {k: v for k, v in benchmarks["extraction_peers"].items() if k != "detail"}
    summary.update({k: v for k, v in benchmarks["steer_overhead"].items() if k != "detail"})
    summary.update(results_file=str(out.relative_to(HERE.parent)),
                   wall_seconds=results["wall_seconds"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
