"""Run one peer library's extraction on given contrast pairs; run by the peers' own venv.

    .venv-peers/bin/python benchmarks/peer_extract.py --peer repeng --spec spec.json \
        --out vectors.safetensors

spec.json: {"model": folder, "pairs": [[positive, negative], ...], "batch_pairs": B}.
Times one extraction per "go" line on stdin (see serve), then writes the vectors
(layer -> (d,)) as safetensors and prints its summary as one JSON object on the last line.
Peers pin transformers<5 and numpy<2, so they never run in emosteer's venv; this file
imports nothing from emosteer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the next peak is the extraction's own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def compatible_copy(folder: Path, into: Path) -> Path:
    """The model folder as transformers 4.x reads it (emosteer's cache is written by 5.x)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        if (folder / name).exists():
            os.symlink(folder / name, into / name)
    config = json.loads((folder / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:  # 5.x nests rope_theta; 4.x would silently use its default
        config["rope_theta"] = rope["rope_theta"]
    config.pop("dtype", None)
    config["torch_dtype"] = "float32"
    (into / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok = {k: v for k, v in tok.items() if k in ("bos_token", "eos_token", "pad_token",
                                                  "unk_token", "model_max_length")}
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok["padding_side"] = "right"  # 4.x forward passes do not shift positions for left padding
    (into / "tokenizer_config.json").write_text(json.dumps(tok))
    return into


def run_repeng(model, tok, pairs, batch_pairs):
    from repeng.extract import batched_get_hiddens

    n_layers = model.config.num_hidden_layers
    texts = [s for p, n in pairs for s in (p, n)]  # repeng's order: positive, negative, ...
    with torch.inference_mode():
        hiddens = batched_get_hiddens(model, tok, texts, list(range(n_layers)), 2 * batch_pairs)
    # hidden_states[l + 1] is layer l's output, except the last, which is after the final norm
    return {layer: torch.from_numpy((h[::2] - h[1::2]).mean(0)) for layer, h in hiddens.items()}


def run_repeng_train(model, tok, pairs, batch_pairs):
    """repeng's own pipeline as a user calls it: ControlVector.train (PCA of differences)."""
    from repeng import ControlVector, DatasetEntry

    dataset = [DatasetEntry(positive=p, negative=n) for p, n in pairs]
    vector = ControlVector.train(model, tok, dataset, batch_size=2 * batch_pairs)
    return {layer: torch.from_numpy(v) for layer, v in vector.directions.items()}


def run_steering_vectors(model, tok, pairs, batch_pairs):
    from steering_vectors import train_steering_vector

    vector = train_steering_vector(model, tok, [tuple(p) for p in pairs],
                                   batch_size=batch_pairs)  # mean_aggregator: mean difference
    return {layer: v.float().cpu() for layer, v in vector.layer_activations.items()}


PEERS = {"repeng": run_repeng, "repeng_train": run_repeng_train,
         "steering_vectors": run_steering_vectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())

    import logging
    import warnings

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="emosteer-peer-"))
    try:
        folder = compatible_copy(Path(spec["model"]), tmp / "model")
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
        model.to("cuda" if torch.cuda.is_available() else "cpu")  # where emosteer runs too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import importlib.metadata as md

    package = {"repeng": "repeng", "repeng_train": "repeng",
               "steering_vectors": "steering-vectors"}[args.peer]
    serve(lambda pairs, batch: PEERS[args.peer](model, tok, pairs, batch), spec, args.out,
          {"peer": args.peer, "version": md.version(package),
           "transformers": transformers.__version__})


def serve(run, spec: dict, out: str, info: dict) -> None:
    """Warm up, then time run(pairs, batch) once per "go" line on stdin, printing one JSON line
    each; on end of input, save the last vectors and print the peak RSS of the timed runs.

    The orchestrator keeps one such worker per side and alternates between them, so every
    side meets the same machine load, round after round.
    """
    import sys

    pairs, batch = spec["pairs"], spec["batch_pairs"]
    run(pairs[:batch], batch)  # warm-up: first calls allocate and load kernels
    model_rss = rss_mb("VmRSS")
    print(json.dumps({"ready": True}), flush=True)
    reset_peak_rss()
    vectors = None
    for line in sys.stdin:
        if line.strip() != "go":
            continue
        start = time.perf_counter()
        vectors = run(pairs, batch)
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds}), flush=True)
    peak = rss_mb("VmHWM")
    if vectors is not None:
        save_file({f"layer.{k}": v.contiguous() for k, v in vectors.items()}, out)
    print(json.dumps({**info, "pairs": len(pairs), "batch_pairs": batch,
                      "rss_after_load_mb": model_rss, "peak_rss_mb": peak,
                      "torch_threads": torch.get_num_threads()}), flush=True)

if __name__ == "__main__":
    main()
