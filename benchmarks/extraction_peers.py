"""Extraction throughput and memory: emosteer vs repeng 0.4.0 and steering-vectors 0.12.2.

Same bundled model, same contrast pairs (an emotion's system prompt + a question vs the
neutral system prompt + the same question, chat-formatted), same texts per forward pass,
read at the residual stream (decoder layer output) at the last token: the recipe both peers
use. Each side runs in its own process (peers in .venv-peers: they pin transformers<5 and
numpy<2), loaded once, then timed in turn, order alternating, round after round; the
speedup is the median over rounds of (peer seconds / emosteer seconds) within a round. Vectors are
compared layer by layer (cosine) on this mean-difference run. Peak RSS is each process's
high-water mark during extraction alone (reset after the model is loaded).

    python benchmarks/extraction_peers.py [--pairs 200] [--rounds 3] [--batch-pairs 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_PY = Path(os.environ.get("EMOSTEER_PEER_PYTHON", ROOT / ".venv-peers" / "bin" / "python"))
PEERS = ("repeng", "steering_vectors")


def contrast_pairs(tok, n: int) -> list[tuple[str, str]]:
    """n pairs over the five emotions, round-robin: (emotion prompt + q, neutral prompt + q)."""
    from emosteer import data
    from emosteer.generation import chat_prompt
    from emosteer.vectors import EMOTIONS

    by_emotion = {e: data.load_queries("emotion_query", [e]) for e in EMOTIONS}
    pairs = []
    for i in range(n):
        emotion = EMOTIONS[i % len(EMOTIONS)]
        q = by_emotion[emotion][i // len(EMOTIONS)].question
        pairs.append((chat_prompt(tok, q, data.system_prompt(emotion)),
                      chat_prompt(tok, q, data.system_prompt(None))))
    return pairs


def ours(spec_path: str, out: str) -> None:
    """Worker: emosteer's read_pairs in this process, same protocol as peer_extract.py."""
    sys.path.insert(0, str(HERE))
    from peer_extract import serve

    import emosteer
    from emosteer.extraction.contrast import read_pairs

    model, tok = emosteer.load_model("default")

    def run(pairs, batch):
        vector = read_pairs(model, tok, [tuple(p) for p in pairs], batch_size=batch)
        return dict(vector.directions)

    serve(run, json.loads(Path(spec_path).read_text()), out,
          {"peer": "emosteer", "version": emosteer.__version__})


def generate_memory(n: int) -> None:
    """Worker: peak RSS of the paper's extract() (generates, then re-reads) on n joy queries."""
    sys.path.insert(0, str(HERE))
    from peer_extract import reset_peak_rss, rss_mb

    import emosteer
    from emosteer.extraction.extract import ExtractConfig, extract

    model, tok = emosteer.load_model("default")
    extract(model, tok, ExtractConfig(emotions=("joy",), limit=2), progress=False)  # warm-up
    model_rss = rss_mb("VmRSS")
    reset_peak_rss()
    result = extract(model, tok, ExtractConfig(emotions=("joy",), limit=n), progress=False)
    print(json.dumps({"queries": n, "seconds": result.seconds, "rss_after_load_mb": model_rss,
                      "peak_rss_mb": rss_mb("VmHWM")}))


class Worker:
    """One side's process: loaded once, then timed on demand (one "go" per round)."""

    def __init__(self, side: str, spec: Path, out: Path):
        if side == "emosteer":
            cmd = [sys.executable, __file__, "--worker", str(spec), str(out)]
        else:
            cmd = [str(PEER_PY), str(HERE / "peer_extract.py"), "--peer", side, "--spec",
                   str(spec), "--out", str(out)]
        self.side = side
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.read()  # {"ready": true}: loaded and warmed up

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def time_once(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()["seconds"]

    def finish(self) -> dict:
        self.proc.stdin.close()
        summary = self.read()
        self.proc.wait()
        return summary


def cosines(a: dict, b: dict, layers: list[int]) -> dict[int, float]:
    import torch

    return {layer: float(torch.nn.functional.cosine_similarity(a[f"layer.{layer}"],
                                                               b[f"layer.{layer}"], dim=0))
            for layer in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-pairs", type=int, default=16,
                        help="pairs per batch: 2x this many texts per forward pass, all sides")
    parser.add_argument("--memory-pairs", type=int, nargs="*", default=[50, 500],
                        help="emosteer-only runs whose peak RSS shows memory flat in queries")
    parser.add_argument("--repeng-train", action="store_true",
                        help="also time repeng's ControlVector.train (PCA), once")
    parser.add_argument("--memory-generate", type=int, nargs="*", default=[16, 32],
                        help="joy queries for extract() (generation) runs: peak RSS vs count")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker-generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        ours(*args.worker)
        return
    if args.worker_generate:
        generate_memory(args.worker_generate)
        return
    if not PEER_PY.exists():
        sys.exit(f"{PEER_PY} is missing: run `make bench` (it creates .venv-peers)")

    import torch
    from machine_info import machine, write_results
    from safetensors.torch import load_file

    import emosteer
    from emosteer.models import cache_dir

    _, tok = emosteer.load_model("default")
    pairs = contrast_pairs(tok, max([args.pairs, *args.memory_pairs]))
    tokens = sum(len(tok(t, add_special_tokens=False).input_ids) for p in pairs[:args.pairs]
                 for t in p)
    work = Path(tempfile.mkdtemp(prefix="emosteer-bench-"))
    spec = work / "spec.json"
    spec.write_text(json.dumps({"model": str(cache_dir() / "smollm2-135m-instruct"),
                                "pairs": pairs[:args.pairs], "batch_pairs": args.batch_pairs}))
    sides = ("emosteer", *PEERS)
    workers = {s: Worker(s, spec, work / f"{s}.safetensors") for s in sides}
    times: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            times[side].append(workers[side].time_once())
            print(f"round {r} {side}: {times[side][-1]:.1f} s", file=sys.stderr)
    summaries = {s: workers[s].finish() for s in sides}
    train = None
    if args.repeng_train:
        w = Worker("repeng_train", spec, work / "repeng_train.safetensors")
        train = {"seconds": w.time_once(), **w.finish()}

    vectors = {s: load_file(work / f"{s}.safetensors") for s in sides}
    n_layers = len(vectors["emosteer"])
    seconds = {s: statistics.median(times[s]) for s in sides}
    per_side = {s: {"seconds": seconds[s], "tokens_per_s": tokens / seconds[s],
                    "seconds_per_100_queries": 100 * seconds[s] / args.pairs,
                    "peak_rss_mb": summaries[s]["peak_rss_mb"],
                    "rss_after_load_mb": summaries[s]["rss_after_load_mb"],
                    "version": summaries[s]["version"], "runs_seconds": times[s]}
                for s in sides}
    # per round ratios: each round's sides ran back to back, under the same load
    round_speedup = {p: statistics.median(a / b for a, b in zip(times[p], times["emosteer"],
                                                                  strict=True))
                     for p in PEERS}
    # repeng reads hidden_states[l + 1]: the last one is after the final norm, not layer n-1
    cos_sv = cosines(vectors["emosteer"], vectors["steering_vectors"], list(range(n_layers)))
    cos_rp = cosines(vectors["emosteer"], vectors["repeng"], list(range(n_layers - 1)))
    faster_peer = min(PEERS, key=lambda p: round_speedup[p])

    memory = {}
    for n in args.memory_pairs:  # emosteer alone, growing query count: peak RSS must stay flat
        mspec = work / f"spec_{n}.json"
        mspec.write_text(json.dumps({"pairs": pairs[:n], "batch_pairs": args.batch_pairs}))
        w = Worker("emosteer", mspec, work / f"mem_{n}.safetensors")
        m = {"seconds": w.time_once(), **w.finish()}
        memory[str(n)] = {"peak_rss_mb": m["peak_rss_mb"],
                          "rss_after_load_mb": m["rss_after_load_mb"], "seconds": m["seconds"]}
    largest = memory[str(max(args.memory_pairs))] if memory else None
    generate_memory_runs = {}
    for n in args.memory_generate:
        proc = subprocess.run([sys.executable, __file__, "--worker-generate", str(n)],
                              capture_output=True, text=True, check=True)
        generate_memory_runs[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])

    report = {
        "benchmark": "extraction_peers",
        "machine": machine(),
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (float32)",
        "pairs": args.pairs, "tokens": tokens, "batch_pairs": args.batch_pairs,
        "rounds": args.rounds, "site": "residual", "positions": "last token",
        "emosteer_tokens_per_s": per_side["emosteer"]["tokens_per_s"],
        "emosteer_seconds_per_100_queries": per_side["emosteer"]["seconds_per_100_queries"],
        "repeng_tokens_per_s": per_side["repeng"]["tokens_per_s"],
        "steering_vectors_tokens_per_s": per_side["steering_vectors"]["tokens_per_s"],
        "extraction_speedup_vs_repeng": round_speedup["repeng"],
        "extraction_speedup_vs_steering_vectors": round_speedup["steering_vectors"],
        "extraction_speedup_vs_faster_peer": min(round_speedup.values()),
        "faster_peer": faster_peer,
        "min_cosine_vs_steering_vectors": min(cos_sv.values()),
        "min_cosine_vs_repeng_mean_diff": min(cos_rp.values()),
        "peak_rss_mb": per_side["emosteer"]["peak_rss_mb"],
        "peak_rss_over_model_rss": (per_side["emosteer"]["peak_rss_mb"]
                                    / per_side["emosteer"]["rss_after_load_mb"]),
        "peak_rss_mb_largest_query_set": largest and largest["peak_rss_mb"],
        "extract_generate_peak_rss_mb_by_queries":
            {n: r["peak_rss_mb"] for n, r in generate_memory_runs.items()},
        "detail": {"sides": per_side, "cosine_vs_steering_vectors": cos_sv,
                   "cosine_vs_repeng_mean_diff": cos_rp, "memory_by_queries": memory,
                   "extract_generate_memory": generate_memory_runs,
                   "repeng_train_pca_diff": train, "torch_threads": torch.get_num_threads()},
    }
    write_results("extraction_peers", report)


if __name__ == "__main__":
    main()
