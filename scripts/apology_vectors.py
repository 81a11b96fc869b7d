"""The frontier folders of the apology row (issue 29): the shipped vectors as they are, and
projected off the apology direction (`emosteer.extraction.apology`).

    python scripts/apology_vectors.py --vectors runs/f29/vectors
    emosteer experiment frontier --vectors runs/f29/vectors --out runs/f29 \
        --method filtered_ctx_100_shipped --method filtered_ctx_100_shipped_noapology \
        --calibration-limit 10 --limit 5

Writes <vectors>/filtered_ctx_100_shipped/ (the package's five), .../_noapology/ (each
projected off the direction) and <vectors>/apology.json: per emotion and layer band, the cosine
of the vector with the apology direction, so the size of what was removed is on record.
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
