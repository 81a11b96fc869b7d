"""The method search on the two engines, side by side: `emosteer experiment frontier` with its
answers from transformers' generate (builtin) and from vLLM (`--engine vllm`), the same
methods, emotions and questions, each from empty caches, one after the other.

    .venv-vllm/bin/python benchmarks/frontier_engines.py      # vLLM's venv has both engines

Writes benchmarks/results/frontier_engines-<machine>.json: wall seconds of each run (vLLM's
includes its start), answers generated, the ratio, and each run's held-out mean EPS (the two
engines sample differently, so their answers and scores differ; the judges, PPL and choice rule
are the same code). Run it on an idle machine: two model jobs at once slow each other.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine, write_results

from emosteer.vectors import load_vectors

METHOD = "filtered_ctx_100_shipped"
ARGS = ["--method", METHOD, "--method", "filtered_ctx_100_shipped_noapology",
        "--calibration-limit", "2", "--limit", "2"]
VLLM = ["--vllm-arg", "dtype=float32", "--vllm-arg", "max_model_len=1024"]


def run(engine: str, root: Path) -> dict:
    out = root / engine
    cmd = [sys.executable, "-m", "emosteer", "experiment", "frontier", "--vectors",
           str(root / "vectors"), "--out", str(out), *ARGS,
           *(["--engine", "vllm", *VLLM] if engine == "vllm" else [])]
    print(f"{engine}: {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines() if x]
    answers = sum(1 for _ in (out / "generations.jsonl").open())
    eps = {m: round(sum(r["eps"] for r in rows if r["method"] == m) /
                    max(1, sum(r["method"] == m for r in rows)), 3)
           for m in sorted({r["method"] for r in rows})}
    print(f"{engine}: {seconds:.0f} s, {answers} answers, held-out mean EPS {eps}", flush=True)
    return {"seconds": round(seconds, 1), "answers": answers, "held_out_mean_eps": eps}


def main() -> None:
    from emosteer.extraction.apology import apology_direction, without
    from emosteer.models import load_model

    root = Path(tempfile.mkdtemp(prefix="frontier-engines-"))
    try:
        model, tok = load_model("default")
        sorry = apology_direction(model, tok)
        del model
        for name, vector in load_vectors("default").items():
            if name in ("joy", "anger", "sadness", "fear", "disgust"):
                vector.save(root / "vectors" / METHOD / f"{name}.safetensors")
                without(vector, sorry).save(
                    root / "vectors" / "filtered_ctx_100_shipped_noapology" / f"{name}.safetensors")
        report = {"benchmark": "frontier_engines", "machine": machine(),
                  "command": "emosteer experiment frontier " + " ".join(ARGS),
                  "builtin": run("builtin", root), "vllm": run("vllm", root)}
        report["builtin_over_vllm_seconds"] = round(
            report["builtin"]["seconds"] / report["vllm"]["seconds"], 2)
        print(f"builtin / vllm wall time: {report['builtin_over_vllm_seconds']}x", flush=True)
        write_results("frontier_engines", report)
        print(json.dumps(report))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
