"""Metrics registry (known answers), perplexity against a manual forward, topic calibration."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.errors import BadInputError
from emosteer.evaluate import metrics as M
from emosteer.evaluate.figures import additivity_gap
from emosteer.evaluate.store import JsonlStore


def judged(probs: dict, scores: dict | None = None) -> dict:
    full = {label: probs.get(label, 0.0) for label in
            ("joy", "anger", "sadness", "fear", "disgust", "surprise", "neutral")}
    return {"judge": {"probs": full, "scores": scores or {"joy": 0.0, "anger": 0.0}}}


def test_registry_names_directions_and_needs():
    assert list(M.METRICS)[:5] == ["ppl", "topic", "eps", "eas", "tec"]
    assert not M.METRICS["ppl"].higher_is_better
    assert all(M.METRICS[m].higher_is_better for m in ("topic", "eps", "eas", "tec"))
    assert {m.needs for m in M.get_metrics()} >= {"ppl", "topic", "judge"}
    with pytest.raises(BadInputError, match="unknown metric 'fluency'"):
        M.get_metrics(["eps", "fluency"])


def test_adding_a_metric_is_one_decorated_function():
    @M.metric("length_test", higher_is_better=False, needs="judge")
    def length_test(annotations, target):
        """Test metric."""
        return 1.0

    try:
        assert M.get_metrics(["length_test"])[0].description == "Test metric."
        with pytest.raises(ValueError, match="twice"):
            M.metric("length_test", higher_is_better=True, needs="judge")(length_test)
    finally:
        del M.METRICS["length_test"]


def test_eps_tec_eas_known_answers():
    answers = [judged({"anger": 0.6, "neutral": 0.4}, {"anger": 70.0, "joy": 10.0}),
               judged({"anger": 0.3, "neutral": 0.7}, {"anger": 20.0, "joy": 50.0}),
               judged({"joy": 0.9, "neutral": 0.1}, {"anger": 0.0, "joy": 90.0})]
    assert M.METRICS["eps"](answers, "anger") == pytest.approx(1 / 3)
    assert M.METRICS["tec"](answers, "anger") == pytest.approx((0.6 + 0.3 + 0.0) / 3)
    assert M.METRICS["eas"](answers, "anger") == pytest.approx(30.0)
    # "any": emotion at all (EV_base)
    assert M.METRICS["eps"](answers, M.ANY) == pytest.approx(2 / 3)
    assert M.METRICS["tec"](answers, M.ANY) == pytest.approx((0.6 + 0.3 + 0.9) / 3)
    assert M.METRICS["eas"](answers, M.ANY) == pytest.approx((70 + 50 + 90) / 3)


def test_ppl_is_a_geometric_mean_and_skips_empty_answers():
    answers = [{"ppl": {"nll": math.log(2) * 4, "tokens": 4}},  # ppl 2
               {"ppl": {"nll": math.log(8) * 2, "tokens": 2}},  # ppl 8
               {"ppl": {"nll": 0.0, "tokens": 0}}]  # empty answer: no perplexity
    assert M.METRICS["ppl"](answers, "joy") == pytest.approx(4.0)
    assert M.METRICS["topic"]([{"topic": 0.5}, {"topic": 1.0}, {}], "joy") == pytest.approx(0.75)
    assert M.METRICS["eps"]([{}], "joy") is None


def test_perplexity_equals_a_manual_forward_of_each_answer():
    from emosteer.evaluate.scorers import Perplexity
    from emosteer.generation import chat_prompt

    model, tok = tiny_model("llama"), byte_tokenizer()
    questions = ["Why is the sky blue?", "Hi", "Tell me a long story about a cat please"]
    answers = ["Because of scattering.", "Hello there, friend!", ""]
    scored = Perplexity(model, tok, batch_size=3).score(questions, answers)  # one padded batch
    assert scored[2] == {"nll": 0.0, "tokens": 0}
    for q, a, got in zip(questions[:2], answers[:2], scored[:2], strict=True):
        prompt = tok(chat_prompt(tok, q, None), add_special_tokens=False)["input_ids"]
        answer = tok(a, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        nll = -logp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]].sum()
        assert got["tokens"] == len(answer)
        assert got["nll"] == pytest.approx(float(nll), rel=1e-4)


def test_topic_score_is_calibrated_against_shuffled_pairs():
    from emosteer.evaluate.scorers import TopicSimilarity

    questions = ["How do I bake sourdough bread at home?",
                 "What should I pack for a week of hiking in the Alps?",
                 "How can I improve my chess openings?",
                 "Why did my tomato plants turn yellow?"]
    answers = ["Feed your starter, mix flour, water and salt, let it rise overnight, then bake.",
               "Bring layers, a rain jacket, sturdy boots, a map and plenty of water.",
               "Study a few main lines like the Italian game and review your losses.",
               "Yellow leaves often mean overwatering or a lack of nitrogen in the soil."]
    topic = TopicSimilarity()
    matched = topic.score(questions, answers)
    shuffled = topic.score(questions[1:] + questions[:1], answers)
    assert min(matched) > 0.9
    assert sum(matched) / 4 - sum(shuffled) / 4 > 0.3
    assert topic.score(questions[:1], [""]) == [0.0]


def test_additivity_gap_is_zero_for_additive_effects():
    additive = [[0.1 + 0.2 * i + 0.3 * j for j in range(3)] for i in range(3)]
    assert all(abs(v) < 1e-12 for row in additivity_gap(additive) for v in row)
    interacting = [[0.0, 0.2], [0.3, 0.1]]
    assert additivity_gap(interacting)[1][1] == pytest.approx(0.1 - 0.3 - 0.2)


def test_jsonl_store_resumes_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    store = JsonlStore(path, ("key", "scorer"))
    store.add([{"key": "a", "scorer": "s", "value": 1}, {"key": "b", "scorer": "s", "value": 2}])
    store.add([{"key": "a", "scorer": "s", "value": 3}])
    with path.open("a") as f:
        f.write('{"key": "c", "scorer"')  # a write cut by an interruption
    again = JsonlStore(path, ("key", "scorer"))
    assert len(again) == 2 and again.get("a", "s")["value"] == 3
    assert ("c", "s") not in again


def test_one_table_builder_aligns_and_counts_columns():
    from emosteer.tables import markdown_table

    table = markdown_table(["a", "b"], [[1, "x"], [2.5, None]], align=("left",))
    assert table.splitlines() == ["| a | b |", "|:---|---|", "| 1 | x |", "| 2.5 | None |"]


def test_report_writes_markdown_and_the_same_sections_as_one_html_page(tmp_path):
    from emosteer.evaluate.report import Section, escape, write_report
    from emosteer.plots import pyplot, save_figure

    fig, ax = pyplot().subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "figures" / "line.png")
    answer = "I <b>love</b> it | *really* `x`\nsecond line"
    files = write_report(tmp_path, "demo report", [
        Section("settings", "- model: `tiny`; **bold**"),
        Section("joy", "| vector | EPS ↑ |\n|---|---|\n| raw | 0.50 |", figures=(png,)),
        Section("sample answers", f"| answer |\n|---|\n| {escape(answer)} |", html_only=True)])
    md = files["markdown"].read_text()
    assert md.startswith("# demo report\n") and "## joy" in md and "| raw | 0.50 |" in md
    assert "![line](figures/line.png)" in md and "sample answers" not in md
    page = files["html"].read_text()
    assert "<code>tiny</code>" in page and "<strong>bold</strong>" in page
    assert "<td>raw</td>" in page and page.count("data:image/png;base64,") == 1
    # an answer is shown as written: no raw HTML, no emphasis, the pipe kept in its cell
    assert "<b>love</b>" not in page and "&lt;b&gt;love&lt;/b&gt;" in page
    assert "| *really* `x` second line</td>" in page
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_perplexity_is_one_function_for_metrics_and_compare():
    from emosteer.evaluate.compare import rows_perplexity
    from emosteer.evaluate.scorers import perplexity

    assert perplexity(math.log(2) * 4, 4) == pytest.approx(2.0) and perplexity(1.0, 0) is None
    rows = [{"nll": math.log(2) * 4, "tokens": 4}, {"nll": math.log(8) * 2, "tokens": 2}]
    assert rows_perplexity(rows) == pytest.approx(math.exp((math.log(16) + math.log(64)) / 6))
    assert math.isnan(rows_perplexity([{"nll": 0.0, "tokens": 0}]))
    assert M.METRICS["ppl"]([{"ppl": rows[0]}], "joy") == pytest.approx(2.0)
