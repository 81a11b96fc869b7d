"""The method frontier and its second judge: judges A and B on disjoint halves of the corpus,
the selection rule on synthetic scores, and the whole frontier on a tiny random model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from dataclasses import replace

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.data import dataset_info, dataset_path
from emosteer.data import held_out_flags as held_out
from emosteer.errors import BadInputError
from emosteer.evaluate import conditions as C
from emosteer.evaluate import frontier as F
from emosteer.evaluate import frontier_report as FR
from emosteer.evaluate.measure import JudgesRunner
from emosteer.generation import GenerateConfig
from emosteer.judges.embedded import LABELS, features, shipped, training_flags
from emosteer.judges.rating import JudgeError, Rating
from emosteer.judges.registry import load_judge
from emosteer.models import model_shape
from emosteer.vectors import EmotionVector


# --- judges A and B --------------------------------------------------------------------------
def _corpus() -> list[dict]:
    return [json.loads(line) for line in dataset_path("emotion_corpus").read_text().splitlines()
            if line.strip()]


def test_judges_a_and_b_are_registered_and_differ():
    a, b = load_judge("embedded-a"), load_judge("embedded-b")
    assert (a.spec, b.spec) == ("embedded-a", "embedded-b")
    assert a.version != b.version != load_judge("embedded").version
    assert shipped("a").card["half"] == "a" and shipped("b").card["half"] == "b"


def test_judges_a_and_b_never_saw_the_same_sentence_nor_the_held_out_part():
    ids = [r["id"] for r in _corpus()]
    test = held_out(ids, 0.2, 0)
    seen = {}
    for half in "ab":
        card = shipped(half).card
        assert card["corpus_sha256"] == dataset_info("emotion_corpus").sha256
        flags = training_flags(ids, card["held_out_share"], card["split_seed"], half,
                               card["half_seed"])
        seen[half] = {i for i, f in zip(ids, flags, strict=True) if f}
        assert seen[half] == set(card["train_ids"]) and len(seen[half]) == card["n_train"]
        assert not seen[half] & {i for i, t in zip(ids, test, strict=True) if t}
    assert not seen["a"] & seen["b"]
    # together they cover the whole training part of the default judge
    assert seen["a"] | seen["b"] == {i for i, f in zip(ids, training_flags(ids), strict=True)
                                     if f}


def test_judges_a_and_b_reach_80_percent_on_sentences_neither_saw():
    """Recomputed from the corpus and the weights, not read from the cards."""
    rows = _corpus()
    test = [r for r, t in zip(rows, held_out([r["id"] for r in rows], 0.2, 0), strict=True) if t]
    x = features([r["text"] for r in test])
    truth = torch.tensor([LABELS.index(r["label"]) for r in test])
    for half in "ab":
        heads = shipped(half)
        accuracy = float((heads.probs(x).argmax(-1) == truth).float().mean())
        assert len(test) == heads.card["n_held_out"]
        assert accuracy >= 0.8
        assert abs(accuracy - heads.card["held_out_accuracy"]) < 2e-3


def test_training_flags_split_the_training_part_in_two():
    ids = [f"s-{i}" for i in range(1000)]
    a, b, whole = training_flags(ids, half="a"), training_flags(ids, half="b"), training_flags(ids)
    assert not any(x and y for x, y in zip(a, b, strict=True))
    assert [x or y for x, y in zip(a, b, strict=True)] == whole
    assert 350 < sum(a) < 450 and 350 < sum(b) < 450
    with pytest.raises(ValueError, match="half"):
        training_flags(ids, half="c")


# --- the selection rule ------------------------------------------------------------------------
def _row(eps, ratio, topic, strength, **extra):
    return {"eps": eps, "ppl_ratio": ratio, "topic": topic, "strength": strength, **extra}


def test_choose_takes_the_highest_eps_within_both_bounds():
    rows = [_row(0.10, 1.00, 0.97, 0.0),  # unsteered
            _row(0.40, 1.10, 0.96, 1.0),
            _row(0.55, 1.29, 0.91, 1.5),  # the best that keeps both bounds
            _row(0.80, 1.31, 0.95, 2.0),  # PPL just over 1.3x
            _row(0.90, 1.20, 0.89, 3.0),  # off topic
            _row(None, 1.00, 0.99, 4.0),  # not scored
            _row(0.99, None, 0.99, 5.0)]  # no PPL: not known to be fluent
    assert F.choose(rows)["strength"] == 1.5
    assert F.choose(rows, max_ppl_ratio=1.4)["strength"] == 2.0  # the bounds are the rule's
    assert F.choose(rows, max_ppl_ratio=1.3, min_topic=0.85)["strength"] == 3.0
    assert [F.feasible(r) for r in rows] == [True, True, True, False, False, True, False]


def test_choose_breaks_ties_by_fluency_then_strength_and_may_find_nothing():
    tied = [_row(0.5, 1.2, 0.95, 2.0), _row(0.5, 1.1, 0.95, 3.0), _row(0.5, 1.1, 0.95, 1.0)]
    assert F.choose(tied)["strength"] == 1.0
    assert F.choose([_row(0.9, 2.0, 0.95, 1.0), _row(0.9, 1.0, 0.5, 1.0)]) is None
    assert F.choose([]) is None


def test_bands_are_fractions_of_the_vectors_layers():
    assert F.band_layers(range(30), (1 / 3, 2 / 3)) == list(range(10, 20))
    assert F.band_layers(range(30), None) == list(range(30))
    assert F.band_layers([0, 1], (0.0, 0.1)) == [0]  # never empty
    assert F.band_layers(range(28), (2 / 3, 1.0)) == list(range(19, 28))
    with pytest.raises(BadInputError, match="band"):
        F.band_layers(range(4), (0.5, 0.2))


def test_pareto_front_keeps_what_nothing_beats_on_both_axes():
    points = [(1.0, 0.1), (1.2, 0.5), (1.3, 0.4), (1.1, 0.1), (2.0, 0.9)]
    assert FR.pareto_front(points) == [(1.0, 0.1), (1.2, 0.5), (2.0, 0.9)]


# --- the frontier on a tiny random model -------------------------------------------------------
class HashJudge:
    """Reads each answer as the label a salted hash of its text picks; counts what it rates."""

    eas_is_proxy, rates_topic, version = True, False, "1"

    def __init__(self, spec, fail_after=None):
        self.spec, self.fail_after, self.rated = spec, fail_after, 0

    def rate(self, questions, answers):
        if self.fail_after is not None and self.rated >= self.fail_after:
            raise JudgeError("judge went away")
        self.rated += len(answers)
        out = []
        for text in answers:
            probs = {label: 0.0 for label in LABELS}
            probs[LABELS[zlib.crc32(f"{self.spec}:{text}".encode()) % len(LABELS)]] = 1.0
            out.append(Rating(probs, {e: 100 * probs.get(e, 0.0) for e in LABELS[:-1]}))
        return out


class NotPlainJudge(HashJudge):
    """Reads 'joy' in every answer that differs from the unsteered answers, else neutral."""

    def __init__(self, spec, plain):
        super().__init__(spec)
        self.plain = set(plain)

    def rate(self, questions, answers):
        self.rated += len(answers)
        return [Rating({label: float(label == ("neutral" if a in self.plain else "joy"))
                        for label in LABELS}, {}) for a in answers]


class HashTopic:
    """Every fifth answer or so is off topic."""

    version = "topic:fake"

    def score(self, questions, answers):
        return [0.5 if zlib.crc32(a.encode()) % 5 == 0 else 0.95 for a in answers]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model("llama"), byte_tokenizer()
    return model, tok


def _vectors(model, folder):
    g = torch.Generator().manual_seed(0)
    shape = model_shape(model)
    for emotion in ("joy", "anger"):
        v = EmotionVector({i: torch.randn(64, generator=g) for i in range(2)},
                          {**shape, "emotion": emotion, "site": "attn"})
        v.save(folder / f"{emotion}.safetensors")


CFG = F.FrontierConfig(
    methods=(F.Method("mean_diff", (1.0, 30.0)),
             F.Method("band", (20.0,), folder="mean_diff", bands=((0.0, 0.5), (0.5, 1.0)),
                      extract=None),
             F.Method("trained", (1.0,)),  # no folder: skipped
             F.Method("prompt", prompt=True, extract=None)),
    emotions=("joy", "anger"), calibration_limit=1, limit=1, judges=("fake-a", "fake-b"))


def _runner(tiny, out, judge_a=None, judge_b=None):
    model, tok = tiny
    cfg = F.eval_config(CFG, generation=GenerateConfig(max_new_tokens=6, batch_size=8))
    return JudgesRunner(model, tok, cfg, out, ["fake-b"], progress=False,
                        judge=judge_a or HashJudge("fake-a"),
                        judges={"fake-b": judge_b or HashJudge("fake-b")},
                        topic=HashTopic())


def test_frontier_chooses_on_calibration_and_reports_only_held_out(tiny, tmp_path):
    _vectors(tiny[0], tmp_path / "vectors" / "mean_diff")
    runner = _runner(tiny, tmp_path / "run")
    result = F.frontier(runner, tmp_path / "vectors", CFG)
    assert result.skipped == {"trained": f"no vectors in {tmp_path / 'vectors' / 'trained'}"}
    calib, held = set(result.queries["calibration"]), set(result.queries["held_out"])
    assert calib and held and not calib & held
    assert calib == {q.id for q in C.calibration_queries(1)}
    # every calibrated (method, emotion) chose by the rule, among its own settings
    for rows in F.by_method_and_emotion(result.calibration).values():
        picked = [r for r in rows if r["chosen"]]
        assert len(picked) == 1
        assert picked[0] is (F.choose(rows, CFG.max_ppl_ratio, CFG.min_topic) or rows[0])
        assert rows[0]["strength"] == 0 and rows[0]["ppl_ratio"] == pytest.approx(1.0)
    # the held-out split answered only the chosen settings and the unsteered reference
    chosen = {(r["method"], r["emotion"], r["strength"], r["band"])
              for r in result.calibration if r["chosen"]}
    references = (F.UNSTEERED, f"prompt {F.UNBOUNDED}")
    assert {(r["method"], r["emotion"], r["strength"], r["band"]) for r in result.held_out
            if r["method"] not in references} == chosen
    held_conditions = {json.dumps(rec["condition"], sort_keys=True)
                       for rec in runner.generations.records.values() if rec["query"] in held}
    assert len(held_conditions) <= len(chosen) + 1 + 2  # + unsteered, + the two prompts
    assert len(result.held_out) == (3 + 2) * 2  # mean_diff, band, prompt + references x 2
    asked = [r for r in result.held_out if r["method"] == f"prompt {F.UNBOUNDED}"]
    assert [r["band"] for r in asked] == ["prompt", "prompt"]
    for r in result.held_out:
        assert r["n"] == len(held) and 0 <= r["eps:fake-a"] <= 1 and 0 <= r["eps:fake-b"] <= 1
        assert r["eps"] == pytest.approx((r["eps:fake-a"] + r["eps:fake-b"]) / 2)


def test_frontier_resumes_from_its_caches_and_writes_its_report(tiny, tmp_path):
    _vectors(tiny[0], tmp_path / "vectors" / "mean_diff")
    failing = HashJudge("fake-b", fail_after=20)
    with pytest.raises(JudgeError):
        F.frontier(_runner(tiny, tmp_path / "run", judge_b=failing), tmp_path / "vectors", CFG)
    a, b = HashJudge("fake-a"), HashJudge("fake-b")
    again = _runner(tiny, tmp_path / "run", judge_a=a, judge_b=b)
    first = F.frontier(again, tmp_path / "vectors", CFG)
    held = set(first.queries["held_out"])
    held_answers = [r for r in again.generations.records.values() if r["query"] in held]
    assert a.rated == len(held_answers)  # A had rated all calibration answers before B failed
    assert len(held_answers) < b.rated < len(again.generations)  # B resumed where it stopped
    third = _runner(tiny, tmp_path / "run", judge_a=HashJudge("fake-a"),
                    judge_b=HashJudge("fake-b"))
    second = F.frontier(third, tmp_path / "vectors", CFG)
    assert third.timings.get("answers_generated", 0) == 0  # everything came from the cache
    assert third.other_judge("fake-b").rated == 0
    assert second.held_out == first.held_out
    files = FR.write(second, CFG, tmp_path / "run", ["fake-a", "fake-b"])
    for name in ("summary", "calibration", "markdown", "html", "pareto-joy", "pareto-anger"):
        assert files[name].is_file() and files[name].stat().st_size > 0
    rows = [json.loads(line) for line in files["summary"].read_text().splitlines()]
    assert {r["split"] for r in rows} == {"held_out"} and len(rows) == len(second.held_out)
    md = files["markdown"].read_text()
    assert "held out: joy" in md and "EPS fake-b" in md and "skipped trained" in md
    assert "pareto-joy.png" in md and "<img" in files["html"].read_text()


def test_a_method_on_generated_positions_answers_apart_from_the_same_vectors_everywhere(
        tiny, tmp_path):
    _vectors(tiny[0], tmp_path / "vectors" / "mean_diff")
    cfg = replace(CFG, methods=(F.Method("mean_diff", (30.0,)),
                                F.Method("new", (30.0,), folder="mean_diff", extract=None,
                                         positions="generated")))
    runner = _runner(tiny, tmp_path / "run")
    F.frontier(runner, tmp_path / "vectors", cfg)
    answers: dict[str, dict] = {}
    for rec in runner.generations.records.values():
        if rec["condition"]["alpha"] == 30.0 and rec["condition"]["vector"] == "joy":
            answers.setdefault(rec["condition"]["variant"], {})[rec["query"]] = rec
    everywhere, newest = answers["mean_diff"], answers["new"]
    assert everywhere.keys() == newest.keys() and everywhere
    assert {r["condition"].get("positions") for r in newest.values()} == {"generated"}
    assert {r["condition"].get("positions") for r in everywhere.values()} == {None}
    assert [r["answer"] for r in everywhere.values()] != [r["answer"] for r in newest.values()]
    assert {r["key"] for r in everywhere.values()}.isdisjoint(r["key"] for r in newest.values())


def test_a_method_that_raises_the_target_within_the_bounds_is_chosen(tiny, tmp_path):
    _vectors(tiny[0], tmp_path / "vectors" / "mean_diff")
    queries = C.calibration_queries(1) + C.evaluation_queries(1)
    runner = _runner(tiny, tmp_path / "run")
    runner.generate([C.unsteered(())], queries)
    plain = runner.answers(C.unsteered(()), queries)
    judges = [NotPlainJudge(spec, plain) for spec in ("fake-a", "fake-b")]
    cfg = replace(CFG, methods=CFG.methods[:1], max_ppl_ratio=10.0, min_topic=0.0)
    result = F.frontier(_runner(tiny, tmp_path / "run", *judges), tmp_path / "vectors", cfg)
    joy = next(r for r in result.held_out if (r["method"], r["emotion"]) == ("mean_diff", "joy"))
    assert joy["strength"] > 0 and joy["eps"] > 0  # steering changes every answer: "joy"
    anger = next(r for r in result.held_out if (r["method"], r["emotion"]) == ("mean_diff",
                                                                             "anger"))
    assert anger["strength"] == 0  # nothing reads as anger: unsteered is the choice
    strict = replace(cfg, max_ppl_ratio=0.5)  # no steered setting is that fluent
    again = F.frontier(_runner(tiny, tmp_path / "run", *judges), tmp_path / "vectors", strict)
    assert all(r["strength"] == 0 for r in again.held_out)
    assert not any(r["feasible_on_calibration"] for r in again.held_out
                   if r["method"] != F.UNSTEERED)


def test_frontier_refuses_a_folder_without_vectors(tiny, tmp_path):
    cfg = F.FrontierConfig(methods=(F.Method("mean_diff", (1.0,)),), emotions=("joy",))
    with pytest.raises(BadInputError, match="no method has vectors"):
        F.frontier(_runner(tiny, tmp_path), tmp_path / "nothing", cfg)


# --- the command -------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emosteer", "experiment", "frontier", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_the_command_refuses_an_unknown_method_before_loading_anything(tmp_path):
    out = _cli("--method", "magic", "--model", str(tmp_path / "no-model"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: unknown method 'magic': choose from " + ", ".join(m.name for m in F.METHODS)]
    help_text = " ".join(_cli("--help", env={"COLUMNS": "400"}).stdout.split())
    assert "Example:" in help_text
    assert all(m.name in help_text for m in F.METHODS), "the --method help must list them all"


def test_the_command_runs_on_a_saved_tiny_model(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    model.emosteer_id = "tiny"  # what load_model calls a folder named tiny
    try:
        _vectors(model, tmp_path / "vectors" / "mean_diff")
    finally:
        model.emosteer_id = "tiny-llama"
    args = ["--model", str(tmp_path / "tiny"), "--vectors", str(tmp_path / "vectors"),
            "--method", "mean_diff", "--method", "prompt", "--emotion", "joy,anger",
            "--calibration-limit", "1", "--limit", "1", "--max-new-tokens", "4",
            "--out", str(tmp_path / "run")]
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    assert "embedded-a" in out.stdout and "report:" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "summary.jsonl").open()]
    assert {r["method"] for r in rows} == {"unsteered", "mean_diff", "prompt",
                                           "prompt (unbounded)"}
    assert all("eps:embedded-a" in r and "eps:embedded-b" in r for r in rows)
    assert (tmp_path / "run" / "figures" / "pareto-anger.png").is_file()


def test_build_vectors_shares_answers_only_between_methods_that_ask_the_same(tmp_path,
                                                                             monkeypatch):
    import emosteer.extraction.extract as X
    from emosteer.evaluate.frontier_vectors import build_vectors

    calls, real = [], X.extract

    def spy(model, tok, cfg, **kw):
        result = real(model, tok, cfg, **kw)
        calls.append((cfg.dataset, kw.get("generations") is not None, result.generations))
        return result

    monkeypatch.setattr(X, "extract", spy)
    methods = (F.Method("plain", (1.0,)), F.Method("centred", (1.0,), extract={"center": True}),
               F.Method("scenes", (1.0,), extract={"dataset": "sev"}))
    base = X.ExtractConfig(emotions=("joy", "anger"), limit=2,
                           generation=GenerateConfig(max_new_tokens=4, batch_size=2))
    build_vectors(tiny_model("llama"), byte_tokenizer(), methods, tmp_path, base, False)
    assert [(d, reused) for d, reused, _ in calls] == [
        ("emotion_query", False), ("emotion_query", True), ("sev", False)]
    # the same answers, not generated again
    assert all(a is b for a, b in zip(calls[1][2], calls[0][2], strict=True))
    assert EmotionVector.load(tmp_path / "scenes" / "joy.safetensors").meta["dataset"] == "sev"


def test_the_vllm_engine_serves_every_vector_the_grid_steers_with(tiny, tmp_path):
    from emosteer.vectors import load_vectors
    from emosteer.vllm.generate import as_mix

    model, _ = tiny
    (tmp_path / "vectors" / "mean_diff").mkdir(parents=True)
    _vectors(model, tmp_path / "vectors" / "mean_diff")
    grid, _ = F.plan(CFG, tmp_path / "vectors")
    served = load_vectors(F.engine_vectors(grid, tmp_path / "served"))
    steered = [s.condition for settings in grid.values() for s in settings
               if s.condition.vector is not None]
    assert len(served) == 2 * 3  # joy and anger: all layers, and each of the two bands
    for c in steered:  # each condition is one served vector times its strength
        mix = as_mix(c.vector * c.alpha, served)
        assert len(mix) == 1 and next(iter(mix.values())) == pytest.approx(c.alpha)
    keepnorm = replace(CFG, methods=(F.Method("mean_diff", (1.0,), preserve_norm=True),))
    with pytest.raises(BadInputError, match="norm-preserving, which the vLLM plugin does not"):
        F.engine_vectors(F.plan(keepnorm, tmp_path / "vectors")[0], tmp_path / "served")
