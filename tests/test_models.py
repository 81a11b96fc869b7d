"""Every family in the architecture table extracts and steers on a tiny random model."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, byte_tokenizer, tiny_model

import emosteer
from emosteer.errors import ModelLoadError, UnknownArchitectureError
from emosteer.extraction.extract import ExtractConfig, extract
from emosteer.generation import Batch, GenerateConfig, decode_responses
from emosteer.models import ARCHITECTURES, Architecture, load_model, site_modules

TINY_RUN = ExtractConfig(emotions=("joy", "anger"), limit=2,
                         generation=GenerateConfig(max_new_tokens=4, batch_size=2))


def test_table_and_tests_cover_the_same_families():
    assert set(TINY) == set(ARCHITECTURES)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_family_extracts_and_steers(model_type):
    model, tok = tiny_model(model_type), byte_tokenizer()
    result = extract(model, tok, TINY_RUN, progress=False)
    joy = result.vectors["joy"]
    assert joy.layers == [0, 1] and joy.hidden_size == model.config.hidden_size
    assert joy.meta["architecture"] == model_type and joy.meta["site"] == "attn"
    assert all(torch.isfinite(v).all() for v in joy.directions.values())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = model(ids).logits
        with emosteer.steer(model, joy * 50.0, alpha=1.0):  # random models: a big push
            steered = model(ids).logits
        after = model(ids).logits
    assert not torch.allclose(base, steered)
    assert torch.equal(base, after)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_residual_site_reads_decoder_layers(model_type):
    model, tok = tiny_model(model_type), byte_tokenizer()
    cfg = ExtractConfig(**{**TINY_RUN.__dict__, "site": "residual"})
    vec = extract(model, tok, cfg, progress=False).vectors["anger"]
    assert vec.site == "residual" and vec.layers == [0, 1]


def test_unknown_architecture_lists_known_and_override_works():
    model, tok = tiny_model("llama"), byte_tokenizer()
    model.config.model_type = "mystery"
    with pytest.raises(UnknownArchitectureError, match="known: .*llama.*arch="):
        site_modules(model, "attn")
    arch = Architecture(layers="model.layers", attn_out="self_attn.o_proj",
                        mlp_down="mlp.down_proj")
    vec = extract(model, tok, TINY_RUN, arch=arch, progress=False).vectors["joy"]
    with emosteer.steer(model, vec, 1.0, arch=arch):
        model(torch.tensor([[1, 2]]))


def test_load_model_from_folder_and_missing_paths(tmp_path):
    model, tok = tiny_model("qwen2"), byte_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tok = load_model(str(tmp_path / "tiny"))
    assert loaded.emosteer_id == "tiny" and loaded_tok.padding_side == "left"
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_decode_drops_a_character_cut_in_half():
    tok = byte_tokenizer()
    prompt = tok.encode("Q:", add_special_tokens=False)
    heart = tok.encode("ok \U0001F49A", add_special_tokens=False)  # the emoji is 4 byte tokens
    rows = [prompt + heart, prompt + heart[:-2]]  # whole, and cut inside the emoji
    ids = torch.tensor([r + [tok.pad_token_id] * (len(rows[0]) - len(r)) for r in rows])
    attention = (ids != tok.pad_token_id).long()
    response = attention.clone()
    response[:, :len(prompt)] = 0
    texts = decode_responses(tok, Batch(ids, attention, response, len(prompt)))
    assert texts == ["ok \U0001F49A", "ok"]
