"""What the experiments ask: evaluation questions and conditions (how each answer is made).

A Condition is one way of answering: alpha * vector added while generating, or a system
prompt, or neither. Its cache key names what is actually added (the scaled directions and the
site) and the system prompt, not how the row is labelled: alpha 2 of joy and a mix equal to
2 * joy share their answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from emosteer import data
from emosteer.data import Query
from emosteer.errors import BadInputError
from emosteer.evaluate.metrics import ANY
from emosteer.steering import Positions
from emosteer.vectors import EmotionVector, mix

DATASET = "emotion_query_plus"  # evaluation only: extraction never reads it


@dataclass(frozen=True)
class Condition:
    """One way of answering: alpha * vector added (steer_rows), or a system prompt, or neither.

    Args:
        variant: unsteered, raw, centered, prompt, base, mix, auto or auto-centered.
        alpha: the strength the vector is added with.
        targets: the emotions each answer is scored for.
        vector: the unscaled vector, or None.
        system: the system prompt, or None.
        label: how the row is named in tables.
        positions: "all" steers every position; "generated" only the newest of each forward
            step, so the prompt is read unsteered (`steer`).
        preserve_norm: norm-preserving addition (`steer`).

    Example:
        Condition("raw", 2.0, ("joy",), vectors["joy"], label="2")
    """

    variant: str
    alpha: float
    targets: tuple[str, ...]
    vector: EmotionVector | None = None
    system: str | None = None
    label: str = ""
    positions: Positions = "all"
    preserve_norm: bool = False  # rescale each steered position to its norm before the add

    def steering(self) -> EmotionVector | None:
        """The vector as added (alpha applied), or None when nothing is added."""
        if self.vector is None or self.alpha == 0:
            return None
        return self.vector * self.alpha

    def key(self) -> dict:
        """What names the answers in the cache: the added directions and the system prompt."""
        added = self.steering()
        key: dict[str, object] = {"vector": vector_digest(added), "system": self.system}
        if self.positions != "all" and added is not None:  # "all": the keys as before
            key["positions"] = self.positions
        if self.preserve_norm and added is not None:
            key["preserve_norm"] = True
        return key

    def describe(self) -> dict:
        """The condition as it is written into summary rows and generation records."""
        return {"variant": self.variant, "alpha": self.alpha, "label": self.label,
                "vector": self.vector.emotion if self.vector is not None else None,
                "system": self.system,
                **({"positions": self.positions} if self.positions != "all" else {}),
                **({"preserve_norm": True} if self.preserve_norm else {})}


def vector_digest(vector: EmotionVector | None) -> str | None:
    """Hash of the directions actually added (alpha applied) and where they are added.

    Args:
        vector: the scaled vector, or None (no steering).

    Example:
        vector_digest(joy * 2) == vector_digest(mix({"joy": joy}, {"joy": 2}))  # True
    """
    if vector is None:
        return None
    h = hashlib.sha256(vector.site.encode())
    for layer, direction in vector.directions.items():
        h.update(str(layer).encode())
        h.update(direction.numpy().tobytes())
    return h.hexdigest()[:20]


# --- questions ---------------------------------------------------------------------------------
def evaluation_queries(limit: int | None, seed: int = 0, share: float = 0.2,
                       categories: Sequence[str] | None = None) -> list[Query]:
    """A seeded sample of `limit` questions per category, never from the calibration split.

    Args:
        limit: questions per EQ+ category (5 emotions + neutral); None: all of them.
        seed: the sample's seed (and the split's).
        share: the part of EQ+ set aside for calibration.
        categories: the categories to sample (default: all, in dataset order).

    Example:
        evaluation_queries(5)  # 30 questions
    """
    return _sample(0, limit, seed, share, categories)


def calibration_queries(limit: int | None, seed: int = 0, share: float = 0.2,
                        categories: Sequence[str] | None = None) -> list[Query]:
    """A seeded sample from the calibration split: disjoint from evaluation_queries().

    Args:
        limit: questions per category; None: all of them.
        seed: the sample's seed (and the split's).
        share: the part of EQ+ set aside for calibration.
        categories: the categories to sample (default: all).

    Example:
        calibration_queries(4)  # for --alpha auto
    """
    return _sample(1, limit, seed, share, categories)


def _sample(part: int, limit: int | None, seed: int, share: float,
            categories: Sequence[str] | None) -> list[Query]:
    pool = data.split(data.load_queries(DATASET), share, seed)[part]
    return data.sample(pool, limit, seed, list(categories or data.emotions_of(DATASET)))


# --- conditions ---------------------------------------------------------------------------------
def centered(vectors: dict[str, EmotionVector],
             emotions: Sequence[str]) -> dict[str, EmotionVector]:
    """Each emotion minus EV_base (the saved base, else the mean of the given emotions).

    Args:
        vectors: emotion -> vector, optionally with "base".
        emotions: the emotions to centre.

    Example:
        centered(vectors, ["joy", "anger"])["joy"].emotion  # "joy-base"
    """
    base = vectors.get("base")
    if base is None:
        base = sum((vectors[e] for e in emotions[1:]), start=vectors[emotions[0]]) / len(emotions)
    return {e: (vectors[e] - base).renamed(f"{e}-base") for e in emotions}


def unsteered(targets: Sequence[str]) -> Condition:
    """No vector, no system prompt: the reference every experiment reports.

    Example:
        unsteered(["joy", "anger"])
    """
    return Condition("unsteered", 0.0, tuple(targets), label="0 (unsteered)")


def sweep_conditions(vectors: dict[str, EmotionVector], emotions: Sequence[str],
                     alphas: Sequence[float], variants: Sequence[str] = ("raw",),
                     prompting: bool = True) -> list[Condition]:
    """The alpha sweep: each emotion's vector (raw and/or centred) at each alpha; alpha 0 once.

    Args:
        vectors: emotion -> vector.
        emotions: the emotions swept.
        alphas: the strengths; 0 is the unsteered condition, added once.
        variants: "raw" (the paper) and/or "centered" (minus EV_base).
        prompting: add the system-prompt baseline.

    Example:
        sweep_conditions(vectors, ["joy"], [0, 1, 2])
    """
    missing = [e for e in emotions if e not in vectors]
    if missing:
        raise BadInputError(f"no vector for {', '.join(missing)}: extract it first "
                            f"(`emosteer extract --emotions {','.join(missing)}`)")
    conditions = [unsteered(emotions)]
    for variant in variants:
        if variant not in ("raw", "centered"):
            raise BadInputError(f"unknown vector variant {variant!r}: use raw or centered")
        chosen = vectors if variant == "raw" else centered(vectors, emotions)
        for emotion in emotions:
            for alpha in alphas:
                if alpha != 0:
                    conditions.append(Condition(variant, float(alpha), (emotion,),
                                                chosen[emotion], label=f"{alpha:g}"))
    if prompting:
        conditions.extend(prompt_conditions(emotions))
    return conditions


def prompt_conditions(emotions: Sequence[str]) -> list[Condition]:
    """The baseline: no vector, the emotion asked for in the system prompt.

    Example:
        prompt_conditions(["joy"])[0].system  # the prompt asking for joy
    """
    return [Condition("prompt", 0.0, (e,), system=data.system_prompt(e), label="prompt")
            for e in emotions]


def base_conditions(vectors: dict[str, EmotionVector], alphas: Sequence[float],
                    emotions: Sequence[str]) -> list[Condition]:
    """EV_base (mean of the emotions' vectors), scored for emotion at all and for each one.

    Args:
        vectors: must hold "base".
        alphas: the strengths (0: the unsteered condition).
        emotions: the emotions each answer is also scored for.

    Example:
        base_conditions(vectors, [0, 1, 2], ["joy", "anger"])
    """
    if "base" not in vectors:
        raise BadInputError("no base vector (base.safetensors): `emosteer extract` writes it")
    targets = (ANY, *emotions)
    return [unsteered(targets)] + [Condition("base", float(a), targets, vectors["base"],
                                             label=f"{a:g}") for a in alphas if a != 0]


def mix_conditions(vectors: dict[str, EmotionVector], first: str, second: str,
                   weights: Sequence[float]) -> list[Condition]:
    """w1 * first + w2 * second for every pair of weights: does the effect add up?

    Args:
        vectors: emotion -> vector.
        first: the first emotion.
        second: the second emotion.
        weights: the grid of weights tried for each.

    Example:
        mix_conditions(vectors, "joy", "sadness", [0, 1, 2])  # 9 conditions
    """
    for name in (first, second):
        if name not in vectors:
            raise BadInputError(f"no vector for {name!r}: available are {', '.join(vectors)}")
    conditions = []
    for w1 in weights:
        for w2 in weights:
            label = f"{first}={w1:g},{second}={w2:g}"
            if w1 == 0 and w2 == 0:
                conditions.append(replace(unsteered((first, second)), label=label))
                continue
            vec = mix(vectors, {first: w1, second: w2})
            conditions.append(Condition("mix", 1.0, (first, second), vec, label=label))
    return conditions
