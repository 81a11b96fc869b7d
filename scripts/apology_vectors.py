"""The frontier folders of the apology row (issue 29): the shipped vectors as they are, and
projected off the apology direction (`emosteer.extraction.apology`).

    python scripts/apology_vectors.py --vectors runs/f29/vectors
    emosteer experiment frontier --vectors runs/f29/vectors --out runs/f29 \
        --method filtered_ctx_100_shipped --method filtered_ctx_100_shipped_noapology \
        --calibration-limit 10 --limit 5

Writes <vectors>/filtered_ctx_100_shipped/ (the package's five), .../_noapology/ (each
projected off the direction) and <vectors>/apology.json: per emotion and layer band, the cosine
of the vector with the apology direction, so the size of what was removed is on record.

    python scripts/apology_vectors.py --openings runs/apology

prints, from a frontier run's answer cache, the share of answers that open with an apology per
method, emotion and strength (every answer the run generated: calibration and held out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.extraction.apology import apology_direction, without
from emosteer.files import write_text
from emosteer.models import load_model
from emosteer.vectors import load_vectors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, default=Path("runs/frontier/vectors"))
    parser.add_argument("--limit", type=int, default=60, help="written answers read")
    parser.add_argument("--openings", type=Path, help="a frontier run folder: print the share "
                        "of its answers that open with an apology, and stop")
    args = parser.parse_args(argv)
    if args.openings:
        return openings(args.openings)
    model, tok = load_model("default")
    shipped = {e: v for e, v in load_vectors("default").items() if e in VECTOR_EMOTIONS}
    sorry = apology_direction(model, tok, args.limit)
    sorry.save(args.vectors / "apology.safetensors")
    report = {}
    for emotion, vector in shipped.items():
        vector.save(args.vectors / "filtered_ctx_100_shipped" / f"{emotion}.safetensors")
        plain = without(vector, sorry)
        plain.save(args.vectors / "filtered_ctx_100_shipped_noapology" / f"{emotion}.safetensors")
        cos = [float(torch.nn.functional.cosine_similarity(
            vector.directions[i].float(), sorry.directions[i].float(), dim=0))
            for i in vector.layers]
        thirds = [cos[k * len(cos) // 3:(k + 1) * len(cos) // 3] for k in range(3)]
        report[emotion] = {"mean_cosine": round(sum(cos) / len(cos), 3),
                           "by_third": [round(sum(t) / len(t), 3) for t in thirds],
                           "removed_share": plain.meta["projected_cosine"]}
        print(emotion, report[emotion], flush=True)
    write_text(args.vectors / "apology.json", json.dumps(report, indent=1) + "\n")


def openings(run: Path) -> None:
    """Per (method, emotion, strength): answers, and the share opening with an apology."""
    counts: dict[tuple, list[int]] = {}
    for line in (run / "generations.jsonl").read_text().splitlines():
        record = json.loads(line)
        c = record["condition"]
        key = (c["variant"], c["vector"] or "-", c["alpha"])
        n = counts.setdefault(key, [0, 0])
        n[0] += 1
        n[1] += record["answer"].lower().lstrip().startswith(SORRY)
    for (variant, emotion, alpha), (n, sorry) in sorted(counts.items(), key=str):
        print(f"{variant:40s} {emotion:8s} {alpha:4g}  {n:4d} answers, {sorry / n:.2f} open "
              "with an apology")


SORRY = ("i'm sorry", "i am sorry", "sorry", "i apologi")


if __name__ == "__main__":
    main()
