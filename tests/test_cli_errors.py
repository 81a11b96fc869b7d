"""The CLI's answers to bad input (one line, exit 2), safe files, and where defaults come from."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.cli import main
from emosteer.errors import EmosteerError
from emosteer.models import model_shape
from emosteer.vectors import EmotionVector


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny llama, a vector for it, and broken model folders."""
    root = tmp_path_factory.mktemp("cli-errors")
    model = tiny_model("llama")
    model.save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    model.emosteer_id = "tiny"
    joy = EmotionVector({0: torch.ones(64), 1: torch.ones(64)},
                        {**model_shape(model), "emotion": "joy", "site": "attn"})
    joy.save(root / "vecs" / "joy.safetensors")
    (root / "config-only").mkdir()
    (root / "config-only" / "config.json").write_bytes((root / "tiny" / "config.json").read_bytes())
    for name in ("truncated", "pickled"):
        (root / name).mkdir()
        for f in (root / "tiny").iterdir():
            (root / name / f.name).write_bytes(f.read_bytes())
    weights = (root / "truncated" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    (root / "pickled" / "model.safetensors").unlink()
    (root / "pickled" / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(root / "RAN")))
    (root / "not-a-model.gguf").write_text("plain text, no GGUF magic")
    return root


class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def one_line(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error:"), err
    return err


def test_bad_models_are_one_line_and_pickles_never_run(tiny, capsys):
    vector = ["--vector", str(tiny / "vecs" / "joy.safetensors")]
    for name, said in [("not-a-model.gguf", "not a GGUF file"),
                       ("config-only", "could not load model"),
                       ("truncated", "could not load model"),
                       ("pickled", "never runs pickled code")]:
        err = one_line(capsys, "generate", "hi", "--model", str(tiny / name), *vector)
        assert said in err and name in err, err
    assert not (tiny / "RAN").exists()


@pytest.mark.parametrize(("args", "said"), [
    (["--max-new-tokens", "0"], "'--max-new-tokens'"),
    (["--max-new-tokens", "-1"], "'--max-new-tokens'"),
    (["--layers", "abc"], "bad --layers value 'abc'"),
    (["--layer", "1", "--layer", "x"], "bad --layers value 'x'"),
])
def test_generate_bad_numbers(tiny, capsys, args, said):
    err = one_line(capsys, "generate", "hi", "--model", str(tiny / "tiny"), "--vector",
                   str(tiny / "vecs" / "joy.safetensors"), *args)
    assert said in err


@pytest.mark.parametrize(("question", "said"), [
    ("", "text 2 is empty"), ("   ", "text 2 is empty"),
    ("I am \udcff", "not valid UTF-8 (byte 0xff"),  # how Python hands over argv byte 0xff
])
def test_generate_refuses_empty_and_invalid_questions(tiny, capsys, question, said):
    err = one_line(capsys, "generate", "fine", question, "--vector",
                   str(tiny / "vecs" / "joy.safetensors"))
    assert said in err


def test_classify_refuses_invalid_utf8(capsys, monkeypatch):
    assert "byte 0xff" in one_line(capsys, "classify", "I am \udcff")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\nI am \xff\n")))
    assert "stdin is not valid UTF-8 (byte 0xff on line 2)" in one_line(capsys, "classify")


def test_invalid_utf8_end_to_end(tmp_path):
    """Real bytes through argv and stdin, as a shell passes them."""
    command = [sys.executable, "-m", "emosteer", "classify"]
    for out in (subprocess.run(command, input=b"I am \xff\n", capture_output=True),
                subprocess.run([*command, b"I am \xff"], capture_output=True)):
        assert out.returncode == 2 and out.stderr.count(b"\n") == 1, out.stderr
        assert b"not valid UTF-8" in out.stderr and b"Traceback" not in out.stderr


@pytest.mark.parametrize(("mix", "said"), [
    ("joy=1e9", "weight for 'joy' 1e+09 is outside"),
    ("joy=1e39", "weight for 'joy' 1e+39 is outside"),
    ("joy=1e400", "weight for 'joy' is inf"),
    ("joy=nan", "weight for 'joy' is nan"),
    ("joy=lots", "bad --mix item 'joy=lots'"),
])
def test_mix_weights_parse_here_and_are_bounded_by_the_library(tiny, capsys, mix, said):
    err = one_line(capsys, "generate", "hi", "--model", str(tiny / "tiny"), "--vectors",
                   str(tiny / "vecs"), "--mix", mix)
    assert said in err


@pytest.mark.parametrize(("scale", "said"), [
    ("nan", "'--scale': nan is not a finite number"), ("inf", "'--scale': inf is not"),
    ("1e9", "scale 1e+09 is outside"),
])
def test_export_refuses_bad_scales(tiny, tmp_path, capsys, scale, said):
    err = one_line(capsys, "export", str(tiny / "vecs" / "joy.safetensors"), "--out",
                   str(tmp_path / "joy.gguf"), "--scale", scale)
    assert said in err and not (tmp_path / "joy.gguf").exists()


def test_export_and_import_outputs(tiny, tmp_path, capsys):
    joy = str(tiny / "vecs" / "joy.safetensors")
    assert "is a directory" in one_line(capsys, "export", joy, "--out", str(tmp_path))
    assert "cannot write" in one_line(capsys, "export", joy, "--out", "/proc/no/joy.gguf")
    with pytest.raises(SystemExit) as stop:
        main(["export", joy, "--out", str(tmp_path / "joy.gguf")])
    assert stop.value.code == 0
    gguf = str(tmp_path / "joy.gguf")
    assert "is a directory" in one_line(capsys, "import", gguf, "--out", str(tmp_path))
    assert "cannot write" in one_line(capsys, "import", gguf, "--out", "/proc/no/x.safetensors")


def test_a_directory_is_called_a_directory(tiny, capsys):
    assert "is a directory" in one_line(capsys, "info", str(tiny / "vecs"))
    assert "is a directory" in one_line(capsys, "generate", "hi", "--vector", str(tiny))


def test_serve_names_its_real_option_and_the_key_variable(tmp_path, capsys):
    err = one_line(capsys, "serve", "--vectors", str(tmp_path / "none"))
    assert "pass the folder with --vectors" in err and "--vectors-dir" not in err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "EMOSTEER_API_KEY" in capsys.readouterr().out


def test_extract_refuses_to_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "vectors"
    base = ["extract", "--model", str(tiny / "tiny"), "--emotion", "joy", "--limit", "1",
            "--max-new-tokens", "2", "--out", str(out), "--filter", "none"]
    with pytest.raises(SystemExit) as stop:
        main(base)
    assert stop.value.code == 0
    capsys.readouterr()
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(written) == {"joy.safetensors", "base.safetensors", "samples.jsonl"}
    err = one_line(capsys, *base)
    assert "joy.safetensors, base.safetensors, samples.jsonl" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written  # nothing touched
    with pytest.raises(SystemExit) as stop:
        main([*base, "--overwrite", "--seed", "1"])
    assert stop.value.code == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers


class Captured(EmosteerError):
    """Stops a command once its config is built."""


def test_defaults_come_from_the_library_and_both_list_forms_agree(extract_configs, capsys):
    from emosteer.extraction.extract import recommended

    seen = extract_configs
    for args in ([], ["--emotion", "joy", "--emotion", "anger"], ["--emotions", "joy,anger"],
                 ["--emotion", "joy,anger", "--batch-size", "3", "--greedy"]):
        with pytest.raises(SystemExit):
            main(["extract", "--out", "/nonexistent/never-written", *args])
    capsys.readouterr()
    assert seen[0] == recommended()  # nothing given: every value is the library's
    assert seen[1] == seen[2] == recommended(emotions=("joy", "anger"))
    assert seen[3].generation.batch_size == 3 and not seen[3].generation.do_sample


def test_experiment_options_build_one_config(monkeypatch, capsys):
    from emosteer.cli import evaluate
    from emosteer.evaluate import runner
    from emosteer.evaluate.runner import AutoAlpha, EvalConfig

    seen = []

    def fake_runner(model, tok, cfg, out, **options):
        seen.append((cfg, out))
        raise Captured("captured")

    monkeypatch.setattr(evaluate, "load", lambda spec: (None, None))
    monkeypatch.setattr(runner, "Runner", fake_runner)
    for args in ([], ["--alphas=-1,0,auto", "--limit", "2", "--metric", "eps", "--metric", "tec",
                      "--seed", "3", "--target-eps", "0.7", "--candidates", "1,2"]):
        with pytest.raises(SystemExit):
            main(["experiment", "alpha-sweep", "--out", "/nonexistent/run", *args])
    capsys.readouterr()
    assert seen[0][0] == EvalConfig()
    cfg = seen[1][0]
    assert cfg.alphas == (-1.0, 0.0) and cfg.limit == 2 and cfg.metrics == ("eps", "tec")
    assert cfg.seed == cfg.generation.seed == 3
    assert cfg.generation.batch_size == EvalConfig().generation.batch_size
    assert cfg.auto == AutoAlpha(target_eps=0.7, candidates=(1.0, 2.0))


def test_experiment_vectors_must_match_the_model(tiny, tmp_path, capsys):
    shape = {**model_shape(tiny_model("llama")), "model_id": "other"}
    EmotionVector({0: torch.ones(64)}, {**shape, "emotion": "joy"}).save(
        tmp_path / "v" / "joy.safetensors")
    err = one_line(capsys, "experiment", "alpha-sweep", "--model", str(tiny / "tiny"),
                   "--vectors", str(tmp_path / "v"), "--emotion", "joy", "--limit", "1",
                   "--metrics", "eps", "--out", str(tmp_path / "run"))
    assert "made for model 'other'" in err
