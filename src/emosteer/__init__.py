"""emosteer: find, control and measure emotion inside language models."""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "emosteer.models",
    "Architecture": "emosteer.models",
    "ARCHITECTURES": "emosteer.models",
    "EmotionVector": "emosteer.vectors",
    "EMOTIONS": "emosteer.vectors",
    "mix": "emosteer.vectors",
    "load_vectors": "emosteer.vectors",
    "hooked": "emosteer.hooks",
    "steer": "emosteer.steering",
    "extract": "emosteer.extraction.extract",
    "ExtractConfig": "emosteer.extraction.extract",
    "GenerateConfig": "emosteer.generation",
    "generate_text": "emosteer.generation",
    "meter": "emosteer.emotion_meter.read",
    "metering": "emosteer.emotion_meter.read",
    "load_meter": "emosteer.emotion_meter.meter",
    "Meter": "emosteer.emotion_meter.meter",
    "EmosteerError": "emosteer.errors",
    "discover": "emosteer.circuits",
    "DiscoverConfig": "emosteer.circuits",
    "EmotionCircuit": "emosteer.circuits",
    "modulate": "emosteer.circuits",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Lazy exports: `import emosteer` stays fast (torch loads on first use)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emosteer' has no attribute {name!r}")
