"""Tiny random models built from configs (never downloaded) and a byte-level tokenizer."""

from __future__ import annotations

import pytest
import torch

PAD, EOS = 256, 257
VOCAB = 260
WIDTH = 64

# model_type -> config overrides; every family of emosteer.models.ARCHITECTURES
TINY: dict[str, dict] = {
    "llama": {"num_key_value_heads": 2},  # GQA: 4 query heads, 2 kv heads
    "mistral": {"num_key_value_heads": 2, "sliding_window": 64},
    "qwen2": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 16},
    "gemma": {"num_key_value_heads": 1, "head_dim": 16},
    "gemma2": {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 64},
    "gemma3_text": {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 64},
    "phi3": {"num_key_value_heads": 4},
    "phi": {},
    "gpt2": {"n_embd": WIDTH, "n_layer": 2, "n_head": 4, "n_positions": 1024},
    "gpt_neox": {},
    "falcon": {"new_decoder_architecture": False, "multi_query": True},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": WIDTH, "num_attention_heads": 4},
    "mixtral": {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
}


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    common = {"vocab_size": VOCAB, "hidden_size": WIDTH, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 1024,
              "pad_token_id": PAD, "bos_token_id": EOS, "eos_token_id": EOS,
              "tie_word_embeddings": False}
    config = AutoConfig.for_model(model_type, **{**common, **TINY[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.emosteer_id = f"tiny-{model_type}"
    return model


def byte_tokenizer(chat_template: str | None = None):
    """A byte-level tokenizer with 256 byte tokens, <pad> and <eos>: offline and tiny."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab.update({"<pad>": PAD, "<eos>": EOS})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left")
    fast.add_special_tokens({"pad_token": "<pad>", "eos_token": "<eos>"})
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def extract_configs(monkeypatch):
    """`emosteer extract` stops once its ExtractConfig is built; the configs land in the list."""
    from emosteer.cli import vectors
    from emosteer.errors import EmosteerError
    from emosteer.extraction import extract as extraction

    class Captured(EmosteerError):
        """Stops a command once its config is built."""

    seen = []

    def capture(model, tok, cfg, *a, **k):
        seen.append(cfg)
        raise Captured("captured")

    monkeypatch.setattr(vectors, "load", lambda spec: (None, None))
    monkeypatch.setattr(extraction, "extract", capture)
    return seen
