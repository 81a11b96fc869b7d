"""`--engine vllm` routing, with a fake vLLM engine (no vLLM needed): serve, extract and the
experiments send their generation to vLLM, the builtin engine never touches it, and the
helpers that turn vLLM outputs into emosteer's Batch and conditions into served mixes."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from conftest import EOS, PAD, byte_tokenizer, tiny_model

from emosteer.cli import main
from emosteer.errors import BadInputError, VectorFileError
from emosteer.evaluate import conditions as C
from emosteer.evaluate import runner as R
from emosteer.evaluate.store import digest
from emosteer.generation import GenerateConfig, decode_responses
from emosteer.models import model_shape
from emosteer.vectors import EmotionVector, mix
from emosteer.vllm import generate as G
from emosteer.vllm import launcher

# "hi", then the end token (vLLM keeps the token that stopped a request in token_ids)
ANSWER = [*byte_tokenizer().encode("hi", add_special_tokens=False), EOS]


class FakeEngine:
    """Answers every request "hi"; records each generate call's prompts and emotions."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append([(p["prompt_token_ids"], s["emotion"]) for p, s in
                           zip(prompts, params, strict=True)])
        done = SimpleNamespace(token_ids=ANSWER, text="hi", finish_reason="stop")
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[done])
                for p in prompts]


@pytest.fixture
def fake(monkeypatch):
    """launcher.llm returns a FakeEngine; SamplingParams become plain dicts."""
    made = []

    def llm(model, vectors=None, force=False, **kwargs):
        engine = FakeEngine(byte_tokenizer())
        made.append({"model": model, "vectors": vectors, "kwargs": kwargs, "engine": engine})
        return engine

    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    monkeypatch.setattr(launcher, "llm", llm)
    monkeypatch.setattr(G, "sampling_params", lambda cfg, emotion=None, **kw: {
        "emotion": dict(emotion) if emotion else None, "max_tokens": cfg.max_new_tokens})
    return made


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-routes")
    model = tiny_model("llama")
    model.save_pretrained(root / "tiny")
    byte_tokenizer().save_pretrained(root / "tiny")
    g = torch.Generator().manual_seed(0)
    shape = {**model_shape(model), "model_id": "tiny", "site": "attn"}
    vectors = {e: EmotionVector({i: torch.randn(64, generator=g) for i in range(2)},
                                {**shape, "emotion": e}) for e in ("joy", "anger")}
    vectors["base"] = (vectors["joy"] + vectors["anger"]) / 2
    for name, vector in vectors.items():
        vector.save(root / "vecs" / f"{name}.safetensors")
    return root


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    return int(stop.value.code or 0)


def error(capsys, *args: str) -> str:
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


# --- serve ---------------------------------------------------------------------------------------
def test_serve_vllm_passes_everything_after_the_dashes(tiny, monkeypatch):
    got = {}

    def serve(model, vectors, **kw):
        got.update(model=model, vectors=vectors, **kw)
        return 3

    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    monkeypatch.setattr(launcher, "serve", serve)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    code = run("serve", "--engine", "vllm", "--model", "m", "--vectors", str(tiny / "vecs"),
               "--port", "8123", "--api-key", "k", "--", "--tensor-parallel-size", "2",
               "--pipeline-parallel-size", "2")
    assert code == 3  # vLLM's exit code
    assert got == {"model": "m", "vectors": tiny / "vecs", "port": 8123, "force": False,
                   "meter": None,
                   "extra_vllm_args": ["--tensor-parallel-size", "2",
                                       "--pipeline-parallel-size", "2"]}
    import os

    assert os.environ["VLLM_API_KEY"] == "k"  # the key goes by environment, not argv


def test_serve_refuses_what_its_engine_does_not_read(tiny, monkeypatch, capsys):
    monkeypatch.setattr(launcher, "require_vllm", lambda: None)
    vecs = str(tiny / "vecs")
    err = error(capsys, "serve", "--engine", "vllm", "--vectors", vecs, "--max-batch", "4")
    assert "--max-batch is for --engine builtin" in err and "after --" in err
    err = error(capsys, "serve", "--vectors", vecs, "--", "--tensor-parallel-size", "2")
    assert "go to vLLM; add --engine vllm" in err
    assert "choose builtin or vllm" in error(capsys, "serve", "--engine", "tgi")


@pytest.mark.skipif(getattr(importlib.util.find_spec("vllm"), "origin", None) is not None,
                    reason="vLLM is installed")
def test_engine_vllm_without_vllm_says_what_to_install(tiny, capsys):
    vecs = str(tiny / "vecs")
    for args in (["serve", "--engine", "vllm", "--vectors", vecs],
                 ["extract", "--engine", "vllm", "--out", str(tiny / "x")],
                 ["experiment", "prompting", "--engine", "vllm", "--out", str(tiny / "y")]):
        assert "pip install 'emosteer[vllm]'" in error(capsys, *args)


def test_served_vectors_fall_back_to_the_shipped_ones(tmp_path, monkeypatch):
    import emosteer.vectors
    from emosteer.cli.serve import served_vectors

    monkeypatch.chdir(tmp_path)  # no vectors/ here
    shipped = tmp_path / "shipped" / "smollm2-135m-instruct"
    monkeypatch.setattr(emosteer.vectors, "DEFAULT_VECTORS", shipped)
    with pytest.raises(VectorFileError, match="pass the folder with --vectors"):
        served_vectors(None)
    joy = EmotionVector({0: torch.ones(4)}, {"emotion": "joy", "site": "attn"})
    joy.save(tmp_path / "shipped" / "smollm2-135m-instruct" / "joy.safetensors")
    folder, found = served_vectors(None)
    assert folder == tmp_path / "shipped" / "smollm2-135m-instruct" and list(found) == ["joy"]
    joy.save(tmp_path / "vectors" / "mine.safetensors")  # ./vectors comes first
    assert list(served_vectors(None)[1]) == ["mine"]


# --- extract -------------------------------------------------------------------------------------
def test_extract_engine_vllm_generates_there_and_reads_here(tiny, fake, tmp_path):
    out = tmp_path / "v"
    args = ["extract", "--model", str(tiny / "tiny"), "--emotion", "joy", "--limit", "2",
            "--max-new-tokens", "3", "--out", str(out), "--filter", "none"]
    assert run(*args, "--engine", "vllm", "--vllm-arg", "dtype=float32") == 0
    (made,) = fake
    assert made["vectors"] is None and made["kwargs"] == {"dtype": "float32"}
    (call,) = made["engine"].calls  # one batch: 2 neutral + 2 joy requests, unsteered
    assert len(call) == 4 and all(emotion is None for _, emotion in call)
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert [(s["neutral"], s["emotional"]) for s in samples] == [("hi", "hi")] * 2
    assert EmotionVector.load(out / "joy.safetensors").meta["n_queries"] == "2"


def test_extract_builtin_never_touches_vllm(tiny, fake, tmp_path, capsys):
    args = ["extract", "--model", str(tiny / "tiny"), "--emotion", "joy", "--limit", "1",
            "--max-new-tokens", "2", "--out", str(tmp_path / "b"), "--filter", "none"]
    assert run(*args) == 0 and fake == []
    assert "--vllm-arg is for --engine vllm" in error(capsys, *args, "--vllm-arg", "dtype=x")
    assert "write NAME=VALUE" in error(capsys, *args, "--engine", "vllm", "--vllm-arg", "oops")


# --- experiments ---------------------------------------------------------------------------------
def test_alpha_sweep_engine_vllm_is_one_batch_of_served_mixes(tiny, fake, tmp_path):
    args = ["experiment", "alpha-sweep", "--model", str(tiny / "tiny"), "--vectors",
            str(tiny / "vecs"), "--emotions", "joy,anger", "--alphas", "0,2", "--variant", "raw",
            "--variant", "centered", "--limit", "1", "--metrics", "ppl", "--max-new-tokens", "3"]
    assert run(*args, "--out", str(tmp_path / "v"), "--engine", "vllm") == 0
    (made,) = fake
    assert made["vectors"] == tiny / "vecs"
    (call,) = made["engine"].calls  # 7 conditions x 6 questions, one generate call
    assert len(call) == 42
    served = {n: EmotionVector.load(tiny / "vecs" / f"{n}.safetensors")
              for n in ("anger", "base", "joy")}
    wanted = [served["joy"] * 2, served["anger"] * 2, (served["joy"] - served["base"]) * 2,
              (served["anger"] - served["base"]) * 2]
    sent = [json.loads(e) for e in {json.dumps(e, sort_keys=True) for _, e in call if e}]
    assert len(sent) == 4 and sum(e is None for _, e in call) == 3 * 6  # unsteered, 2 prompts
    for vector in wanted:  # each condition went as a mix that rebuilds its vector
        assert any(_same(mix(served, spec), vector) for spec in sent)
    answers = [json.loads(line) for line in (tmp_path / "v" / "generations.jsonl").open()]
    assert {a["answer"] for a in answers} == {"hi"}
    assert run(*args, "--out", str(tmp_path / "b")) == 0 and len(fake) == 1  # builtin


def _same(a: EmotionVector, b: EmotionVector) -> bool:
    return all(torch.allclose(a.directions[i], b.directions[i], atol=1e-5) for i in b.layers)


def test_runner_keys_unchanged_for_builtin_and_apart_for_vllm(tiny):
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = R.EvalConfig(limit=1, metrics=("ppl",))
    (q,) = C.evaluation_queries(1, categories=["joy"])
    cond = C.unsteered(["joy"])
    builtin = R.Runner(model, tok, cfg, "/nonexistent")
    g = {k: v for k, v in asdict(cfg.generation).items() if k != "batch_size"}
    assert builtin.gen_key(cond, q) == digest({"model": builtin.model_id, **cond.key(),
                                               "query": q.id, "question": q.question,
                                               "generation": g})
    on_vllm = R.Runner(model, tok, cfg, "/nonexistent", engine=G.VllmAnswerer(None))
    assert on_vllm.gen_key(cond, q) != builtin.gen_key(cond, q)


# --- helpers -------------------------------------------------------------------------------------
def test_as_mix_rebuilds_conditions_and_refuses_others(tiny):
    served = {n: EmotionVector.load(tiny / "vecs" / f"{n}.safetensors")
              for n in ("anger", "base", "joy")}
    assert G.as_mix(served["joy"] * 1.5, served) == {"joy": 1.5}
    assert G.as_mix(served["joy"] * 0, served) == {}
    for vector in (served["joy"] - served["base"], mix(served, {"joy": 2.0, "anger": -0.5})):
        assert _same(mix(served, G.as_mix(vector, served)), vector)
    other = EmotionVector({0: torch.randn(64), 1: torch.randn(64)}, dict(served["joy"].meta))
    with pytest.raises(BadInputError, match="not a mix of the served vectors"):
        G.as_mix(other, served)


def test_as_batch_is_what_generate_returns():
    ended = SimpleNamespace(token_ids=ANSWER, finish_reason="stop")
    tok = byte_tokenizer()
    words = tok.encode("wxyz", add_special_tokens=False)
    cut = SimpleNamespace(token_ids=words, finish_reason="length")
    outs = [SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[ended]),
            SimpleNamespace(prompt_token_ids=[4], outputs=[cut])]
    batch = G.as_batch(outs, PAD)
    assert batch.prompt_len == 3
    assert batch.input_ids.tolist() == [[1, 2, 3, *ANSWER, PAD],
                                        [PAD, PAD, 4, *words]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]]
    assert decode_responses(tok, batch) == ["hi", "wxyz"]


def test_generate_config_reaches_every_request(fake):
    engine = FakeEngine(byte_tokenizer())
    texts = G.generate_texts(engine, ["a", "b"], [{"joy": 1.0}, None],
                             cfg=GenerateConfig(max_new_tokens=3))
    assert texts == ["hi", "hi"]
    assert [e for _, e in engine.calls[0]] == [{"joy": 1.0}, None]
