"""Fit the emotion meter for a model and its vectors, and write the meter JSON.

The layer band and the calibration are chosen on a validation share of emotion_corpus's
training part, then refitted on the whole training part; the held-out 20% is never read
(`emosteer.meter_fit`). About a minute for the bundled model on 2 cores.

    python scripts/fit_meter.py --vectors runs/meter-vectors
    python scripts/fit_meter.py --model Qwen/Qwen2.5-0.5B-Instruct --vectors vectors/ \
        --out meter.json

Default --out: src/emosteer/data/meter-<model name>.json, the file `load_meter` finds for that
model. The last stdout line is the selection as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emosteer.emotion_meter import SHIPPED
from emosteer.meter_fit import fit_meter
from emosteer.models import load_model, model_id
from emosteer.vectors import load_vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--vectors", required=True, help="folder of <emotion>.safetensors")
    parser.add_argument("--emotion", action="append", help="an emotion to read (repeatable; "
                        "default: every emotion among the vectors)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None,
                        help="training sentences per label (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    meter = fit_meter(model, tok, load_vectors(args.vectors), args.emotion, limit=args.limit,
                      batch_size=args.batch_size)
    out = args.out or SHIPPED / f"meter-{model_id(model).rsplit('/', 1)[-1].lower()}.json"
    meter.save(out)
    print(json.dumps({"out": str(out), "layers": list(meter.layers),
                      **meter.card["selection"]["chosen"]}))


if __name__ == "__main__":
    main()
