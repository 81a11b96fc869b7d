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


class LengthJudge:
    """Reads an answer as joy when it is long, else neutral (no encoder in vLLM's venv)."""

    eas_is_proxy, rates_topic, version = True, False, "1"

    def __init__(self, spec):
        self.spec = spec

    def rate(self, questions, answers):
        from emosteer.judges.rating import Rating

        return [Rating({"joy": float(len(a) > 60), "neutral": float(len(a) <= 60)}, {})
                for a in answers]


class SameTopic:
    version = "topic:fake"

    def score(self, questions, answers):
        return [0.95 for _ in answers]


def test_the_frontier_on_vllm_serves_every_setting_of_its_grid(tmp_path, bundled, llm):
    """The search with its answers on a second vLLM engine in the process (the session's
    serves other vectors), serving the folder engine_vectors writes: every setting answered,
    the rows written (the judges are fakes: vLLM's venv has no sentence encoder)."""
    from support import ENGINE
    from vllm import SamplingParams

    import emosteer.vllm
    from emosteer.evaluate import frontier as F
    from emosteer.evaluate.measure import JudgesRunner
    from emosteer.vllm.generate import VllmAnswerer

    method = tmp_path / "vectors" / "filtered_ctx_100_shipped"
    method.mkdir(parents=True)
    load_vectors("default")["joy"].save(method / "joy.safetensors")
    cfg = F.FrontierConfig(methods=(F.Method("filtered_ctx_100_shipped", (0.5, 1.0),
                                             extract=None),),
                           emotions=("joy",), calibration_limit=1, limit=1,
                           judges=("fake-a", "fake-b"))
    served = F.engine_vectors(F.plan(cfg, tmp_path / "vectors")[0], tmp_path / "served")
    engine = emosteer.vllm.llm("default", served, **ENGINE)
    model, tok = bundled
    runner = JudgesRunner(model, tok, F.eval_config(cfg, generation=GenerateConfig(
        max_new_tokens=12)), tmp_path / "out", ["fake-b"], progress=False,
        judge=LengthJudge("fake-a"), judges={"fake-b": LengthJudge("fake-b")},
        topic=SameTopic(), engine=VllmAnswerer(engine, load_vectors(served)))
    result = F.frontier(runner, tmp_path / "vectors", cfg)
    assert sorted(p.name for p in served.glob("*.safetensors")) == ["v000.safetensors"]
    assert {r["method"] for r in result.held_out} >= {"filtered_ctx_100_shipped", "unsteered"}
    steered = [r for r in result.calibration if r["strength"] > 0]
    assert [r["strength"] for r in steered] == [0.5, 1.0] and all(r["n"] == 6 for r in steered)
    answers = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").open()]
    assert len(answers) >= 18 and all(a["answer"].strip() for a in answers)
    # the session's engine still checks requests against its own vectors
    params = SamplingParams(max_tokens=2, extra_args={"emotion": {"joy": 1}})
    assert llm.generate(["Hi"], params)[0].outputs[0].text is not None
