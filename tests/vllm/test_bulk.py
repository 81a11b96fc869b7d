"""Bulk generation on vLLM for extraction and the experiments (the `--engine vllm` paths):
extraction's batches as transformers' generate() makes them, the runner's conditions sent as
served mixes in one batch, and `emosteer extract --engine vllm` end to end."""

from __future__ import annotations

import json

import pytest

from emosteer.extraction.extract import ExtractConfig, extract
from emosteer.generation import GenerateConfig, decode_responses, eos_ids
from emosteer.vectors import load_vectors

GREEDY = GenerateConfig(max_new_tokens=40, do_sample=False, batch_size=2)


class Recording:
    """A vllm.LLM that records each generate call's emotion specs."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def get_tokenizer(self):
        return self.engine.get_tokenizer()

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append([(p.extra_args or {}).get("emotion") for p in params])
        return self.engine.generate(prompts, params, use_tqdm=use_tqdm)


@pytest.fixture(scope="module")
def bundled():
    import emosteer

    return emosteer.load_model("default")


def test_extraction_batches_are_what_generate_would_return(llm, bundled):
    from emosteer import data
    from emosteer.vllm.generate import _outputs, extraction_generations

    model, tok = bundled
    cfg = ExtractConfig(emotions=("joy",), limit=2, generation=GREEDY)
    (gen,) = extraction_generations(llm, cfg, progress=False)
    questions = [q.question for q in gen.queries] * 2  # the same four requests, same order
    systems = [data.system_prompt(None)] * 2 + [data.system_prompt("joy")] * 2
    expected = [o.outputs[0].text.strip()
                for o in _outputs(llm, questions, systems, [None] * 4, GREEDY)]
    batch = gen.batch
    assert decode_responses(tok, batch) == expected
    ends, p = eos_ids(model, tok), batch.prompt_len
    for i in range(4):
        kept = int(batch.response_mask[i].sum())
        assert not set(batch.input_ids[i, p:p + kept].tolist()) & ends  # no end token read
        if p + kept < batch.input_ids.shape[1] and batch.attention_mask[i, -1] == 0:
            assert int(batch.input_ids[i, p + kept]) in ends  # stopped by its end token
    result = extract(model, tok, cfg, generations=[gen], progress=False)
    assert set(result.vectors) == {"joy", "base"} and result.used["joy"] == 2


def test_runner_sends_each_condition_as_its_served_mix_in_one_batch(llm, vectors, bundled,
                                                                      tmp_path):
    from emosteer.evaluate import conditions as C
    from emosteer.evaluate.runner import EvalConfig, Runner
    from emosteer.vllm import VllmAnswerer

    model, tok = bundled
    served = load_vectors(vectors)
    engine = Recording(llm)
    cfg = EvalConfig(limit=1, metrics=("ppl",), generation=GenerateConfig(
        max_new_tokens=8, do_sample=False))
    runner = Runner(model, tok, cfg, tmp_path, progress=False,
                    engine=VllmAnswerer(engine, served))
    conditions = C.sweep_conditions(served, ["joy", "anger"], [0.0, 1.5],
                                    ("raw", "centered"), prompting=True)
    queries = C.evaluation_queries(1, categories=["joy", "neutral"])
    runner.generate(conditions, queries)
    (call,) = engine.calls  # 7 conditions x 2 questions, one vLLM batch
    assert len(call) == 14
    # raw: alpha x the vector; centred: minus the mean of joy and anger (no base served)
    specs = {json.dumps(s, sort_keys=True) for s in call if s}
    assert specs == {json.dumps(s, sort_keys=True) for s in (
        {"joy": 1.5}, {"anger": 1.5}, {"anger": -0.75, "joy": 0.75},
        {"anger": 0.75, "joy": -0.75})}
    plain = runner.answers(conditions[0], queries)
    steered = runner.answers(conditions[1], queries)
    assert plain != steered and all(runner.answers(c, queries) for c in conditions)
    runner.generate(conditions, queries)  # cached: nothing goes to vLLM again
    assert len(engine.calls) == 1


def test_cli_extract_on_vllm(tmp_path, capsys):
    from emosteer.cli import main

    out = tmp_path / "vectors"
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--engine", "vllm", "--emotion", "joy", "--limit", "2", "--filter", "none",
              "--max-new-tokens", "16", "--out", str(out), "--vllm-arg", "dtype=float32",
              "--vllm-arg", "max_model_len=1024", "--vllm-arg", "kv_cache_memory_bytes=268435456"])
    assert stop.value.code == 0, capsys.readouterr().err
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert len(samples) == 2 and all(s["neutral"] and s["emotional"] for s in samples)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["base.safetensors",
                                                                 "joy.safetensors"]


def test_cli_frontier_on_vllm(tmp_path, capsys):
    """The search with its answers on vLLM: every steered setting served, the report written,
    every calibration and held-out question answered."""
    from emosteer.cli import main

    method = tmp_path / "vectors" / "filtered_ctx_100_shipped"
    method.mkdir(parents=True)
    for name, vector in load_vectors("default").items():
        if name == "joy":
            vector.save(method / f"{name}.safetensors")
    args = ["experiment", "frontier", "--engine", "vllm", "--vectors", str(tmp_path / "vectors"),
            "--method", "filtered_ctx_100_shipped", "--emotion", "joy", "--calibration-limit",
            "1", "--limit", "1", "--max-new-tokens", "12", "--out", str(tmp_path / "out"),
            "--vllm-arg", "dtype=float32", "--vllm-arg", "max_model_len=1024",
            "--vllm-arg", "kv_cache_memory_bytes=268435456"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 0, capsys.readouterr().err
    served = sorted(p.name for p in (tmp_path / "out" / "vllm-vectors").glob("*.safetensors"))
    assert served == ["v000.safetensors"]  # joy, all layers: strength 1 is one served vector
    rows = [json.loads(line) for line in (tmp_path / "out" / "summary.jsonl").open()]
    assert {r["method"] for r in rows} >= {"filtered_ctx_100_shipped", "unsteered"}
    answers = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").open()]
    steered = [a for a in answers if a["condition"]["vector"] is not None]
    assert len(steered) == 12 and all(a["answer"].strip() for a in answers)  # 6 + 6 questions
