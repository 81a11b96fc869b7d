"""Pilot: each emotion's vector without the part it shares with the other four.

    python scripts/pilot_distinct.py runs/distinct [--seed 1] [--with-base]

The shipped vectors share a lot across emotions: layer by layer, disgust's direction has a
cosine of 0.56-0.72 with fear's, and anger's up to 0.48 with sadness's. Steering disgust then
spends much of its fluency budget on what disgust has in common with fear. Two transforms of
the shipped `filtered_ctx_100` vectors (their calibrated strength taken out first, so strength
1 is the extracted vector), per layer, each rescaled to the original vector's norm there so a
strength costs about the same:

- `distinct`: the vector minus the mean of the other four emotions' vectors (one against
  the rest);
- `distinct_orth`: the vector minus its projection onto the span of the other four.

Nothing is generated to make them (seconds). They then go through the frontier's rule on the
questions and seed given (calibration chooses, held-out reports). With --with-base the
uncalibrated shipped vectors run too (`filtered_ctx_100`), for a side-by-side in one run.
Results and the verdict: docs/frontier.md, "Vectors without the shared part".
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.evaluate import frontier as F
from emosteer.models import load_model
from emosteer.vectors import EmotionVector, shipped_vectors

GRID = (0.5, 0.75, 1.0, 1.5)  # filtered_ctx_100's grid in frontier.METHODS


def uncalibrated(vectors: dict[str, EmotionVector]) -> dict[str, EmotionVector]:
    """The vectors as extracted: the calibrated strength divided back out."""
    return {e: EmotionVector({layer: d / float(v.meta.get("calibrated_strength", 1.0))
                              for layer, d in v.directions.items()},
                             {k: x for k, x in v.meta.items() if k != "calibrated_strength"})
            for e, v in vectors.items()}


def without_shared(vectors: dict[str, EmotionVector], how: str) -> dict[str, EmotionVector]:
    """Per layer, each vector less the mean of the others ("mean") or less its projection
    onto their span ("span"), rescaled to the vector's own norm at that layer."""
    out = {}
    for e, v in vectors.items():
        others = [o for n, o in vectors.items() if n != e]
        directions = {}
        for layer, d in v.directions.items():
            rest = torch.stack([o.directions[layer].float() for o in others])  # (4, d)
            if how == "mean":
                kept = d.float() - rest.mean(0)
            else:
                basis, _ = torch.linalg.qr(rest.T)  # (d, 4), orthonormal columns
                kept = d.float() - basis @ (basis.T @ d.float())
            directions[layer] = kept * (d.float().norm() / kept.norm())
        out[e] = EmotionVector(directions, {**v.meta, "method": f"distinct-{how}",
                                            "distinct_from": "filtered_ctx_100, shipped"})
    return out


def save(vectors: dict[str, EmotionVector], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for e, v in vectors.items():
        v.save(folder / f"{e}.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calibration-limit", type=int, default=4)
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--with-base", action="store_true")
    args = parser.parse_args()

    base = uncalibrated({e: shipped_vectors()[e] for e in VECTOR_EMOTIONS})
    vectors_dir = args.out / "vectors"
    save(base, vectors_dir / "filtered_ctx_100")
    save(without_shared(base, "mean"), vectors_dir / "distinct")
    save(without_shared(base, "span"), vectors_dir / "distinct_orth")
    methods = ((F.Method("filtered_ctx_100", GRID, extract=None),) if args.with_base else ()) + (
        F.Method("distinct", GRID, extract=None), F.Method("distinct_orth", GRID, extract=None))
    cfg = F.FrontierConfig(methods=methods, calibration_limit=args.calibration_limit,
                           limit=args.limit)
    model, tok = load_model("default")
    generation = replace(F.eval_config(cfg).generation, seed=args.seed)
    result = F.run(model, tok, vectors_dir, args.out, cfg, generation=generation,
                   seed=args.seed)
    print(result.files["markdown"])


if __name__ == "__main__":
    main()
