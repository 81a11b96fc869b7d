"""Pilot: which extraction method steers the bundled model best, measured on calibration questions.

    python scripts/pilot_methods.py vectors [--limit 40]   # generate once, then every method
    python scripts/pilot_methods.py eval [--questions 4]   # answer, score, write the table
    python scripts/pilot_methods.py train-curves           # loss / margin / KL per emotion

Extraction reads emotion_query only. The generations are made once (the paper's settings,
seed 0) and cached in runs/pilot/generations.safetensors, so every method is built from the
same answers. Scoring uses a calibration sample of emotion_query_plus (never its held-out
evaluation part): `questions` per category (5 emotions + neutral), every answer scored for
the steered emotion, with the embedded judge (EPS = share of answers labelled the target;
TEC = mean probability of the target), perplexity under the unsteered model (PPL ratio to
the unsteered answers of the same questions) and topic. Answers and scores are cached by
the experiments' Runner in runs/pilot/eval, so a rerun only computes what is new.
Standard errors: EPS and TEC from the per-answer values; the PPL ratio from the per-question
differences of log perplexity (the same questions unsteered and steered).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from emosteer import data
from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.extraction import ExtractConfig, Generated, extract
from emosteer.files import write_text
from emosteer.generation import Batch
from emosteer.vectors import EmotionVector, write_safetensors

OUT = Path("runs/pilot")
JUDGES = ("embedded", "embedded-b")  # the shipped judge; judge B (its other training half)

# name -> (ExtractConfig changes, strengths tried). Strengths are alphas on the vector as
# extracted; for the scaled ones alpha 1 adds norm_fraction of each layer's site norm (spread).
# Centring, scaling and fixed bands only post-process the mean difference, so they are made
# from the mean_diff files (the same arithmetic as extract's; DERIVED) instead of re-reading
# every answer, which costs 8 minutes on the shared 2 cores.
METHODS: dict[str, tuple[dict, tuple[float, ...]]] = {
    "mean_diff": ({}, (0.75, 1.0)),  # docs/results.md: PPL x1.35 at alpha 1 already
    "centered": ({"center": True}, (2.0, 3.0)),  # x1.27 at 2 in docs/results.md
    "norm": ({"scale": "norm", "norm_fraction": 0.1}, (0.75, 1.0)),
    "spread": ({"scale": "spread", "norm_fraction": 0.1}, (0.75, 1.0)),
    "centered_spread": ({"center": True, "scale": "spread", "norm_fraction": 0.1},
                        (1.0, 1.5)),
    "band_auto": ({"band": "auto", "band_width": 10}, (1.5, 2.5)),
    "filtered": ({"filter": "judge", "judge": "embedded-a"}, (0.75, 1.0)),  # B scores
    "trained": ({"method": "trained"}, (0.5, 1.0)),
}
DERIVED = {"centered", "norm", "spread", "centered_spread"}


def _site_stat(vector: EmotionVector, key: str) -> str:
    """A site statistic from the vector's metadata, else from the norm method's files (the
    first mean_diff files were written before site_spreads was recorded; same answers)."""
    if key in vector.meta:
        return vector.meta[key]
    return EmotionVector.load(OUT / "vectors" / "norm" / "joy.safetensors").meta[key]


def derive(changes: dict) -> dict[str, EmotionVector]:
    """A post-processed method from the mean_diff files: centre, then scale."""
    from emosteer.extraction import norm_scaled

    raw = {e: EmotionVector.load(OUT / "vectors" / "mean_diff" / f"{e}.safetensors")
           for e in (*VECTOR_EMOTIONS, "base")}
    out = {}
    for e in VECTOR_EMOTIONS:
        v = raw[e]
        if changes.get("center"):
            v = (v - raw["base"]).renamed(e)
            v = EmotionVector(v.directions, {**v.meta, "centered": "true"})
        scale = changes.get("scale", "raw")
        if scale != "raw":
            stats = [float(x) for x in _site_stat(v, f"site_{scale}s").split(",")]
            v = norm_scaled(v, stats, changes["norm_fraction"], scale)
        out[e] = v
    return out


def save_generations(path: Path, gens: list[Generated]) -> None:
    tensors, index = {}, []
    for i, g in enumerate(gens):
        for name in ("input_ids", "attention_mask", "response_mask"):
            tensors[f"{i}.{name}"] = getattr(g.batch, name).cpu()
        index.append({"emotion": g.emotion, "queries": [q.id for q in g.queries],
                      "prompt_len": g.batch.prompt_len})
    write_safetensors(path, tensors, {"index": json.dumps(index)})


def load_generations(path: Path) -> list[Generated]:
    from emosteer.vectors import read_safetensors

    meta, tensors = read_safetensors(path, "generations", "scripts/pilot_methods.py vectors")
    by_id = {q.id: q for q in data.load_queries("emotion_query")}
    out = []
    for i, row in enumerate(json.loads(meta["index"])):
        batch = Batch(tensors[f"{i}.input_ids"], tensors[f"{i}.attention_mask"],
                      tensors[f"{i}.response_mask"], row["prompt_len"])
        out.append(Generated(row["emotion"], [by_id[q] for q in row["queries"]], batch))
    return out


def build_vectors(model, tok, limit: int, only: list[str] | None) -> None:
    base = ExtractConfig(limit=limit)
    cache = OUT / "generations.safetensors"
    gens = load_generations(cache) if cache.is_file() else None
    for name, (changes, _) in METHODS.items():
        folder = OUT / "vectors" / name
        if (only and name not in only) or (folder / "joy.safetensors").is_file():
            continue
        if name in DERIVED:
            for emotion, vec in derive(changes).items():
                vec.save(folder / f"{emotion}.safetensors")
            continue
        cfg = replace(base, **changes)
        result = extract(model, tok, cfg, progress=True, generations=gens)
        if gens is None:
            gens = result.generations
            save_generations(cache, gens)
        for emotion, vec in result.vectors.items():
            vec.save(folder / f"{emotion}.safetensors")
        details = {e: {k: v for k, v in d.items()} for e, d in result.details.items()}
        write_text(folder / "details.json", json.dumps(
            {"seconds": result.seconds, "site_norms": result.site_norms, "details": details,
             "used": result.used}, indent=1))
        print(f"{name}: {result.seconds:.0f} s", flush=True)


def load_method(name: str) -> dict[str, EmotionVector]:
    folder = OUT / "vectors" / name
    return {e: EmotionVector.load(folder / f"{e}.safetensors") for e in VECTOR_EMOTIONS}


def evaluate(model, tok, questions: int, only: list[str] | None) -> list[dict]:
    from emosteer.evaluate.conditions import (
        Condition,
        calibration_queries,
        prompt_conditions,
        unsteered,
    )
    from emosteer.evaluate.measure import JudgesRunner, log_ppls, measure
    from emosteer.evaluate.runner import EvalConfig

    cfg = EvalConfig(limit=questions, judge=JUDGES[0], metrics=("ppl", "topic", "eps", "tec"))
    runner = JudgesRunner(model, tok, cfg, OUT / "eval", JUDGES[1:])
    queries = calibration_queries(questions, cfg.seed, cfg.calibration_share)
    plain = unsteered(tuple(VECTOR_EMOTIONS))
    conditions = [plain, *prompt_conditions(VECTOR_EMOTIONS)]
    for name, (_, alphas) in METHODS.items():
        if only and name not in only:
            continue
        vectors = load_method(name)
        conditions += [Condition(name, a, (e,), vectors[e], label=f"{name} {a:g}")
                       for e in VECTOR_EMOTIONS for a in alphas]
    runner.run(conditions, queries)
    baseline = log_ppls(runner, plain, queries)
    rows = [{"method": c.variant, "alpha": c.alpha, "emotion": target,
             **measure(runner, c, target, queries, baseline)}
            for c in conditions for target in c.targets]
    write_text(OUT / "pilot.json", json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict], judge: str = JUDGES[0]) -> str:
    """Per method and strength: EPS ± SE (PPL ratio) per emotion, then the means."""
    lines = [f"judge {judge}", "",
             "| method | alpha | " + " | ".join(VECTOR_EMOTIONS) + " | mean EPS | PPL x | topic |",
             "|---|---|" + "---|" * (len(VECTOR_EMOTIONS) + 3)]
    for method, alpha in dict.fromkeys((r["method"], r["alpha"]) for r in rows):
        cells = {r["emotion"]: r for r in rows if (r["method"], r["alpha"]) == (method, alpha)}
        if not all(e in cells for e in VECTOR_EMOTIONS):
            continue
        parts = [f"{cells[e][f'eps:{judge}']:.2f}±{cells[e][f'eps_se:{judge}']:.2f} "
                 f"(x{cells[e]['ppl_ratio']:.2f})" for e in VECTOR_EMOTIONS]
        mean_eps = statistics.fmean(cells[e][f"eps:{judge}"] for e in VECTOR_EMOTIONS)
        mean_ppl = math.exp(statistics.fmean(math.log(cells[e]["ppl_ratio"])
                                             for e in VECTOR_EMOTIONS))
        topic = statistics.fmean(cells[e]["topic"] for e in VECTOR_EMOTIONS)
        lines.append(f"| {method} | {alpha:g} | " + " | ".join(parts)
                     + f" | {mean_eps:.2f} | {mean_ppl:.2f} | {topic:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("vectors", "eval", "train-curves"))
    parser.add_argument("--limit", type=int, default=40, help="extraction queries per emotion")
    parser.add_argument("--questions", type=int, default=4, help="calibration questions per "
                        "EQ+ category (6 categories)")
    parser.add_argument("--methods", default="", help="comma list (default: all)")
    args = parser.parse_args(argv)
    only = [m for m in args.methods.split(",") if m] or None
    torch.set_num_threads(2)
    if args.stage == "train-curves":
        details = json.loads((OUT / "vectors" / "trained" / "details.json").read_text())
        for emotion, d in details["details"].items():
            t = d["train"]
            k = max(1, len(t["losses"]) // 10)
            print(emotion, f"{t['seconds']:.0f}s", "loss",
                  f"{statistics.fmean(t['losses'][:k]):.3f}", "->",
                  f"{statistics.fmean(t['losses'][-k:]):.3f}", "margin",
                  f"{statistics.fmean(t['margins'][-k:]):.3f}", "kl",
                  f"{statistics.fmean(t['kls'][-k:]):.4f}")
        return
    import emosteer

    model, tok = emosteer.load_model("default")
    if args.stage == "vectors":
        build_vectors(model, tok, args.limit, only)
    else:
        rows = evaluate(model, tok, args.questions, only)
        text = "\n\n".join(table(rows, judge) for judge in JUDGES)
        write_text(OUT / "pilot.md", text + "\n")
        print(text)


if __name__ == "__main__":
    sys.exit(main())
