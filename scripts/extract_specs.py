"""Extract vectors for shipped emotion specs with the shipped recipe (frontier method
`filtered_ctx`: the paper's mean difference over the answers a judge confirms, the emotional
answer read under the neutral prompt), one emotion at a time, resumable.

    python scripts/extract_specs.py --out runs/spec20/vectors/filtered_ctx --limit 60

For emotions beyond the five the questions are the specs' generic questions and the filtering
judge is the zero-shot judge over all shipped specs (the trained judges know only five). An
emotion whose filter confirms fewer than --min-confirmed answers is extracted again without the
filter (every answer, the paper's plain mean difference) and details.json says so. Each
emotion's answers and the judge's label of each go to <out>/<emotion>.samples.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from emosteer.emotion_specs import load_specs
from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.errors import BadInputError
from emosteer.extraction.extract import ExtractConfig, extract
from emosteer.files import write_text
from emosteer.models import load_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/spec20/vectors/filtered_ctx"))
    parser.add_argument("--emotions", default="",
                        help="comma-separated (default: the shipped specs beyond the five)")
    parser.add_argument("--limit", type=int, default=60, help="questions per emotion")
    parser.add_argument("--min-confirmed", type=int, default=3)
    parser.add_argument("--model", default="default")
    args = parser.parse_args(argv)
    emotions = ([e for e in args.emotions.split(",") if e] or
                [e for e in load_specs() if e not in VECTOR_EMOTIONS])
    model, tokenizer = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    details_path = args.out / "details.json"
    details = json.loads(details_path.read_text()) if details_path.is_file() else {}
    for k, emotion in enumerate(emotions, 1):
        if (args.out / f"{emotion}.safetensors").is_file():
            continue
        print(f"[{k}/{len(emotions)}] {emotion}", flush=True)
        cfg = ExtractConfig(dataset="emotion_specs", emotions=(emotion,), limit=args.limit,
                            filter="none", context="neutral")
        start = time.perf_counter()
        plain = extract(model, tokenizer, cfg, progress=False)  # every answer
        try:  # the same answers, filtered
            result = extract(model, tokenizer, replace(cfg, filter="judge", judge="zero-shot"),
                             progress=False, generations=plain.generations)
        except BadInputError as err:  # the judge confirmed none
            print(f"  {err}", flush=True)
            result = None
        confirmed = 0 if result is None else \
            sum(s.get("judged_emotional") == emotion for s in result.samples)
        row = {"filter": "judge", "limit": args.limit, "confirmed": confirmed,
               "answered": plain.used[emotion]}
        if result is None or confirmed < args.min_confirmed:  # too few to average
            result = plain
            row["filter"] = "none (the judge confirmed too few)"
        row["seconds"] = round(time.perf_counter() - start, 1)
        write_text(args.out / f"{emotion}.samples.jsonl",
                   "".join(json.dumps(s) + "\n" for s in result.samples))
        result.vectors[emotion].save(args.out / f"{emotion}.safetensors")
        details[emotion] = row
        write_text(details_path, json.dumps(details, indent=1, default=str) + "\n")
        print(f"  {emotion}: confirmed {row['confirmed']} of {row['answered']}, "
              f"filter {row['filter']}, {row['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
