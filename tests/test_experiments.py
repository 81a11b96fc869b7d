"""Experiments on a tiny random model: caching and resume, keys, calibration, reports, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.evaluate import conditions as C
from emosteer.evaluate import experiments as X
from emosteer.evaluate import runner as R
from emosteer.generation import GenerateConfig
from emosteer.judges.rating import LABELS, JudgeError, Rating
from emosteer.models import model_shape
from emosteer.vectors import EMOTIONS, EmotionVector


class CountingJudge:
    """Says 'joy' when the answer has more 'a' bytes than 'e' bytes; counts answers rated."""

    spec, version, eas_is_proxy, rates_topic = "counting", "1", True, False

    def __init__(self, fail_after: int | None = None):
        self.rated, self.fail_after = 0, fail_after

    def rate(self, questions, answers):
        if self.fail_after is not None and self.rated >= self.fail_after:
            raise JudgeError("judge went away")
        self.rated += len(answers)
        out = []
        for a in answers:
            joy = a.count("a") > a.count("e")
            probs = {label: 0.0 for label in LABELS}
            probs["joy" if joy else "neutral"] = 1.0
            out.append(Rating(probs, {e: 100.0 * probs[e] for e in (*EMOTIONS, "surprise")}))
        return out


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama"), byte_tokenizer()
    shape = model_shape(model)
    g = torch.Generator().manual_seed(0)
    vectors = {e: EmotionVector({0: torch.randn(64, generator=g), 1: torch.randn(64, generator=g)},
                                {**shape, "emotion": e, "site": "attn"}) for e in EMOTIONS}
    vectors["base"] = C.centered(vectors, EMOTIONS)["joy"] * 0 + (
        sum((vectors[e] for e in EMOTIONS[1:]), start=vectors["joy"]) / 5)
    return model, tok, vectors


def config(**kw) -> R.EvalConfig:
    return R.EvalConfig(**{"limit": 1, "metrics": ("eps", "tec"), "alphas": (0.0, 2.0),
                           "generation": GenerateConfig(max_new_tokens=6, batch_size=4), **kw})


def test_keys_name_what_is_added_not_how_it_is_labelled(setup):
    model, tok, vectors = setup
    runner = R.Runner(model, tok, config(), "/nonexistent", judge=CountingJudge())
    (q,) = C.evaluation_queries(1, categories=["joy"])
    joy = vectors["joy"]
    key = runner.gen_key
    assert key(C.Condition("raw", 0.0, ("joy",), joy), q) == key(C.unsteered(["joy"]), q)
    assert key(C.Condition("raw", 2.0, ("joy",), joy), q) == key(
        C.Condition("mix", 1.0, ("joy",), joy * 2.0), q)
    assert key(C.Condition("raw", 2.0, ("joy",), joy), q) != key(
        C.Condition("raw", 1.0, ("joy",), joy), q)
    other_seed = R.Runner(model, tok, config(generation=GenerateConfig(max_new_tokens=6, seed=1)),
                          "/nonexistent", judge=CountingJudge())
    assert other_seed.gen_key(C.unsteered(["joy"]), q) != key(C.unsteered(["joy"]), q)


def test_sweep_runs_resumes_and_reuses_the_cache(setup, tmp_path):
    model, tok, vectors = setup
    cfg = config()
    queries = C.evaluation_queries(cfg.limit)
    conditions = C.sweep_conditions(vectors, EMOTIONS, cfg.alphas, ("raw", "centered"))
    # 1 unsteered + 5 raw + 5 centred (alpha 2 only) + 5 prompt conditions, 6 questions each
    assert len(conditions) == 16
    failing = CountingJudge(fail_after=32)
    first = R.Runner(model, tok, cfg, tmp_path, judge=failing, progress=False)
    with pytest.raises(JudgeError):
        first.run(conditions, queries)
    assert first.timings["answers_generated"] == 16 * len(queries)
    kept = len(first.annotations)
    assert kept == 32  # the batch scored before the failure is on disk

    judge = CountingJudge()
    second = R.Runner(model, tok, cfg, tmp_path, judge=judge, progress=False)
    rows = second.run(conditions, queries)
    assert second.timings["answers_generated"] == 0  # every answer came from the cache
    assert judge.rated == 16 * len(queries) - kept  # only what was missing was scored
    assert len(rows) == 5 + 5 + 5 + 5  # unsteered has one row per target emotion
    for row in rows:
        assert row["n"] == len(queries) and 0 <= row["eps"] <= 1
    # the same command again, from a fresh directory, gives the same answers (sampling is
    # seeded per batch, so this holds for the same plan of batches)
    third = R.Runner(model, tok, cfg, tmp_path / "again", judge=CountingJudge(), progress=False)
    third.generate(conditions, queries)
    for c in conditions:
        assert third.answers(c, queries) == second.answers(c, queries)


def test_steered_rows_differ_from_unsteered_and_alpha_zero_does_not(setup, tmp_path):
    model, tok, vectors = setup
    cfg = config(generation=GenerateConfig(max_new_tokens=6, batch_size=8, do_sample=False))
    runner = R.Runner(model, tok, cfg, tmp_path, judge=CountingJudge(), progress=False)
    queries = C.evaluation_queries(1)
    plain = C.unsteered(["joy"])
    strong = C.Condition("raw", 50.0, ("joy",), vectors["joy"])
    runner.generate([plain, strong], queries)
    assert runner.answers(plain, queries) != runner.answers(strong, queries)
    from emosteer.generation import generate_text

    alone = generate_text(model, tok, [q.question for q in queries], cfg=cfg.generation)
    assert runner.answers(plain, queries) == alone  # batching with steered rows changes nothing
    sampled = R.Runner(model, tok, config(), tmp_path / "s", judge=CountingJudge(),
                       progress=False)
    sampled.generate([plain], queries)
    before = sampled.answers(plain, queries)
    sampled.generate([strong, plain], queries)  # new rows: cached answers are not redone
    assert sampled.answers(plain, queries) == before
    assert sampled.timings["answers_generated"] == 2 * len(queries)


def test_calibration_questions_never_reach_the_report():
    evaluation = {q.id for q in C.evaluation_queries(None)}
    calibration = {q.id for q in C.calibration_queries(None)}
    assert evaluation and calibration and not evaluation & calibration
    assert len(evaluation) + len(calibration) == 400
    assert C.evaluation_queries(3) == C.evaluation_queries(3)


def test_choose_alpha_takes_the_smallest_alpha_that_is_good_enough():
    class Stub:
        def __init__(self, table):
            self.table = table

        def run(self, conditions, queries):
            return [{"eps": self.table[c.alpha][0], "ppl": self.table[c.alpha][1]}
                    for c in conditions]

    auto = R.AutoAlpha(candidates=(1.0, 2.0, 3.0), target_eps=0.5, max_ppl_ratio=1.5)
    table = {0.0: (0.0, 10.0), 1.0: (0.3, 11.0), 2.0: (0.6, 14.0), 3.0: (0.9, 30.0)}
    pick = X.choose_alpha(Stub(table), None, "joy", [], auto)
    assert pick["alpha"] == 2.0 and pick["reached"]
    table[2.0] = (0.6, 16.0)  # now too disfluent: nothing reaches the target within the bound
    pick = X.choose_alpha(Stub(table), None, "joy", [], auto)
    assert pick["alpha"] == 1.0 and not pick["reached"]


def test_reports_are_self_contained(setup, tmp_path):
    model, tok, vectors = setup
    cfg = config(metrics=("eps", "tec", "ppl"), alphas=(-1.0, 0.0, 1.0),
                 auto=R.AutoAlpha(candidates=(1.0, 2.0), limit=1))
    runner = R.Runner(model, tok, cfg, tmp_path, judge=CountingJudge(), progress=False)
    result = X.alpha_sweep(runner, vectors, ("raw",), prompting=True, auto=True)
    page = result.files["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page
    for name in ("eps", "tec", "ppl"):
        assert result.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = result.files["markdown"].read_text()  # one table per emotion and one of means
    assert md.count("| raw | -1 |") == 6 and "| prompt | prompt |" in md
    assert "alpha auto" in md and len(result.notes["calibration"]) == 5
    summary = [json.loads(line) for line in result.files["summary"].open()]
    assert {r["variant"] for r in summary} == {"unsteered", "raw", "prompt", "auto"}
    mixed = X.mix_experiment(R.Runner(model, tok, config(), tmp_path / "mix",
                                      judge=CountingJudge(), progress=False),
                             vectors, "joy", "anger", (0.0, 1.0))
    assert len(mixed.rows) == 4 * 2 and mixed.files["mix"].is_file()


def test_cli_experiment_and_classify(setup, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from emosteer import cli

    model, tok, vectors = setup
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    for name, vec in vectors.items():
        EmotionVector(vec.directions, {**vec.meta, "model_id": "tiny"}).save(
            tmp_path / "vecs" / f"{name}.safetensors")
    runner = CliRunner()
    args = ["experiment", "alpha-sweep", "--model", str(tmp_path / "tiny"), "--vectors-dir",
            str(tmp_path / "vecs"), "--limit", "1", "--alphas", "0,1", "--metrics", "eps,tec",
            "--max-new-tokens", "4", "--out", str(tmp_path / "out"), "--emotions", "joy,anger"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").is_file() and "report:" in result.output
    result = runner.invoke(cli.app, ["classify", "--json"],
                           input="I am so happy today!\nThe bus leaves at noon.\n")
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [line["label"] for line in lines] == ["joy", "neutral"]
    assert all(abs(sum(line["probs"].values()) - 1) < 1e-3 for line in lines)


@pytest.mark.parametrize("command", [["classify"], ["experiment", "alpha-sweep"],
                                     ["experiment", "mix"], ["experiment", "base"],
                                     ["experiment", "prompting"]])
def test_help_shows_an_example_without_torch(command):
    import subprocess
    import sys

    code = ("import sys\nfrom emosteer.cli import main\nsys.argv = ['emosteer', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code, *command, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert "Example:" in out.stdout and out.stdout.strip().endswith("no torch"), out.stdout


def test_cli_extracts_missing_vectors_first(setup, tmp_path):
    from typer.testing import CliRunner

    from emosteer import cli

    model, tok, _ = setup
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    args = ["experiment", "prompting", "--model", str(tmp_path / "tiny"), "--limit", "1",
            "--metrics", "ppl", "--max-new-tokens", "4", "--out", str(tmp_path / "p")]
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    args = ["experiment", "base", "--model", str(tmp_path / "tiny"), "--vectors-dir",
            str(tmp_path / "new"), "--extract-limit", "1", "--alphas", "0,1", "--limit", "1",
            "--metrics", "ppl", "--max-new-tokens", "4", "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "extracting" in result.output
    assert sorted(p.stem for p in (tmp_path / "new").glob("*.safetensors")) == sorted(
        [*EMOTIONS, "base"])


def test_llm_judge_rates_emotion_and_topic_in_one_request_per_answer(setup, tmp_path):
    from test_judge import FakeChat

    from emosteer.judges.registry import load_judge

    model, tok, _ = setup
    server = FakeChat([])  # answers every request with anger 80, on_topic 90
    try:
        judge = load_judge(f"openai:{server.url}#m", backoff=0, timeout=5)
        cfg = config(metrics=("topic", "eps", "eas"), topic="judge")
        runner = R.Runner(model, tok, cfg, tmp_path, judge=judge, progress=False)
        queries = C.evaluation_queries(1)
        rows = runner.run([C.unsteered(["anger"])], queries)
    finally:
        server.close()
    assert len(server.requests) == len(queries)
    assert rows[0]["topic"] == pytest.approx(0.9) and rows[0]["eas"] == pytest.approx(80)
    assert rows[0]["eps"] == 1.0
    with pytest.raises(Exception, match="does not rate topic"):
        R.Runner(model, tok, cfg, tmp_path / "x", judge=CountingJudge()).scorers()


def test_runner_names_its_judge_without_loading_it(setup):
    model, tok, _ = setup
    lazy = R.Runner(model, tok, config(judge="hf:some/model"), "/nonexistent")
    assert lazy.judge_spec == "hf:some/model" and lazy._judge is None  # nothing loaded
    given = R.Runner(model, tok, config(), "/nonexistent", judge=CountingJudge())
    assert given.judge_spec == "counting"
