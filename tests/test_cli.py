"""The CLI: fast help with examples, and one clear line with exit code 2 for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.models import model_shape
from emosteer.vectors import EmotionVector

COMMANDS = ["extract", "generate", "info", "demo", "serve", "export", "import", "classify",
            "discover", "experiment", "experiment alpha-sweep", "experiment mix",
            "experiment base", "experiment prompting", "experiment compare"]


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emosteer", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_help_does_not_import_torch():
    code = "import sys, emosteer.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_an_example(command):
    out = run(*command.split(), "--help")
    assert out.returncode == 0 and "Example:" in out.stdout


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A saved tiny llama, and a vector made for it and one made for another model."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama")
    model.save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    model.emosteer_id = "tiny"
    shape = model_shape(model)
    joy = EmotionVector({0: torch.ones(64), 1: torch.ones(64)},
                        {**shape, "emotion": "joy", "site": "attn"})
    joy.save(root / "vecs" / "joy.safetensors")
    other = {**shape, "model_id": "other", "hidden_size": "32"}
    EmotionVector({0: torch.ones(32)}, {**other, "emotion": "joy"}).save(root / "other.safetensors")
    return root


@pytest.fixture(scope="module")
def tiny_circuit(tiny_folder):
    """A circuit file for the saved tiny llama (from test_circuits' known-answer builder)."""
    from test_circuits import _circuit
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folder / "tiny")
    model.emosteer_id = "tiny"  # what load_model calls a folder named tiny
    return _circuit(model).save(tiny_folder / "circuit.safetensors")


def one_line_error(out: subprocess.CompletedProcess, pattern: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert pattern in lines[0], lines[0]


def test_generate_with_a_mix_on_a_local_model(tiny_folder):
    out = run("generate", "hello there", "--model", str(tiny_folder / "tiny"), "--mix", "joy=1",
              "--vectors-dir", str(tiny_folder / "vecs"), "--alpha", "0", "--alpha", "1",
              "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "steered by 1*joy" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--mix", "rage=1"], "unknown emotion 'rage'"),
    (["--mix", "joy=lots"], "bad --mix item"),
    (["--mix", "joy=1", "--alpha", "nan"], "alpha is nan"),
    (["--vector", "other.safetensors"], "made for model 'other', not 'tiny'"),
    (["--vector", "missing.safetensors"], "does not exist"),
])
def test_generate_bad_input(tiny_folder, args, message):
    out = run("generate", "hi", "--model", str(tiny_folder / "tiny"), "--vectors-dir",
              str(tiny_folder / "vecs"), *args, cwd=tiny_folder)
    one_line_error(out, message)


def test_bad_files_and_models(tiny_folder, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tiny_folder / "vecs" / "joy.safetensors").read_bytes()[:50])
    one_line_error(run("info", str(broken)), "not a readable safetensors file")
    one_line_error(run("generate", "hi", "--model", str(tmp_path / "nowhere"), "--vector",
                       str(tiny_folder / "vecs" / "joy.safetensors")), "not found")
    one_line_error(run("extract", "--model", str(tiny_folder / "tiny"), "--emotions", "glee",
                       "--out", str(tmp_path)), "unknown emotion 'glee'")


def test_debug_shows_the_traceback(tmp_path):
    out = run("--debug", "info", str(tmp_path / "missing.safetensors"))
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_info_prints_metadata(tiny_folder):
    out = run("info", str(tiny_folder / "vecs" / "joy.safetensors"))
    assert out.returncode == 0 and "format_version" in out.stdout and "tiny" in out.stdout


def test_generate_through_a_circuit(tiny_folder, tiny_circuit):
    out = run("generate", "hello there", "--model", str(tiny_folder / "tiny"), "--circuit",
              str(tiny_circuit), "--emotion", "fear", "--alpha", "0", "--alpha", "2",
              "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "through the fear circuit" in out.stdout


@pytest.mark.parametrize("args, message", [
    # --emotion alone is a source now (the folder's vector); with --mix it is one too many
    (["--emotion", "fear", "--mix", "joy=1"], "exactly one of --emotion NAME, --vector FILE"),
    (["--circuit", "circuit.safetensors"], "--circuit needs --emotion: one of joy, fear"),
    (["--circuit", "circuit.safetensors", "--emotion", "envy"], "unknown emotion 'envy'"),
    (["--circuit", "joy.safetensors", "--emotion", "joy"], "not an emosteer circuit file"),
    (["--circuit", "circuit.safetensors", "--emotion", "joy", "--alpha", "inf"], "alpha is inf"),
])
def test_generate_circuit_bad_input(tiny_folder, tiny_circuit, args, message):
    (tiny_folder / "joy.safetensors").write_bytes((tiny_folder / "vecs" / "joy.safetensors")
                                                  .read_bytes())
    out = run("generate", "hi", "--model", str(tiny_folder / "tiny"), *args, cwd=tiny_folder)
    one_line_error(out, message)


@pytest.mark.parametrize("args, message", [
    (["discover", "--ks", "1,x"], "bad --ks"),
    (["discover", "--emotions", "joy,envy"], "need at least two of"),
    (["experiment", "compare", "--circuits", "nowhere"], "run `emosteer discover --out nowhere`"),
])
def test_circuit_commands_bad_input(tiny_folder, args, message):
    one_line_error(run(*args, cwd=tiny_folder), message)
