"""The frontier's extraction half: one folder of vectors per method, made from one set of
generations.

    <vectors_dir>/<method>/<emotion>.safetensors   (and base.safetensors, details.json)

Each method's vectors come from `emosteer.extract` with that method's ExtractConfig changes
(Method.extract). The first method's generations (every emotion_query question answered under
the neutral and the emotion prompt) are reused by the others, so every method is built from
the same answers. Emotions beyond the five are extracted from the emotion specs' questions
(base dataset "emotion_specs"), a judge filter then reads them with the zero-shot judge. A
folder that already holds every emotion is left as it is: a rerun only
builds what is missing. The evaluation half (`frontier.frontier`) only reads the folders, so
the two halves can run separately, and vectors made another way can be evaluated by putting
them in a folder named after a method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from emosteer.files import write_text
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.evaluate.frontier_methods import Method
    from emosteer.extraction.extract import ExtractConfig, Generated


def load_method_vectors(folder: str | Path, emotions: Sequence[str]
                        ) -> dict[str, EmotionVector] | None:
    """The method's vector per emotion from `folder`/<emotion>.safetensors; None if any is
    missing (the frontier then skips the method and its report says so).

    Args:
        folder: one method's folder.
        emotions: the emotions needed.

    Example:
        load_method_vectors("runs/frontier/vectors/mean_diff", ["joy", "anger"])
    """
    paths = {e: Path(folder) / f"{e}.safetensors" for e in emotions}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {e: EmotionVector.load(p) for e, p in paths.items()}


def build_vectors(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  methods: Sequence[Method], vectors_dir: str | Path,
                  base: ExtractConfig | None = None, progress: bool = True,
                  generations: Sequence[Generated] | None = None) -> dict[str, Path]:
    """Extract every method's vectors into `vectors_dir`/<method>/, skipping complete folders.

    Args:
        model: the model the vectors are for.
        tokenizer: its tokenizer.
        methods: the methods; those with extract None (prompting, or a method reading another
            method's folder) are skipped.
        vectors_dir: one folder per method goes here.
        base: the settings every method starts from (default ExtractConfig(limit=40), the
            paper's recipe on 40 questions per emotion, as `make demo` extracts).
        progress: show progress bars.
        generations: an earlier extraction's generations with the same settings (reused
            instead of generating again).

    Example:
        build_vectors(model, tok, METHODS, "runs/frontier/vectors")
    """
    from emosteer.extraction.extract import ExtractConfig, extract

    base = base or ExtractConfig(limit=40)
    written: dict[str, Path] = {}
    made = {_answers_key(base): generations} if generations else {}
    for method in methods:
        if method.extract is None:
            continue
        folder = Path(vectors_dir) / method.source
        if load_method_vectors(folder, base.emotions) is not None:
            continue
        cfg = replace(base, **dict(method.extract))
        if cfg.dataset == "emotion_specs" and cfg.filter == "judge" \
                and not cfg.judge.startswith("zero-shot"):  # the trained judges know five
            cfg = replace(cfg, judge="zero-shot")
        key = _answers_key(cfg)  # methods that ask the same questions share one set of answers
        result = extract(model, tokenizer, cfg, progress=progress, generations=made.get(key))
        made.setdefault(key, result.generations)
        for name, vector in result.vectors.items():
            vector.save(folder / f"{name}.safetensors")
        write_text(folder / "details.json", json.dumps(
            {"method": method.name, "extract": dict(method.extract), "seconds": result.seconds,
             "used": result.used, "details": result.details}, indent=1, default=str) + "\n")
        written[method.name] = folder
    return written


def _answers_key(cfg: ExtractConfig) -> tuple:
    """What decides an extraction's answers: its queries, where the answers come from and how
    they were generated."""
    return cfg.dataset, cfg.emotions, cfg.limit, cfg.answers, cfg.generation
