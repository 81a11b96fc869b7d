"""Issue 29: our written answers, prefill and few-shot elicitation, norm-preserving steering,
prompt + steer, the repetition cap."""

from __future__ import annotations

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer import data
from emosteer.errors import BadInputError
from emosteer.evaluate.frontier import METHODS, Method, choose, feasible, settings_of
from emosteer.evaluate.measure import repeated_trigrams
from emosteer.extraction.answers import first_sentence as _first_sentence
from emosteer.extraction.capture import masked_means
from emosteer.extraction.extract import ExtractConfig, extract
from emosteer.generation import GenerateConfig, chat_prompt
from emosteer.hooks import hooked, untuple
from emosteer.models import site_modules
from emosteer.steering import steer, steer_rows
from emosteer.vectors import EmotionVector

GEN = GenerateConfig(max_new_tokens=6, batch_size=2)


def test_every_extraction_question_has_two_written_answers():
    written = data.written_answers()
    questions = data.load_queries("emotion_query")
    assert set(written) == {q.id for q in questions}
    for answer in written.values():
        assert 15 <= len(answer.emotional.split()) <= 90
        assert 15 <= len(answer.neutral.split()) <= 90
        assert "sorry" not in answer.emotional.lower()  # the apology the generated data had
        assert "!" not in answer.neutral


def test_written_vectors_are_the_mean_difference_of_our_answers_read_under_the_neutral_prompt():
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = ExtractConfig(emotions=("anger",), limit=3, answers="written", generation=GEN)
    result = extract(model, tok, cfg, progress=False)
    written = data.written_answers()
    queries = data.load_queries("emotion_query", ["anger"], 3, GEN.seed)
    expected = 0
    for q in queries:  # one text at a time, no padding: the mean over the answer's tokens
        prompt = tok(chat_prompt(tok, q.question, data.system_prompt(None)),
                     add_special_tokens=False)["input_ids"]
        means = []
        for text in (written[q.id].emotional, written[q.id].neutral):
            answer = tok(text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer])
            mask = torch.tensor([[0] * len(prompt) + [1] * len(answer)])
            means.append(masked_means(model, ids, torch.ones_like(ids), mask, "attn")[0])
        expected = expected + (means[0] - means[1])
    expected = expected / len(queries)
    vector = result.vectors["anger"]
    assert vector.meta["answers"] == "written" and vector.meta["answers_sha256"]
    for layer in vector.layers:
        assert torch.allclose(vector.directions[layer], expected[layer], atol=1e-5)
    again = extract(model, tok, cfg, progress=False)  # no sampling: the same vector
    assert torch.equal(again.vectors["anger"].directions[1], vector.directions[1])


def test_written_answers_refuse_what_they_cannot_do():
    with pytest.raises(BadInputError, match="emotion_query"):
        ExtractConfig(dataset="sev", answers="written")
    with pytest.raises(BadInputError, match="one fixed answer pair"):
        ExtractConfig(answers="written", rounds=2, filter="judge")


def test_prefill_reads_our_opening_as_part_of_the_answer():
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = ExtractConfig(emotions=("fear",), limit=2, answers="prefill", generation=GEN)
    result = extract(model, tok, cfg, progress=False)
    written = data.written_answers()
    for sample in result.samples:
        assert sample["emotional"].startswith(_first_sentence(written[sample["id"]].emotional))
        assert sample["neutral"].startswith(_first_sentence(written[sample["id"]].neutral))
    assert _first_sentence("Ugh, not again! The bus was late.") == "Ugh, not again!"
    assert _first_sentence("No end mark") == "No end mark"


def test_fewshot_extraction_runs_and_names_its_answers():
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = ExtractConfig(emotions=("disgust",), limit=2, answers="fewshot", generation=GEN)
    vector = extract(model, tok, cfg, progress=False).vectors["disgust"]
    assert vector.meta["answers"] == "fewshot"


def _recorder(model, layer: int):
    """(outputs seen, block): the attention output of `layer`, as later hooks see it."""
    seen: list[torch.Tensor] = []
    module = site_modules(model, "attn")[layer]
    return seen, hooked(model, {module: lambda m, a, out: seen.append(untuple(out).clone())})


def test_preserve_norm_turns_the_state_and_keeps_its_length():
    model = tiny_model("llama")
    vector = EmotionVector({1: torch.randn(64) * 3},  # layer 1 only: its input is unsteered
                           {"model_id": "tiny-llama", "hidden_size": "64", "num_layers": "2",
                            "site": "attn", "emotion": "joy"})
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain_logits = model(ids).logits
        plain, block = _recorder(model, 1)
        with block:
            model(ids)
        for keep in (True, False):
            with steer(model, vector, alpha=2.0, preserve_norm=keep):
                steered, block = _recorder(model, 1)  # registered after the adder
                with block:
                    model(ids)
            same = torch.allclose(steered[0].norm(dim=-1), plain[0].norm(dim=-1), rtol=1e-5)
            assert same is keep
            assert not torch.allclose(steered[0], plain[0])
        assert torch.equal(model(ids).logits, plain_logits)  # restored on exit
    with pytest.raises(BadInputError, match="hook"):
        with steer(model, vector, preserve_norm=True, mode="fold"):
            pass


def test_preserve_norm_per_row_leaves_the_other_rows_bit_identical():
    model = tiny_model("llama")
    vector = EmotionVector({0: torch.randn(64), 1: torch.randn(64)},
                           {"model_id": "tiny-llama", "hidden_size": "64", "num_layers": "2",
                            "site": "attn", "emotion": "joy"})
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(ids).logits
        with steer_rows(model, [vector * 2, None, vector * 2], preserve_norm=[True, False, False]):
            out = model(ids).logits
        with steer(model, vector, alpha=2.0, preserve_norm=True):
            alone = model(ids[:1]).logits
    assert torch.equal(out[1], plain[1])
    assert torch.allclose(out[0], alone[0], atol=1e-5)
    assert not torch.allclose(out[0], out[2])  # the same vector, added with and without
    with pytest.raises(BadInputError, match="3 rows"):
        with steer_rows(model, [vector, None, None], preserve_norm=[True]):
            pass


def test_the_norm_after_a_kept_addition_is_the_norm_before():
    from emosteer.steering import _adder

    hidden = torch.randn(2, 5, 64)
    before = hidden.norm(dim=-1)
    hook = _adder(torch.randn(64) * 10, torch.float32, last_only=False, keep_norm=True)
    hook(None, None, hidden)
    assert torch.allclose(hidden.norm(dim=-1), before, rtol=1e-5)
    rows = torch.tensor([True, False])[:, None, None]
    other = torch.randn(2, 5, 64)
    copy = other.clone()
    delta = torch.zeros(2, 1, 64)
    delta[0] = 5.0
    _adder(delta, torch.float32, last_only=False, keep_norm=rows)(None, None, other)
    assert torch.equal(other[1], copy[1])
    assert torch.allclose(other[0].norm(dim=-1), copy[0].norm(dim=-1), rtol=1e-5)


def test_prompt_plus_steer_settings_carry_the_system_prompt_and_the_vector():
    vector = EmotionVector({0: torch.ones(4)}, {"emotion": "anger", "site": "attn"})
    method = Method("both", (0.5,), with_prompt=True, preserve_norm=True)
    plain, setting = settings_of(method, "anger", vector)
    assert plain.condition.system is None and plain.strength == 0
    assert setting.condition.system == data.system_prompt("anger")
    assert setting.condition.vector is vector and setting.condition.preserve_norm
    assert setting.condition.key()["preserve_norm"] is True
    assert "preserve_norm" not in settings_of(Method("x", (0.5,)), "anger",
                                              vector)[1].condition.key()


def test_one_layer_bands_pick_the_layer_at_that_depth():
    from emosteer.evaluate.frontier import band_layers
    from emosteer.evaluate.frontier_methods import at_depth

    assert [band_layers(range(30), b) for b in at_depth(0.2, 0.4, 0.7)] == [[6], [12], [21]]
    names = {m.name for m in METHODS}
    assert {"written", "written_residual", "written_prompt", "prefill", "fewshot"} <= names


def test_repetition_is_the_share_of_repeated_trigrams_and_caps_the_choice():
    assert repeated_trigrams("the exam went well and I passed it") == 0.0
    assert repeated_trigrams("I am sad. I am sad. I am sad.") == pytest.approx(4 / 7)
    assert repeated_trigrams("too short") == 0.0
    looped = {"eps": 0.9, "ppl_ratio": 1.1, "topic": 0.95, "repetition": 0.4, "strength": 2}
    fine = {"eps": 0.5, "ppl_ratio": 1.1, "topic": 0.95, "repetition": 0.0, "strength": 1}
    assert not feasible(looped) and feasible(fine)
    assert choose([looped, fine]) is fine


def _dosed(max_dose: str | None = "0.5") -> EmotionVector:
    meta = {"model_id": "tiny-llama", "hidden_size": "64", "num_layers": "2", "site": "attn",
            "emotion": "anger", "site_norms": "10,20"}
    if max_dose is not None:
        meta["max_dose"] = max_dose
    return EmotionVector({0: torch.full((64,), 0.25), 1: torch.full((64,), 0.25)}, meta)


def test_the_relative_dose_is_the_largest_layer_against_its_norm():
    from emosteer.dose import relative_dose

    vector = _dosed()  # each layer is 2 long: 0.2 of layer 0's norm, 0.1 of layer 1's
    assert relative_dose(vector) == pytest.approx(0.2)
    assert relative_dose(vector, -2.0) == pytest.approx(0.4)
    assert relative_dose(EmotionVector({0: torch.ones(4)}, {"emotion": "x"})) is None


def test_steer_refuses_or_clamps_a_dose_past_max_dose():
    from emosteer.dose import check_dose
    from emosteer.errors import BadAlphaError

    model, vector = tiny_model("llama"), _dosed()
    assert check_dose(vector, 2.5) == 2.5  # 0.5: at the limit
    with pytest.raises(BadAlphaError, match=r"past 0.50.*alpha\| <= 2.50"):
        check_dose(vector, 3.0)
    assert check_dose(vector, -5.0, clamp=True) == pytest.approx(-2.5)
    assert check_dose(_dosed(None), 50.0) == 50.0  # no recorded limit: only MAX_ALPHA holds
    with pytest.raises(BadAlphaError):
        with steer(model, vector, alpha=3.0):
            pass
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        with steer(model, vector, alpha=30.0, clamp_dose=True):
            clamped = model(ids).logits
        with steer(model, vector, alpha=2.5):
            limit = model(ids).logits
    assert torch.allclose(clamped, limit, atol=1e-6)
    with pytest.raises(BadInputError, match="max_dose"):
        check_dose(_dosed("nan"), 1.0)


def test_the_extract_cli_takes_answers(extract_configs, capsys):
    from emosteer.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--out", "/nonexistent/never-written", "--answers", "written",
              "--filter", "none"])
    capsys.readouterr()
    assert extract_configs[-1].answers == "written"
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--out", "/nonexistent/never-written", "--answers", "dreamt"])
    assert stop.value.code == 2 and "answers" in capsys.readouterr().err


def test_a_mix_past_a_vectors_max_dose_is_refused_as_both_servers_parse_it():
    from emosteer.errors import BadAlphaError
    from emosteer.protocol import parse_emotion
    from emosteer.vectors import mix

    vectors = {"anger": _dosed(), "joy": _dosed(None).renamed("joy")}
    assert mix(vectors, {"anger": 2.5, "joy": 40.0}).meta["emotion"] == "2.5*anger + 40*joy"
    with pytest.raises(BadAlphaError, match="max_dose"):
        mix(vectors, {"anger": 3.0})
    with pytest.raises(BadAlphaError, match="max_dose"):
        parse_emotion({"anger": -3.0}, vectors)
    from emosteer.server.errors import APIError
    from emosteer.server.routes import _steering

    with pytest.raises(APIError) as refused:
        _steering({"anger": 3.0}, vectors)
    assert refused.value.status == 400 and "max_dose" in str(refused.value)


def test_the_runner_batches_attn_and_residual_rows_apart(tmp_path):
    from emosteer.evaluate.conditions import Condition, evaluation_queries
    from emosteer.evaluate.runner import EvalConfig, Runner

    model, tok = tiny_model("llama"), byte_tokenizer()
    meta = {"model_id": "tiny-llama", "hidden_size": "64", "num_layers": "2", "emotion": "joy"}
    attn = EmotionVector({0: torch.randn(64), 1: torch.randn(64)}, {**meta, "site": "attn"})
    res = EmotionVector({0: torch.randn(64), 1: torch.randn(64)}, {**meta, "site": "residual"})
    runner = Runner(model, tok, EvalConfig(limit=1, generation=GenerateConfig(
        max_new_tokens=3, batch_size=4)), tmp_path, progress=False)
    conditions = [Condition("a", 1.0, ("joy",), attn), Condition("r", 1.0, ("joy",), res),
                  Condition("unsteered", 0.0, ("joy",))]
    queries = evaluation_queries(1)[:2]
    runner.generate(conditions, queries)  # one batch of 4 would mix the sites: refused before
    assert all(len(runner.answers(c, queries)) == 2 for c in conditions)
