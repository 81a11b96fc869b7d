"""The CLI against a hostile but honest user (issue 28): text that looks like markup or
terminal control is printed as text, output folders are checked before any model work, and
prompts are checked against the model's context before it runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.cli import common, main
from emosteer.models import model_shape
from emosteer.vectors import EmotionVector

ESC = "\x1b"
HOSTILE_META = {"emotion": "[/bogus]", "method": f"mean_diff{ESC}[2J{ESC}]0;title\x07",
                "dataset": "[red]emotion_query[/red]", "note": "a\rb \u202eevil"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny llama (1024 positions) and a vector for it with hostile metadata."""
    root = tmp_path_factory.mktemp("hardening-cli")
    model = tiny_model("llama")
    model.save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    model.emosteer_id = "tiny"
    directions = {0: torch.ones(64) * 0.01, 1: torch.ones(64) * 0.01}
    EmotionVector(directions, {**model_shape(model), "site": "attn", **HOSTILE_META}).save(
        root / "vecs" / "bogus.safetensors")
    EmotionVector(directions, {**model_shape(model), "site": "attn", "emotion": "joy"}).save(
        root / "vecs" / "joy.safetensors")
    return root


@pytest.fixture
def wide(monkeypatch):
    """A console wide enough that no table cell wraps."""
    monkeypatch.setattr(common.console, "width", 300)


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def one_line(capsys, *args: str) -> str:
    code, _, err = run(capsys, *args)
    err = err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error:"), err
    return err


def no_control(text: str) -> None:
    assert ESC not in text and "\r" not in text and "\x07" not in text, repr(text)
    assert "\u202e" not in text, repr(text)


# --- item 3: text is text ----------------------------------------------------------------
def test_plain_and_clean_known_answers():
    assert common.plain("What does [/INST] mean?") == "What does \\[/INST] mean?"
    assert common.plain("[red]apples[/red]") == "\\[red]apples\\[/red]"
    assert common.clean(f"x{ESC}[2Jy\r\n\t\x9b\u202e") == "x\\x1b[2Jy\\x0d\n\t\\x9b\\u202e"
    assert common.plain(None) == "None"


@pytest.mark.parametrize("question", ["What does [/INST] mean?", "see [/b]",
                                      "Tell me about [red]apples[/red] :apple:"])
def test_generate_prints_questions_with_their_brackets(tiny, capsys, wide, question):
    code, out, err = run(capsys, "generate", question, "--model", str(tiny / "tiny"),
                         "--vector", str(tiny / "vecs" / "joy.safetensors"),
                         "--max-new-tokens", "2", "--greedy")
    assert code == 0, err
    assert question in out, out


def test_generate_prints_hostile_metadata_as_text(tiny, capsys, wide):
    code, out, err = run(capsys, "generate", "hi", "--model", str(tiny / "tiny"),
                         "--vector", str(tiny / "vecs" / "bogus.safetensors"),
                         "--max-new-tokens", "2", "--greedy")
    assert code == 0, err
    assert "answer steered by [/bogus]" in out, out


def test_info_prints_metadata_as_text_without_terminal_control(tiny, capsys, wide):
    code, out, err = run(capsys, "info", str(tiny / "vecs" / "bogus.safetensors"))
    assert code == 0, err
    no_control(out)
    assert "[/bogus]" in out and "[red]emotion_query[/red]" in out
    assert "mean_diff\\x1b[2J\\x1b]0;title\\x07" in out and "a\\x0db \\u202eevil" in out


def test_classify_prints_texts_with_their_brackets(capsys, monkeypatch, wide):
    from types import SimpleNamespace

    from emosteer.cli import evaluate

    class Judge:
        def rate(self, questions, answers):
            return [SimpleNamespace(label="[b]joy", probs={"[b]joy": 0.9, "neutral": 0.1})
                    for _ in answers]

    monkeypatch.setattr(evaluate, "_api", lambda: SimpleNamespace(
        load_judge=lambda **spec: Judge()))
    code, out, err = run(capsys, "classify", "see [/b]", f"clear{ESC}[2J")
    assert code == 0, err
    assert "see [/b]" in out and "[b]joy" in out and "clear\\x1b[2J" in out
    no_control(out)
    code, out, err = run(capsys, "classify", "see [/b]", "--json")
    assert code == 0 and json.loads(out)["label"] == "[b]joy"


def test_an_error_naming_hostile_text_is_one_clean_line(capsys):
    err = one_line(capsys, "info", f"missing{ESC}[2J[/b].safetensors")
    no_control(err)
    assert "missing\\x1b[2J[/b].safetensors" in err


def test_the_meter_render_shows_tokens_as_text(capsys):
    from emosteer.cli.meter import render
    from emosteer.emotion_meter.meter import Readings

    tokens = ["[/b]", f"{ESC}[2J", " [red]x"]
    readings = Readings(("joy", "[i]anger"), tokens, torch.tensor([[0.9, 0.1]] * 3))
    common.console.print(render(readings, f"q [/INST]{ESC}[31m"))
    out = capsys.readouterr().out
    no_control(out)
    assert "[/b]\\x1b[2J [red]x" in out and "q [/INST]\\x1b[31m" in out and "[i]anger" in out


# --- item 7: output folders are checked before any model work ------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the command must stop before."""
    from emosteer.cli import circuits, demo, evaluate, frontier, vectors

    def loaded(spec):
        raise AssertionError(f"the model {spec!r} was loaded before the output check")

    for module in (circuits, demo, evaluate, frontier, vectors):
        monkeypatch.setattr(module, "load", loaded)


@pytest.mark.parametrize("command", [
    ["discover"], ["extract"], ["demo"], ["experiment", "prompting"],
    ["experiment", "alpha-sweep"], ["experiment", "frontier"]])
@pytest.mark.parametrize("where", ["/proc/x", "file"])
def test_commands_that_write_check_their_out_folder_first(tmp_path, capsys, no_model, command,
                                                          where):
    if where == "file":
        (tmp_path / "taken").write_text("a file")
        where = str(tmp_path / "taken" / "out")
    err = one_line(capsys, *command, "--out", where)
    assert "--out" in err and where in err, err


def test_alpha_sweep_checks_the_vectors_folder_it_would_extract_into(tmp_path, capsys, no_model):
    err = one_line(capsys, "experiment", "alpha-sweep", "--out", str(tmp_path / "runs"),
                   "--vectors", "/proc/x")
    assert "--vectors /proc/x" in err, err


def test_the_folder_check_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "a" / "b" / "c"
    assert common.writable_folder(folder) == folder
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    common.writable_folder(tmp_path / "kept")
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


# --- item 10: an empty API key is refused, not read as no key ------------------------------
@pytest.mark.parametrize("how", ["option", "env", "blank"])
def test_serve_refuses_an_empty_api_key(capsys, monkeypatch, how):
    from emosteer.cli import serve

    monkeypatch.setattr(serve, "load", lambda spec: pytest.fail("the model was loaded"))
    monkeypatch.delenv("EMOSTEER_API_KEY", raising=False)
    args = ["serve"]
    if how == "option":
        args += ["--api-key", ""]
    else:
        monkeypatch.setenv("EMOSTEER_API_KEY", "" if how == "env" else "  ")
    for engine in ("builtin", "vllm"):
        err = one_line(capsys, *args, "--engine", engine)
        assert "empty" in err and ("--api-key" in err or "$EMOSTEER_API_KEY" in err), err


# --- item 8: the model's context is checked before the model runs --------------------------
@pytest.fixture
def no_generation(monkeypatch):
    from emosteer import generation
    from emosteer.emotion_meter import read as meter_read

    def ran(*args, **kwargs):
        raise AssertionError("the model ran before the context check")

    monkeypatch.setattr(generation, "generate", ran)
    monkeypatch.setattr(meter_read, "token_projections", ran)


def test_generate_checks_the_context_first(tiny, capsys, no_generation):
    vector = ["--model", str(tiny / "tiny"), "--vector", str(tiny / "vecs" / "joy.safetensors")]
    err = one_line(capsys, "generate", "sad " * 300, *vector)  # 1200 byte tokens > 1024
    assert "question 1 is" in err and "context of 1024 tokens" in err, err
    # fits alone, not with the answer: the new tokens count
    err = one_line(capsys, "generate", "short", "x" * 950, *vector, "--max-new-tokens", "100",
                   "--meter")
    assert "question 2 is" in err and "+ 100 new tokens" in err, err


def test_meter_checks_the_context_first(tiny, capsys, no_generation):
    err = one_line(capsys, "meter", "sad " * 300, "--model", str(tiny / "tiny"))
    assert "text 1 is 1201 tokens" in err and "1024" in err, err
    err = one_line(capsys, "meter", "fine", "--question", "why? " * 220,
                   "--model", str(tiny / "tiny"))
    assert "text 1 is" in err and "1024" in err, err


def test_export_and_import_print_hostile_metadata_as_text(tiny, capsys, wide, tmp_path):
    gguf = tmp_path / "bogus.gguf"
    code, out, err = run(capsys, "export", str(tiny / "vecs" / "bogus.safetensors"),
                         "--out", str(gguf))
    assert code == 0 and "[/bogus]" in out, err
    code, out, err = run(capsys, "import", str(gguf), "--out", str(tmp_path / "back.safetensors"),
                         "--emotion", "[/again]")
    assert code == 0 and "[/again]" in out, err
    no_control(out)
    assert "/proc/x" in one_line(capsys, "export", str(tiny / "vecs" / "joy.safetensors"),
                                 "--out", "/proc/x/joy.gguf")
    assert "/proc/x" in one_line(capsys, "import", str(gguf), "--out", "/proc/x/a.safetensors")
