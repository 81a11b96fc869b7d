"""Steering overhead and extraction time on the bundled model.

Greedy generation, same prompts, unsteered and steered (one vector on all layers) runs
interleaved; every run generates exactly the same number of tokens. Writes
benchmarks/results/steer_overhead-<machine>.json and prints that JSON as the last line.

    python benchmarks/steer_overhead.py [--rounds 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine_info import machine

import emosteer
from emosteer import data
from emosteer.extraction import ExtractConfig, extract
from emosteer.generation import chat_prompt, encode
from emosteer.models import model_id


def tokens_per_s(model, enc: dict, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=0)
    seconds = time.perf_counter() - start
    generated = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return generated / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--extract-queries", type=int, default=16, help="joy queries timed")
    args = parser.parse_args()

    model, tok = emosteer.load_model("default")
    cfg = ExtractConfig(emotions=("joy",), limit=args.extract_queries)
    result = extract(model, tok, cfg, progress=False)
    vector = result.vectors["joy"]

    questions = [q.question for q in data.load_queries("emotion_query_plus", ["neutral"])[:8]]
    results: dict[str, dict] = {}
    for batch in (1, 8):
        enc = encode(tok, [chat_prompt(tok, q, None) for q in questions[:batch]], model.device)
        tokens_per_s(model, enc, 8)  # warm-up
        plain, steered = [], []
        for r in range(args.rounds):
            order = ("plain", "steered") if r % 2 == 0 else ("steered", "plain")
            for kind in order:
                if kind == "plain":
                    plain.append(tokens_per_s(model, enc, args.new_tokens))
                else:
                    with emosteer.steer(model, vector, 1.0):
                        steered.append(tokens_per_s(model, enc, args.new_tokens))
        results[f"batch_{batch}"] = {
            "unsteered_tokens_per_s": statistics.median(plain),
            "steered_tokens_per_s": statistics.median(steered),
            "steered_over_unsteered_tokens_per_s":
                statistics.median(steered) / statistics.median(plain),
            "runs": {"unsteered": plain, "steered": steered}}

    n = sum(result.used.values())
    report = {
        "benchmark": "steer_overhead",
        "machine": machine(),
        "model": model_id(model),
        "layers_steered": len(vector.layers),
        "site": vector.site,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "steered_over_unsteered_tokens_per_s":
            results["batch_1"]["steered_over_unsteered_tokens_per_s"],
        "steered_over_unsteered_tokens_per_s_batch_8":
            results["batch_8"]["steered_over_unsteered_tokens_per_s"],
        "extraction_seconds_per_query": result.seconds / n,
        "extraction_queries": n,
        "extraction_new_tokens": cfg.generation.max_new_tokens,
        "detail": results,
    }
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    name = f"{report['machine']['host'] or 'unknown'}-{report['machine']['cores']}cpu"
    (out_dir / f"steer_overhead-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "detail"}))


if __name__ == "__main__":
    main()
