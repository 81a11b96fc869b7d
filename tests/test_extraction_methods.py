"""Extraction methods: the paper's mean unchanged, site norms, norm scale, bands, judge filter."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer import data
from emosteer.errors import BadInputError
from emosteer.extraction.capture import masked_means
from emosteer.extraction.extract import ExtractConfig, extract, norm_scaled
from emosteer.generation import GenerateConfig, chat_prompt, generate
from emosteer.hooks import hooked, untuple
from emosteer.models import site_modules

GEN = GenerateConfig(max_new_tokens=6, batch_size=2)
BASE = dict(emotions=("joy", "anger"), limit=3, generation=GEN)


def _paper_recipe(model, tok, emotions, limit, g):
    """The paper's mean difference, written from the public pieces: per emotion, the mean over
    queries of (emotional - neutral) response means at the attention output."""
    queries = data.load_queries("emotion_query", list(emotions), limit, g.seed)
    torch.manual_seed(g.seed)
    out = {}
    for emotion in emotions:
        mine = [q for q in queries if q.emotion == emotion]
        total, n = 0, 0
        for i in range(0, len(mine), g.batch_size):
            chunk = mine[i:i + g.batch_size]
            prompts = ([chat_prompt(tok, q.question, data.system_prompt(None)) for q in chunk]
                       + [chat_prompt(tok, q.question, data.system_prompt(emotion))
                          for q in chunk])
            b = generate(model, tok, prompts, g)
            means = masked_means(model, b.input_ids, b.attention_mask, b.response_mask, "attn")
            k = len(chunk)
            ok = (b.response_mask[:k].sum(-1) > 0) & (b.response_mask[k:].sum(-1) > 0)
            diffs = (means[k:] - means[:k])[ok]
            total, n = total + diffs.sum(0), n + diffs.shape[0]
        out[emotion] = total / n
    return out


def test_mean_diff_is_the_papers_recipe_bit_for_bit():
    model, tok = tiny_model("llama"), byte_tokenizer()
    result = extract(model, tok, ExtractConfig(**BASE), progress=False)
    expected = _paper_recipe(model, tok, ("joy", "anger"), 3, GEN)
    for emotion in ("joy", "anger"):
        got = result.vectors[emotion]
        assert got.meta["method"] == "mean_diff" and "scale" not in got.meta
        for layer in got.layers:
            assert torch.equal(got.directions[layer], expected[emotion][layer])


def test_reused_generations_give_the_same_vectors():
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = ExtractConfig(**BASE)
    first = extract(model, tok, cfg, progress=False)
    again = extract(model, tok, cfg, progress=False, generations=first.generations)
    assert all(first.vectors[e].directions[1].equal(again.vectors[e].directions[1])
               for e in first.vectors)
    other = ExtractConfig(**{**BASE, "limit": 2})
    with pytest.raises(BadInputError, match="other queries"):
        extract(model, tok, other, progress=False, generations=first.generations)


def test_site_norms_are_the_rms_norm_of_the_neutral_answers():
    model, tok = tiny_model("llama"), byte_tokenizer()
    result = extract(model, tok, ExtractConfig(**BASE), progress=False)
    squares, sums, tokens = torch.zeros(2), torch.zeros(2, 64), 0.0
    for gen in result.generations:  # by hand: every neutral response token, every layer
        n, b = len(gen.queries), gen.batch
        seen: dict[int, torch.Tensor] = {}

        def make(i, seen=seen):
            def hook(module, args, output):
                seen[i] = untuple(output).detach()
            return hook

        with hooked(model, {m: make(i) for i, m in enumerate(site_modules(model, "attn"))}), \
                torch.no_grad():
            model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                  position_ids=(b.attention_mask.cumsum(-1) - 1).clamp(min=0))
        mask = b.response_mask[:n].bool()
        for i in range(2):
            squares[i] += seen[i][:n][mask].pow(2).sum()
            sums[i] += seen[i][:n][mask].sum(0)
        tokens += float(mask.sum())
    expected = (squares / tokens).sqrt()
    assert result.site_norms == pytest.approx(expected.tolist(), rel=1e-4)
    spread = (squares / tokens - (sums / tokens).pow(2).sum(-1)).sqrt()  # RMS from the mean
    assert result.site_spreads == pytest.approx(spread.tolist(), rel=1e-3)
    assert all(s < n for s, n in zip(result.site_spreads, result.site_norms, strict=True))
    recorded = [float(x) for x in result.vectors["joy"].meta["site_norms"].split(",")]
    assert recorded == pytest.approx(result.site_norms, rel=1e-5)


def test_norm_scale_gives_each_layer_the_same_fraction_of_its_norm():
    model, tok = tiny_model("llama"), byte_tokenizer()
    raw = extract(model, tok, ExtractConfig(**BASE), progress=False)
    scaled = extract(model, tok, ExtractConfig(**BASE, scale="norm", norm_fraction=0.2),
                     progress=False, generations=raw.generations)
    vec = scaled.vectors["joy"]
    assert vec.meta["scale"] == "norm" and vec.meta["norm_fraction"] == "0.2"
    for layer in vec.layers:
        assert float(vec.directions[layer].norm()) == pytest.approx(
            0.2 * scaled.site_norms[layer], rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(vec.directions[layer],
                                                    raw.vectors["joy"].directions[layer], 0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)
    spread = extract(model, tok, ExtractConfig(**BASE, scale="spread"), progress=False,
                     generations=raw.generations).vectors["anger"]
    assert spread.meta["scale"] == "spread" and float(spread.directions[1].norm()) == \
        pytest.approx(0.1 * scaled.site_spreads[1], rel=1e-5)
    zero = norm_scaled(raw.vectors["joy"] * 0.0, scaled.site_norms, 0.2)
    assert all(float(v.norm()) == 0 for v in zero.directions.values())


def test_a_fixed_band_keeps_only_those_layers():
    model, tok = tiny_model("llama", num_hidden_layers=4), byte_tokenizer()
    raw = extract(model, tok, ExtractConfig(**BASE), progress=False)
    band = extract(model, tok, ExtractConfig(**BASE, band=(1, 3)), progress=False,
                   generations=raw.generations)
    vec = band.vectors["anger"]
    assert vec.layers == [1, 2] and vec.meta["band"] == "1-2"
    assert all(torch.equal(vec.directions[k], raw.vectors["anger"].directions[k]) for k in (1, 2))
    assert band.vectors["base"].layers == [0, 1, 2, 3]  # base stays whole
    with pytest.raises(BadInputError, match="ends past"):
        extract(model, tok, ExtractConfig(**BASE, band=(2, 9)), progress=False,
                generations=raw.generations)


def test_an_auto_band_is_the_best_window_of_the_scan():
    model, tok = tiny_model("llama", num_hidden_layers=4), byte_tokenizer()
    result = extract(model, tok, ExtractConfig(**BASE, band="auto", band_width=2),
                     progress=False)
    for emotion in ("joy", "anger"):
        scan = result.details[emotion]["scan"]
        assert len(scan) == 3  # windows 0-1, 1-2, 2-3
        best = max(scan, key=lambda r: r["score"])
        assert result.vectors[emotion].layers == list(range(best["start"], best["stop"]))


class LabelJudge:
    """A judge that reads answers by a rule: emotional rows of even queries are confirmed,
    and neutral rows of odd queries read as neutral."""

    spec, version = "rule", "1"

    def __init__(self, emotion: str):
        self.emotion = emotion

    def rate(self, questions, answers):
        n = len(answers) // 2
        labels = ["neutral" if i % 2 else "joy" for i in range(n)]  # neutral rows
        labels += [self.emotion if i % 2 == 0 else "sadness" for i in range(n)]
        return [SimpleNamespace(label=label) for label in labels]


def test_the_judge_filter_averages_only_confirmed_answers():
    model, tok = tiny_model("llama"), byte_tokenizer()
    g = GenerateConfig(max_new_tokens=6, batch_size=4)
    cfg = ExtractConfig(emotions=("joy",), limit=4, generation=g, filter="judge")
    result = extract(model, tok, cfg, progress=False, judge=LabelJudge("joy"))
    (gen,) = result.generations
    b = gen.batch
    means = masked_means(model, b.input_ids, b.attention_mask, b.response_mask, "attn")
    nonempty = (b.response_mask.sum(-1) > 0)
    ok = nonempty[:4] & nonempty[4:]
    emo = [i for i in (0, 2) if ok[i]]
    calm = [i for i in (1, 3) if ok[i]]
    expected = means[4:][emo].mean(0) - means[:4][calm].mean(0)
    vec = result.vectors["joy"]
    torch.testing.assert_close(vec.directions[1], expected[1])
    assert vec.meta["filter"] == "judge" and vec.meta["judge"] == "rule:1"
    assert vec.meta["n_queries"] == str(len(emo)) and vec.meta["n_neutral"] == str(len(calm))
    assert result.samples[0]["judged_emotional"] == "joy"
    with pytest.raises(BadInputError, match="confirmed 0"):
        extract(model, tok, cfg, progress=False, judge=LabelJudge("anger"),
                generations=result.generations)


def test_too_few_confirmed_answers_are_answered_again_up_to_rounds():
    model, tok = tiny_model("llama"), byte_tokenizer()
    g = GenerateConfig(max_new_tokens=6, batch_size=4)
    cfg = ExtractConfig(emotions=("joy",), limit=4, generation=g, filter="judge",
                        min_confirmed=3, rounds=3)
    result = extract(model, tok, cfg, progress=False, judge=LabelJudge("joy"))
    emotional, calm, confirmed = [], [], 0
    for gen in result.generations:  # the judge confirms rows 0 and 2 of every round
        assert confirmed < 3  # a round is answered only while fewer than 3 are confirmed
        b = gen.batch
        means = masked_means(model, b.input_ids, b.attention_mask, b.response_mask, "attn")
        ok = (b.response_mask[:4].sum(-1) > 0) & (b.response_mask[4:].sum(-1) > 0)
        emotional += [means[4 + i] for i in (0, 2) if ok[i]]
        calm += [means[i] for i in (1, 3) if ok[i]]
        confirmed = len(emotional)
    assert 2 <= len(result.generations) <= 3  # a round confirms at most 2
    assert confirmed >= 3 or len(result.generations) == 3
    texts = [(s["neutral"], s["emotional"]) for s in result.samples]
    assert len(texts) == 4 * len(result.generations) and len(set(texts)) > 4  # new samples
    expected = torch.stack(emotional).mean(0) - torch.stack(calm).mean(0)
    vec = result.vectors["joy"]
    torch.testing.assert_close(vec.directions[1], expected[1])
    assert vec.meta["n_queries"] == str(confirmed)
    assert vec.meta["n_answered"] == str(result.used["joy"])
    again = extract(model, tok, cfg, progress=False, judge=LabelJudge("joy"),
                    generations=result.generations)  # reused: no new answers, same vector
    torch.testing.assert_close(again.vectors["joy"].directions[1], vec.directions[1])
    assert again.used == result.used
    once = extract(model, tok, replace(cfg, rounds=1), progress=False, judge=LabelJudge("joy"),
                   generations=result.generations)
    assert len(once.samples) == 4  # one round read, though more were handed over


def test_bad_method_settings_are_refused():
    with pytest.raises(BadInputError, match="pca"):
        ExtractConfig(method="pca", filter="judge")
    with pytest.raises(BadInputError, match="band"):
        ExtractConfig(band=(3, 1))
    with pytest.raises(BadInputError, match="method"):
        ExtractConfig(method="bipo")  # type: ignore[arg-type]
    with pytest.raises(BadInputError):
        ExtractConfig(norm_fraction=0)
    with pytest.raises(BadInputError, match="filter='judge'"):
        ExtractConfig(rounds=2)  # answering again needs the judge that confirms
    with pytest.raises(BadInputError, match="rounds"):
        ExtractConfig(filter="judge", rounds=0)


def test_the_cli_sets_every_method_option(extract_configs, capsys):
    from emosteer.cli import main

    seen = extract_configs
    for args in (["--method", "trained", "--train-steps", "7", "--band", "8-17",
                  "--scale", "spread", "--norm-fraction", "0.2", "--filter", "judge",
                  "--min-confirmed", "60", "--rounds", "3"],
                 ["--band", "auto", "--band-width", "6"], ["--band", "all"]):
        with pytest.raises(SystemExit):
            main(["extract", "--out", "/nonexistent/never-written", *args])
    capsys.readouterr()
    first, auto, whole = seen
    assert (first.method, first.train.steps, first.band, first.scale, first.norm_fraction,
            first.filter, first.min_confirmed, first.rounds) == (
        "trained", 7, (8, 18), "spread", 0.2, "judge", 60, 3)
    assert (auto.band, auto.band_width) == ("auto", 6) and whole.band is None
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--out", "/nonexistent/never-written", "--band", "17-8"])
    assert stop.value.code == 2 and "first-last" in capsys.readouterr().err


def test_sev_extraction_asks_in_the_reply_request_and_reads_discovery_scenes_only():
    queries = data.extraction_queries("sev", ["anger", "joy"], 20)
    discovery = {f"{s.id}:{s.valence}" for s in data.load_sev("discovery")}
    test = {f"{s.id}:{s.valence}" for s in data.load_sev("test")}
    assert {q.id for q in queries} <= discovery and not {q.id for q in queries} & test
    assert [q.emotion for q in queries].count("anger") == 20
    user, system = data.elicitation("sev", queries[0].question, "anger")
    neutral, _ = data.elicitation("sev", queries[0].question, None)
    assert system is None and "furious" in user and "furious" not in neutral
    assert user.startswith(queries[0].question) and neutral.startswith(queries[0].question)
    model, tok = tiny_model("llama"), byte_tokenizer()
    result = extract(model, tok, ExtractConfig(**{**BASE, "dataset": "sev"}), progress=False)
    assert result.vectors["anger"].meta["dataset"] == "sev"
    assert {s["id"] for s in result.samples} <= discovery
    # different requests, so different vectors from the question dataset's
    other = extract(model, tok, ExtractConfig(**BASE), progress=False)
    assert not torch.equal(result.vectors["anger"].directions[0],
                           other.vectors["anger"].directions[0])


def test_extraction_refuses_a_dataset_it_cannot_elicit():
    with pytest.raises(BadInputError, match="emotion_query, sev"):
        ExtractConfig(dataset="emotion_query_plus")  # evaluation only
