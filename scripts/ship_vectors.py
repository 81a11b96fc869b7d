"""Ship one frontier method's vectors for the bundled model, calibrated: alpha 1 = its chosen
setting on the calibration split.

    python scripts/ship_vectors.py --frontier runs/frontier --method trained

Reads the frontier's calibration.jsonl (the chosen setting per emotion: strength, band) and
summary.jsonl (the held-out row of each chosen setting, by both judges), takes
runs/frontier/vectors/<folder>/<emotion>.safetensors, keeps the chosen band's layers, folds the
chosen strength in (EmotionVector.calibrated) and writes
src/emosteer/data/vectors/smollm2-135m-instruct/<emotion>.safetensors plus provenance.json.

An emotion whose chosen setting is strength 0 (no setting of the method beat unsteered within
the bounds) ships at the method's smallest strength instead, and provenance.json says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emosteer.evaluate.frontier import METHODS
from emosteer.files import write_text
from emosteer.vectors import DEFAULT_VECTORS, EmotionVector

ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def layers_of(band: str, vector: EmotionVector) -> list[int]:
    """The layers of a frontier band name ("all", "-" or "layers a-b")."""
    if not band.startswith("layers "):
        return vector.layers
    first, last = (int(x) for x in band.removeprefix("layers ").split("-"))
    return [i for i in vector.layers if first <= i <= last]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontier", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_VECTORS)
    args = parser.parse_args(argv)
    spec = next(m for m in METHODS if m.name == args.method)
    chosen = {r["emotion"]: r for r in read_jsonl(args.frontier / "calibration.jsonl")
              if r["method"] == args.method and r.get("chosen")}
    held = {r["emotion"]: r for r in read_jsonl(args.frontier / "summary.jsonl")
            if r["method"] == args.method}
    record: dict = {"method": args.method, "frontier": str(args.frontier),
                    "rule": "highest mean EPS of judges embedded-a and embedded-b with PPL <= "
                            "1.3x unsteered and topic >= 0.9, on the calibration split of "
                            "emotion_query_plus", "emotions": {}}
    for emotion, row in chosen.items():
        vector = EmotionVector.load(args.frontier / "vectors" / spec.source /
                                    f"{emotion}.safetensors")
        strength, note = row["strength"], "chosen on the calibration split"
        if strength == 0:
            strength = min(spec.strengths)
            note = ("no setting beat unsteered within the bounds on the calibration split: "
                    "shipped at the method's smallest strength")
        vector = vector.select(layers_of(row["band"], vector)).calibrated(
            strength, method=args.method, band=row["band"], calibration=note)
        vector.save(args.out / f"{emotion}.safetensors")
        record["emotions"][emotion] = {
            "strength": strength, "band": row["band"], "note": note,
            "calibration": {k: row.get(k) for k in ("eps", "eps_se", "ppl_ratio", "topic")},
            "held_out": {k: v for k, v in held.get(emotion, {}).items()
                         if k.startswith(("eps", "tec", "ppl", "topic", "n"))}}
        print(f"{emotion}: strength {strength:g}, {row['band']} -> {args.out}")
    write_text(args.out / "provenance.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
