"""Known-answer means: hand-made activations, padding, and the extraction arithmetic."""

from __future__ import annotations

import pytest
import torch
from conftest import byte_tokenizer, tiny_model

from emosteer.extraction.capture import masked_means
from emosteer.extraction.extract import ExtractConfig, _principal, _reread_under_neutral, extract
from emosteer.generation import Batch, GenerateConfig, encode
from emosteer.models import Architecture

ARCH = Architecture(layers="layers", attn_out="attn", mlp_down="mlp")


class Echo(torch.nn.Module):
    """A 'sublayer' whose output at a position is (token id * scale) in every dimension."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, ids):
        return ids.float()[..., None].expand(*ids.shape, 3) * self.scale  # (batch, pos, 3)


class Layer(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.attn = Echo(scale)


class HandMade(torch.nn.Module):
    """Two layers whose site outputs are known in advance: token id x1 and token id x10."""

    class config:
        model_type, hidden_size, name_or_path = "handmade", 3, "handmade"

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(1.0), Layer(10.0)])

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        for layer in self.layers:
            layer.attn(input_ids)


def test_masked_means_known_answer():
    ids = torch.tensor([[0, 0, 2, 4, 6], [1, 3, 5, 7, 9]])
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]])
    means = masked_means(HandMade(), ids, torch.ones_like(ids), mask, "attn", ARCH)
    assert means.shape == (2, 2, 3)
    assert torch.equal(means[0, 0], torch.full((3,), 5.0))  # mean of 4, 6
    assert torch.equal(means[1, 0], torch.full((3,), 5.0))  # mean of 3, 5, 7
    assert torch.equal(means[0, 1], torch.full((3,), 50.0))
    empty = masked_means(HandMade(), ids, torch.ones_like(ids), torch.zeros_like(ids), "attn",
                         ARCH)
    assert torch.equal(empty, torch.zeros(2, 2, 3))


def test_left_padding_never_enters_a_mean():
    """A row's means are the same alone and beside a longer row (left padding, masks, positions)."""
    model, tok = tiny_model("llama"), byte_tokenizer()
    texts = ["short one", "a much longer second prompt here"]
    batch = encode(tok, texts, "cpu")
    together = masked_means(model, batch["input_ids"], batch["attention_mask"],
                            batch["attention_mask"], "residual")
    alone = encode(tok, texts[:1], "cpu")
    single = masked_means(model, alone["input_ids"], alone["attention_mask"],
                          alone["attention_mask"], "residual")
    assert batch["attention_mask"][0, 0] == 0  # the short row really was padded
    torch.testing.assert_close(together[0], single[0], rtol=1e-5, atol=1e-5)


def test_principal_direction_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    coeff = 2.0 + torch.rand(50, generator=g)  # (queries,) all positive
    offsets = coeff[:, None, None] * u + 0.01 * torch.randn(50, 1, 16, generator=g)
    mean = offsets.mean(0)
    pc = _principal(offsets, mean)[0]
    assert torch.nn.functional.cosine_similarity(pc, u, dim=0) > 0.999
    assert float(pc.norm()) == pytest.approx(float(coeff.mean()), rel=0.01)
    flipped = _principal(-offsets, -mean)[0]  # the sign follows the mean
    assert torch.nn.functional.cosine_similarity(flipped, -u, dim=0) > 0.999


def test_reread_puts_the_neutral_prompt_under_the_emotional_response():
    ids = torch.tensor([[0, 1, 2, 7], [3, 4, 5, 8]])  # row 0 neutral, row 1 emotional
    att = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    resp = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 1]])
    out = _reread_under_neutral(Batch(ids, att, resp, prompt_len=3), n=1)
    assert out.input_ids.tolist() == [[0, 1, 2, 7], [0, 1, 2, 8]]
    assert out.attention_mask.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]


def test_extraction_is_mean_of_per_query_offsets_and_reproducible():
    model, tok = tiny_model("llama"), byte_tokenizer()
    cfg = ExtractConfig(emotions=("joy", "sadness"), limit=3,
                        generation=GenerateConfig(max_new_tokens=5, batch_size=2))
    first = extract(model, tok, cfg, progress=False)
    again = extract(model, tok, cfg, progress=False)
    assert first.vectors["joy"].equal(again.vectors["joy"])  # seeded sampling
    base = first.vectors["base"].directions[1]
    expected = (first.vectors["joy"].directions[1] + first.vectors["sadness"].directions[1]) / 2
    torch.testing.assert_close(base, expected)
    centered = extract(model, tok, ExtractConfig(**{**cfg.__dict__, "center": True}),
                       progress=False)
    torch.testing.assert_close(centered.vectors["joy"].directions[1],
                               first.vectors["joy"].directions[1] - base)
    assert first.used == {"joy": 3, "sadness": 3}
    assert len(first.samples) == 6 and {"neutral", "emotional"} <= set(first.samples[0])
    meta = first.vectors["joy"].meta
    assert meta["dataset"] == "emotion_query" and len(meta["dataset_sha256"]) == 64
    assert meta["method"] == "mean_diff" and meta["n_queries"] == "3"


def test_read_pairs_is_the_mean_last_token_difference_read_one_text_at_a_time():
    from emosteer.extraction.contrast import read_pairs
    from emosteer.models import decoder_layers

    model, tok = tiny_model("llama"), byte_tokenizer()
    joy, calm = "System: you are joyful. User: ", "System: you are calm. User: "
    pairs = [(joy + "I love this sunny day", calm + "It is a day"), ("great!", "fine."),
             (joy + "what a wonderful surprise it was", calm + "it was a surprise"),
             (joy + "tell me", calm + "tell me"), ("x", "y")]  # shared prefixes, read once

    def last_token_outputs(text):  # (layers, d), one unpadded text, hooks on the layers
        seen = []
        handles = [layer.register_forward_hook(
            lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out)[0, -1]))
            for layer in decoder_layers(model)]
        try:
            with torch.no_grad():
                model(**encode(tok, [text], "cpu"))
        finally:
            for h in handles:
                h.remove()
        return torch.stack(seen)

    manual = sum(last_token_outputs(p) - last_token_outputs(n) for p, n in pairs) / len(pairs)
    for batch_size in (1, 2, 3, 5):
        vector = read_pairs(model, tok, pairs, batch_size=batch_size, emotion="joy")
        assert vector.site == "residual" and vector.emotion == "joy"
        got = torch.stack([vector.directions[i] for i in vector.layers])
        torch.testing.assert_close(got, manual, rtol=1e-4, atol=1e-5)
