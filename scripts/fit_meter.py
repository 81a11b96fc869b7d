"""Fit the emotion meter for a model and its vectors, and write the meter JSON.

The layer band and the calibration are chosen on a validation share of emotion_corpus's
training part, then refitted on the whole training part; the held-out 20% is never read
(`emosteer.emotion_meter.fit`). About 3 minutes for the bundled model on 2 quiet cores.

    python scripts/fit_meter.py --vectors default --cache runs/meter_cache.safetensors
    python scripts/fit_meter.py --model Qwen/Qwen2.5-0.5B-Instruct --vectors vectors/ \
        --out meter.json

Default --out: src/emosteer/data/meter-<model name>.json, the file `load_meter` finds for that
model; it names the vectors' folder (the shipped one for `--vectors default`). --cache keeps
the corpus projections (the slow part), so a refit with other choices takes seconds. The last
stdout line is the selection as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emosteer.data import dataset_info
from emosteer.emotion_meter.fit import (
    corpus_projections,
    emotion_names,
    fit_projections,
    unseen_judgements,
)
from emosteer.emotion_meter.meter import SHIPPED, provenance
from emosteer.models import load_model, model_id
from emosteer.vectors import SHIPPED as SHIPPED_VECTORS
from emosteer.vectors import load_vectors


def projections(model, tok, vectors, names, args) -> tuple[list[dict], list[torch.Tensor]]:
    """The corpus projections, from --cache when it was made from the same inputs."""
    from safetensors.torch import load_file, save_file

    from emosteer.emotion_meter.fit import training_rows

    key = json.dumps({"emotions": names, "limit": args.limit,
                      "corpus": dataset_info("emotion_corpus").sha256,
                      "vectors": [provenance(vectors[e], vectors[e].layers)["band_sha256"]
                                  for e in names]})
    cache = args.cache
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            same = (f.metadata() or {}).get("key") == key
        if same:
            d = load_file(str(cache))
            lengths = d["lengths"].tolist()
            return training_rows(args.limit, names), list(torch.split(d["proj"], lengths))
        print(f"{cache} was made from other inputs: reading the corpus again")
    rows, per_layer = corpus_projections(model, tok, vectors, names, args.limit,
                                         args.batch_size)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"proj": torch.cat(per_layer).contiguous(),
                   "lengths": torch.tensor([len(p) for p in per_layer])}, str(cache),
                  metadata={"key": key})
    return rows, per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--vectors", required=True, help="folder of <emotion>.safetensors, "
                        "or 'default' (the vectors shipped for the bundled model)")
    parser.add_argument("--emotion", action="append", help="an emotion to read (repeatable; "
                        "default: every emotion among the vectors)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vectors-out", type=Path, default=None,
                        help="copy the band's vectors here (default: the meter file names the "
                             "--vectors folder itself, or the shipped folder for 'default')")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the corpus projections here (safetensors), to refit fast")
    parser.add_argument("--limit", type=int, default=None,
                        help="training sentences per label (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    vectors = load_vectors(args.vectors)
    names = emotion_names(vectors, args.emotion)
    rows, per_layer = projections(model, tok, vectors, names, args)
    meter = fit_projections(vectors, names, rows, per_layer, limit=args.limit,
                            judged=unseen_judgements(rows))
    name = f"meter-{model_id(model).rsplit('/', 1)[-1].lower()}"
    out = args.out or SHIPPED / f"{name}.json"
    source = SHIPPED_VECTORS / "smollm2-135m-instruct" if args.vectors == "default" \
        else Path(args.vectors)
    meter.save(out, args.vectors_out or source, write_vectors=args.vectors_out is not None)
    print(json.dumps({"out": str(out), **meter.card["selection"]["chosen"],
                      "best_per_kind": meter.card["selection"]["best_per_kind"]}))


if __name__ == "__main__":
    main()
