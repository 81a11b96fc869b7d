"""The optimiser on a tiny random model: the loss falls, seeded, metadata, no judge, hygiene."""

from __future__ import annotations

import pytest
import torch
from conftest import PAD, byte_tokenizer, tiny_model

from emosteer.errors import BadInputError
from emosteer.extraction.bands import best_band, scan_bands, steered_gain
from emosteer.extraction.extract import ExtractConfig, extract
from emosteer.extraction.train import (
    PreferencePair,
    TrainConfig,
    _Prefix,
    reference_logprobs,
    train_vector,
)
from emosteer.generation import GenerateConfig
from emosteer.hooks import hooked, retuple, untuple
from emosteer.models import model_shape, site_modules
from emosteer.vectors import EmotionVector

QUESTIONS = ["How was the trip?", "Did you like the film?", "How is work going?",
             "What did you cook today?"]
CHOSEN = ["Oh, it was wonderful, I loved it!", "Yes! What a joy it was!",
          "Great, I am so happy there!", "A lovely cake, such fun!"]
REJECTED = ["It was a trip.", "It was a film.", "Work is going.", "I cooked rice."]


def _pairs(tok) -> list[PreferencePair]:
    def ids(text: str) -> tuple[int, ...]:
        return tuple(tok(text, add_special_tokens=False)["input_ids"])

    return [PreferencePair(ids(f"System: be calm.\nUser: {q}\nAssistant:"), ids(" " + c),
                           ids(" " + r)) for q, c, r in zip(QUESTIONS, CHOSEN, REJECTED,
                                                              strict=True)]


def _zero(model, emotion: str = "joy") -> EmotionVector:
    layers = range(model.config.num_hidden_layers)
    meta = {**model_shape(model), "emotion": emotion, "site": "attn", "method": "mean_diff"}
    return EmotionVector({layer: torch.zeros(model.config.hidden_size) for layer in layers}, meta)


FAST = TrainConfig(steps=40, lr=0.1, max_answer_tokens=12, pairs_per_step=2, init="zero")


def test_the_loss_falls_and_the_margin_rises():
    model, tok = tiny_model("llama"), byte_tokenizer()
    result = train_vector(model, _pairs(tok), _zero(model), FAST, pad_id=PAD)
    first, last = result.losses[:5], result.losses[-5:]
    assert sum(last) / 5 < sum(first) / 5 - 0.05
    assert sum(result.margins[-5:]) > sum(result.margins[:5])
    assert any(float(v.norm()) > 0 for v in result.vector.directions.values())


def test_training_is_deterministic_by_seed():
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = TrainConfig(steps=6, lr=0.1, max_answer_tokens=8, pairs_per_step=1, init="zero")
    a = train_vector(model, _pairs(tok), _zero(model), cfg, pad_id=PAD).vector
    b = train_vector(model, _pairs(tok), _zero(model), cfg, pad_id=PAD).vector
    other = TrainConfig(**{**cfg.__dict__, "seed": 1})
    c = train_vector(model, _pairs(tok), _zero(model), other, pad_id=PAD).vector
    assert all(torch.equal(a.directions[k], b.directions[k]) for k in a.layers)
    assert not all(torch.equal(a.directions[k], c.directions[k]) for k in a.layers)


def test_the_file_carries_method_and_training_metadata(tmp_path):
    model, tok = tiny_model("llama"), byte_tokenizer()
    init = _zero(model).select([1])  # training keeps the layers it is given
    cfg = TrainConfig(steps=3, lr=0.05, kl_weight=0.5, max_answer_tokens=8, seed=7)
    vec = train_vector(model, _pairs(tok), init, cfg, pad_id=PAD).vector
    assert vec.layers == [1]
    loaded = EmotionVector.load(vec.save(tmp_path / "joy.safetensors"))
    meta = loaded.meta
    assert meta["method"] == "trained" and meta["train_objective"] == "bipo"
    assert (meta["train_steps"], meta["train_lr"], meta["train_kl_weight"],
            meta["train_seed"], meta["train_pairs"]) == ("3", "0.05", "0.5", "7", "4")
    assert len(meta["train_data_sha256"]) == 64
    assert float(meta["train_loss_end"]) > 0 and "train_kl_end" in meta
    assert meta["model_id"] == "tiny-llama" and meta["emotion"] == "joy"


def test_model_is_left_as_it_was():
    model, tok = tiny_model("llama"), byte_tokenizer()
    ids = torch.tensor([list(range(20))])
    before = model(input_ids=ids).logits
    model.lm_head.weight.requires_grad_(True)  # a flag of the caller's, kept
    train_vector(model, _pairs(tok), _zero(model), TrainConfig(steps=2, max_answer_tokens=4),
                 pad_id=PAD)
    assert torch.equal(model(input_ids=ids).logits, before)
    assert model.lm_head.weight.requires_grad and not model.training
    assert model.model.layers[0].self_attn.o_proj.weight.requires_grad  # restored, not frozen


def _manual_logprob(model, prompt, answer, hook_from=None, vector=None):
    """Mean log p(answer token) on one unpadded sequence, optionally adding vector[l] at the
    attention output of every layer from position hook_from on."""
    ids = torch.tensor([list(prompt) + list(answer)])
    hooks = {}
    if vector is not None:
        def make(v):
            def hook(module, args, output):
                hidden = untuple(output).clone()
                hidden[:, hook_from:] += v
                return retuple(output, hidden)
            return hook
        hooks = {m: make(vector.directions[i]) for i, m in enumerate(site_modules(model, "attn"))}
    with hooked(model, hooks), torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    picked = logp.gather(-1, targets[:, None])[:, 0][len(prompt) - 1:]
    return float(picked.mean())


def test_reference_logprobs_match_one_unpadded_sequence_at_a_time():
    model, tok = tiny_model("llama"), byte_tokenizer()
    pairs = _pairs(tok)
    ref = reference_logprobs(model, pairs, max_answer_tokens=100, pad_id=PAD, chunk=3)
    kept = [_Prefix.read(model, [p.prompt], PAD) for p in pairs]  # one prompt at a time
    torch.testing.assert_close(reference_logprobs(model, pairs, 100, PAD, prefixes=kept), ref,
                               atol=1e-4, rtol=0)
    for i, p in enumerate(pairs):  # batched, padded, prefix cached: the same numbers
        assert ref[i, 0].item() == pytest.approx(_manual_logprob(model, p.prompt, p.chosen),
                                                 abs=1e-4)
        assert ref[i, 1].item() == pytest.approx(_manual_logprob(model, p.prompt, p.rejected),
                                                 abs=1e-4)


def test_steered_gain_adds_from_the_last_prompt_token_on():
    model, tok = tiny_model("llama"), byte_tokenizer()
    pairs = _pairs(tok)[:2]
    torch.manual_seed(3)
    vec = EmotionVector({k: v + 0.3 * torch.randn(v.shape) for k, v in
                         _zero(model).directions.items()}, _zero(model).meta)
    gain, kl = steered_gain(model, pairs, vec, vec.layers, max_answer_tokens=100, pad_id=PAD)
    expected = 0.0
    for p in pairs:
        start = len(p.prompt) - 1
        steered = [_manual_logprob(model, p.prompt, a, start, vec) for a in (p.chosen, p.rejected)]
        plain = [_manual_logprob(model, p.prompt, a) for a in (p.chosen, p.rejected)]
        expected += ((steered[0] - plain[0]) - (steered[1] - plain[1])) / len(pairs)
    assert gain == pytest.approx(expected, abs=1e-4)
    assert kl > 0


def test_scan_scores_every_window_and_picks_the_best():
    model, tok = tiny_model("llama", num_hidden_layers=3), byte_tokenizer()
    torch.manual_seed(0)
    vec = EmotionVector({k: 0.5 * torch.randn(64) for k in range(3)}, _zero(model).meta)
    scan = scan_bands(model, _pairs(tok)[:2], vec, width=2, pad_id=PAD)
    assert [(r["start"], r["stop"]) for r in scan] == [(0, 2), (1, 3)]
    best = max(scan, key=lambda r: r["score"])
    assert best_band(scan) == (best["start"], best["stop"])
    with pytest.raises(BadInputError, match="band width"):
        scan_bands(model, _pairs(tok)[:2], vec, width=4, pad_id=PAD)


class RaisingJudge:
    spec, version = "raising", "0"

    def rate(self, questions, answers):
        raise AssertionError("a judge was called")


TINY = dict(emotions=("joy",), limit=3, generation=GenerateConfig(max_new_tokens=6, batch_size=3),
            train=TrainConfig(steps=3, max_answer_tokens=4))


def test_training_never_calls_the_judge():
    model, tok = tiny_model("llama"), byte_tokenizer()
    result = extract(model, tok, ExtractConfig(method="trained", band="auto", band_width=1,
                                               **TINY), progress=False, judge=RaisingJudge())
    assert result.vectors["joy"].meta["method"] == "trained"
    assert len(result.details["joy"]["train"]["losses"]) == 3
    with pytest.raises(AssertionError, match="a judge was called"):  # it is reachable
        extract(model, tok, ExtractConfig(method="trained", filter="judge", **TINY),
                progress=False, judge=RaisingJudge())


def test_bad_settings_are_refused():
    with pytest.raises(BadInputError):
        TrainConfig(steps=0)
    with pytest.raises(BadInputError):
        TrainConfig(lr=0)
    with pytest.raises(BadInputError):
        TrainConfig(init="random")  # type: ignore[arg-type]
    model = tiny_model("llama")
    with pytest.raises(BadInputError, match="at least one"):
        train_vector(model, [], _zero(model))
