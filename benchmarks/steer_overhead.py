"""What steering costs at generation time, on the bundled model, and projected for a GPU.

1. tokens/s steered / unsteered: greedy, same prompts, exactly --new-tokens per run, one
   vector on all layers at the attention output, by hook and by fold (a bias, no hook);
   the kinds run in turn inside every round (order rotating), the ratio is the median over
   rounds of the within-round ratios.
2. per-row steering (steer_rows: a different emotion in each row) vs an unsteered batch of
   the same size, interleaved the same way.
3. CPU-side cost of one hook call, in microseconds, at decode-step shape, batch 1 and 32:
   Python + dispatch only (a (batch, 1, 1) tensor, so no arithmetic to speak of: the part a
   GPU cannot take over) and with the add on CPU at d = 4096; then the projected steered /
   unsteered ratio for a Llama-3.1-8B-shaped model (32 layers) against a stated GPU
   decode-step time: worst case (CPU and GPU time add up, nothing overlaps), overlapped (the
   GPU-bound case: only the add kernels count), and fold (no hook, no kernel).

Writes benchmarks/results/steer_overhead-<machine>.json; the last stdout line is its JSON.

    python benchmarks/steer_overhead.py [--rounds 15] [--new-tokens 32] [--steps 1500]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from extraction_peers import contrast_pairs
from machine_info import machine, write_results

import emosteer
from emosteer import data
from emosteer.extraction.contrast import read_pairs
from emosteer.generation import chat_prompt, encode
from emosteer.models import cache_arg, cache_of, model_id
from emosteer.steering import _adder, steer_rows
from emosteer.vectors import EMOTIONS

# Projection for a Llama-3.1-8B-shaped model (assumptions, stated in the results and docs)
GPU = {
    "model": "Llama-3.1-8B shape: 32 layers, d_model 4096, bf16",
    "gpu": "one H100 SXM (3.35 TB/s)",
    # 16.1 GB of bf16 weights read once per decode step: 4.8 ms at full bandwidth; serving
    # stacks reach about 6 ms/token at batch 1; at batch 32 the step reads the same weights
    # plus the KV cache: about 8 ms (short contexts)
    "decode_step_ms": {"1": 6.0, "32": 8.0},
    "layers": 32,
    "d_model": 4096,
    "cuda_launch_us": 4.0,  # CPU time to launch one CUDA kernel (driver), per add
    "add_kernel_us": 2.0,  # the add itself on the GPU: (32, 1, 4096) bf16 is 256 KiB
}


def tokens_per_s(model, enc: dict, new_tokens: int) -> tuple[float, float]:
    """(tokens per wall-clock second, tokens per CPU second of this process).

    CPU seconds count only this process's work, so another job on the machine inflates them
    far less than wall time; both are reported.
    """
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    generated = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return generated / seconds, generated / cpu_seconds


def interleaved(model, enc: dict, kinds: dict, rounds: int, new_tokens: int) -> dict:
    """tokens/s per kind (a context factory), kinds rotating inside each round."""
    names = list(kinds)
    tokens_per_s(model, enc, 4)  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in names}
    cpu_runs: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with kinds[name]():
                wall, cpu = tokens_per_s(model, enc, new_tokens)
            runs[name].append(wall)
            cpu_runs[name].append(cpu)
    base = names[0]

    def ratios(table: dict[str, list[float]]) -> dict[str, float]:
        return {k: statistics.median(a / b for a, b in zip(table[k], table[base], strict=True))
                for k in names[1:]}

    return {"runs": runs, "cpu_runs": cpu_runs,
            "tokens_per_s": {k: statistics.median(v) for k, v in runs.items()},
            "over_" + base: ratios(runs), "cpu_over_" + base: ratios(cpu_runs)}


def per_step(model, enc: dict, kinds: dict, steps: int, reset: int = 32) -> dict:
    """Milliseconds per decode step per kind, the kind switching at EVERY step.

    One greedy decode, prefilled unsteered; before each step the next kind's context is
    entered (outside the timed region) and left after it, kinds in turn, so every kind sees
    the same cache lengths and any drift of the machine (another job, clock changes) falls on
    all kinds alike. The cache is refilled every `reset` steps. The ratio is
    median(unsteered step) / median(kind step).
    """
    names = list(kinds)
    times: dict[str, list[float]] = {k: [] for k in names}
    with torch.no_grad():
        for start in range(0, steps, reset):
            out = model(**enc, use_cache=True)
            cache, token = cache_of(out), out.logits[:, -1:].argmax(-1)
            mask = enc["attention_mask"]
            for i in range(start, min(start + reset, steps)):
                name = names[i % len(names)]
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                with kinds[name]():
                    begin = time.perf_counter()
                    out = model(input_ids=token, attention_mask=mask, use_cache=True,
                                **{cache_arg(model): cache})
                    token = out.logits[:, -1:].argmax(-1)
                    times[name].append((time.perf_counter() - begin) * 1e3)
                cache = cache_of(out)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"ms_per_step": median, "steps_per_kind": {k: len(v) for k, v in times.items()},
            "over_" + names[0]: {k: median[names[0]] / median[k] for k in names[1:]}}


def hook_cost_us(batch: int, d: int, device: str, calls: int = 20000) -> dict:
    """Microseconds per module call with the steering hook minus without, at (batch, 1, d)."""
    module = torch.nn.Identity()
    x = torch.zeros(batch, 1, d, device=device)
    hook = _adder(torch.zeros(d, device=device), torch.float32, last_only=False)

    def per_call() -> float:
        for _ in range(200):
            module(x)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            module(x)
        return (time.perf_counter() - start) / calls * 1e6  # CPU time: launches are async

    samples = []
    for _ in range(5):  # interleaved: without, with
        plain = per_call()
        handle = module.register_forward_hook(hook)
        try:
            hooked = per_call()
        finally:
            handle.remove()
        samples.append(hooked - plain)
    return {"us_per_hook_call": statistics.median(samples), "samples": samples,
            "shape": [batch, 1, d], "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15,
                        help="interleaved rounds (short runs, many rounds: noise averages out)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500,
                        help="decode steps of the per-step comparison (kinds alternate)")
    parser.add_argument("--pairs", type=int, default=10, help="contrast pairs per vector")
    args = parser.parse_args()

    model, tok = emosteer.load_model("default")
    pairs = contrast_pairs(tok, 5 * args.pairs)  # round-robin over the five emotions
    vectors = {e: read_pairs(model, tok, pairs[i::5], site="attn", emotion=e)
               for i, e in enumerate(EMOTIONS)}
    vector = vectors["joy"]
    questions = [q.question for q in data.load_queries("emotion_query_plus", ["neutral"])[:8]]
    detail: dict[str, dict] = {}
    for batch in (1, 8):
        enc = encode(tok, [chat_prompt(tok, q, None) for q in questions[:batch]], model.device)
        detail[f"batch_{batch}"] = interleaved(model, enc, {
            "unsteered": nullcontext,
            "hook": lambda: emosteer.steer(model, vector, 1.0),
            "fold": lambda: emosteer.steer(model, vector, 1.0, mode="fold"),
        }, args.rounds, args.new_tokens)
    enc = encode(tok, [chat_prompt(tok, q, None) for q in questions[:1]], model.device)
    detail["per_step_batch_1"] = per_step(model, enc, {
        "unsteered": nullcontext,
        "hook": lambda: emosteer.steer(model, vector, 1.0),
        "fold": lambda: emosteer.steer(model, vector, 1.0, mode="fold"),
    }, args.steps)
    enc = encode(tok, [chat_prompt(tok, q, None) for q in questions[:8]], model.device)
    rows = [vectors[EMOTIONS[i % len(EMOTIONS)]] * 1.0 for i in range(8)]
    detail["rows_batch_8"] = interleaved(model, enc, {
        "unsteered": nullcontext, "per_row": lambda: steer_rows(model, rows)},
        args.rounds, args.new_tokens)

    cost = {f"dispatch_batch_{b}": hook_cost_us(b, 1, "cpu") for b in (1, 32)}
    cost.update({f"cpu_add_batch_{b}": hook_cost_us(b, GPU["d_model"], "cpu", calls=2000)
                 for b in (1, 32)})
    if torch.cuda.is_available():
        cost.update({f"cuda_batch_{b}": hook_cost_us(b, GPU["d_model"], "cuda")
                     for b in (1, 32)})
    projection = {}
    for b in ("1", "32"):
        step_us = GPU["decode_step_ms"][b] * 1000
        measured = cost.get(f"cuda_batch_{b}", cost[f"dispatch_batch_{b}"])["us_per_hook_call"]
        launch = 0.0 if f"cuda_batch_{b}" in cost else GPU["cuda_launch_us"]  # measured in it
        per_hook = measured + launch + GPU["add_kernel_us"]
        added = GPU["layers"] * per_hook  # worst case: nothing overlaps
        overlapped = GPU["layers"] * GPU["add_kernel_us"]  # GPU-bound: CPU work runs ahead
        projection[f"batch_{b}"] = {
            "decode_step_us": step_us, "per_hook_us": per_hook, "added_us_per_step": added,
            "steered_over_unsteered": step_us / (step_us + added),
            "arithmetic": (f"{step_us:.0f} / ({step_us:.0f} + {GPU['layers']} x "
                           f"({measured:.1f} + {launch:.0f} + {GPU['add_kernel_us']:.0f})) = "
                           f"{step_us / (step_us + added):.4f}"),
            "overlapped_steered_over_unsteered": step_us / (step_us + overlapped),
            "overlapped_arithmetic": (f"{step_us:.0f} / ({step_us:.0f} + {GPU['layers']} x "
                                      f"{GPU['add_kernel_us']:.0f}) = "
                                      f"{step_us / (step_us + overlapped):.4f}"),
            "fold_steered_over_unsteered": 1.0,  # a bias folded into o_proj: no extra kernel
        }

    b1, b8 = detail["batch_1"]["over_unsteered"], detail["batch_8"]["over_unsteered"]
    report = {
        "benchmark": "steer_overhead",
        "machine": machine(),
        "model": model_id(model),
        "layers_steered": len(vector.layers),
        "site": vector.site,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "steered_over_unsteered_tokens_per_s": b1["hook"],
        "per_step_steered_over_unsteered_batch_1":
            detail["per_step_batch_1"]["over_unsteered"]["hook"],
        "per_step_fold_over_unsteered_batch_1":
            detail["per_step_batch_1"]["over_unsteered"]["fold"],
        "steered_over_unsteered_tokens_per_s_batch_8": b8["hook"],
        "cpu_time_steered_over_unsteered_batch_1":
            detail["batch_1"]["cpu_over_unsteered"]["hook"],
        "cpu_time_fold_over_unsteered_batch_1": detail["batch_1"]["cpu_over_unsteered"]["fold"],
        "fold_over_unsteered_tokens_per_s": b1["fold"],
        "fold_over_unsteered_tokens_per_s_batch_8": b8["fold"],
        "per_row_over_unsteered_tokens_per_s_batch_8":
            detail["rows_batch_8"]["over_unsteered"]["per_row"],
        "hook_cpu_us_per_call_batch_1": cost["dispatch_batch_1"]["us_per_hook_call"],
        "hook_cpu_us_per_call_batch_32": cost["dispatch_batch_32"]["us_per_hook_call"],
        "hook_cpu_us_per_decode_step_batch_1":
            cost["dispatch_batch_1"]["us_per_hook_call"] * GPU["layers"],
        "hook_cpu_us_per_decode_step_batch_32":
            cost["dispatch_batch_32"]["us_per_hook_call"] * GPU["layers"],
        "projected_gpu_steered_over_unsteered_batch_1":
            projection["batch_1"]["steered_over_unsteered"],
        "projected_gpu_steered_over_unsteered_batch_32":
            projection["batch_32"]["steered_over_unsteered"],
        "projected_gpu_overlapped_steered_over_unsteered_batch_1":
            projection["batch_1"]["overlapped_steered_over_unsteered"],
        "projected_gpu_fold_over_unsteered": 1.0,
        "gpu_measured": torch.cuda.is_available(),
        "detail": {"generation": detail, "hook_cost_us": cost, "gpu_assumptions": GPU,
                   "gpu_projection": projection},
    }
    write_results("steer_overhead", report)


if __name__ == "__main__":
    main()
