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

--seeds 1,2,3 rebuilds the method's vectors that many times (each from a seeded sample of
--seed-limit questions per emotion), answers the calibration questions with each build at the
chosen settings, and ships the build whose mean EPS is the median (not the luckiest); every
build's scores go into provenance.json as the spread. --dose-sweep 2,3,4 answers the
calibration questions at those alphas of the shipped vectors and records, per vector, the
largest dose whose text has not broken (PPL ratio <= --break-ppl, repeated trigrams <=
--break-repetition) as metadata max_dose, the limit `steer()` and both servers enforce.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

from emosteer import data
from emosteer.evaluate import frontier as F
from emosteer.evaluate.conditions import Condition, calibration_queries
from emosteer.evaluate.conditions import unsteered as unsteered_condition
from emosteer.evaluate.measure import JudgesRunner, log_ppls, measure
from emosteer.files import write_text
from emosteer.vectors import DEFAULT_VECTORS, EmotionVector

METHODS = F.METHODS

ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def settings_from(provenance: Path, method: str) -> dict[str, dict]:
    """emotion -> the calibration row (strength, band, scores) a shipped provenance.json
    recorded for `method`."""
    record = json.loads(provenance.read_text())
    if record.get("method") != method:
        raise SystemExit(f"{provenance} records method {record.get('method')!r}, not {method!r}")
    return {e: {**row.get("calibration", {}), "strength": row["strength"], "band": row["band"]}
            for e, row in record["emotions"].items()}


def layers_of(band: str, vector: EmotionVector) -> list[int]:
    """The layers of a frontier band name ("all", "-" or "layers a-b")."""
    if not band.startswith("layers "):
        return vector.layers
    first, last = (int(x) for x in band.removeprefix("layers ").split("-"))
    return [i for i in vector.layers if first <= i <= last]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontier", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--method", help="the frontier method to ship")
    parser.add_argument("--dose-only", action="store_true",
                        help="keep the shipped vectors; only run --dose-sweep on them and "
                             "record max_dose (the frontier folder holds the answer cache)")
    parser.add_argument("--out", type=Path, default=DEFAULT_VECTORS)
    parser.add_argument("--seeds", default="", help="rebuild with these seeds, ship the median")
    parser.add_argument("--settings-from", type=Path,
                        help="a provenance.json whose strengths and bands to use where the "
                             "frontier's calibration.jsonl chose none for --method (rebuilding "
                             "the shipped recipe after its frontier folder is gone)")
    parser.add_argument("--seed-limit", type=int, default=80)
    parser.add_argument("--calibration-limit", type=int, default=5)
    parser.add_argument("--dose-sweep", default="", help="alphas of the break-point sweep")
    parser.add_argument("--break-ppl", type=float, default=2.5)
    parser.add_argument("--break-repetition", type=float, default=0.2)
    parser.add_argument("--add", action="store_true",
                        help="add the frontier's emotions to the shipped folder: the vectors "
                             "and provenance.json of the others are kept, these emotions go "
                             "under provenance.json's 'beyond_the_five'")
    args = parser.parse_args(argv)
    if args.dose_only:
        return record_max_dose(args)
    if not args.method:
        parser.error("--method is required (or --dose-only)")
    spec = next(m for m in METHODS if m.name == args.method)
    chosen = {r["emotion"]: r for r in read_jsonl(args.frontier / "calibration.jsonl")
              if r["method"] == args.method and r.get("chosen")}
    if not chosen and args.settings_from:
        chosen = settings_from(args.settings_from, args.method)
    if not chosen:
        raise SystemExit(f"no chosen setting for {args.method} in {args.frontier}/"
                         "calibration.jsonl: run the frontier with it, or pass --settings-from")
    held = {r["emotion"]: r for r in read_jsonl(args.frontier / "summary.jsonl")
            if r["method"] == args.method}
    judges = F.judges_for(list(chosen))
    record: dict = {"method": args.method, "frontier": str(args.frontier),
                    "rule": f"highest mean EPS of judges {judges[0]} and {judges[1]} with PPL "
                            "<= 1.3x unsteered and topic >= 0.9, on the calibration split of "
                            "emotion_query_plus", "emotions": {}}
    folder = args.frontier / "vectors" / spec.source
    runner = None
    if args.seeds or args.dose_sweep or args.add:
        import emosteer

        model, tok = emosteer.load_model("default")
        cfg = F.FrontierConfig(emotions=tuple(chosen), judges=judges)
        runner = JudgesRunner(model, tok, F.eval_config(cfg), args.frontier, cfg.judges[1:])
    if args.seeds:
        folder, record["rebuilds"] = median_build(runner, spec, chosen, args)
    shipped = {}
    for emotion, row in chosen.items():
        vector = EmotionVector.load(folder / f"{emotion}.safetensors")
        strength, note = row["strength"], "chosen on the calibration split"
        if strength == 0:
            strength = min(spec.strengths)
            note = ("no setting beat unsteered within the bounds on the calibration split: "
                    "shipped at the method's smallest strength")
        vector = vector.select(layers_of(row["band"], vector)).calibrated(
            strength, method=args.method, band=row["band"], calibration=note)
        shipped[emotion] = vector
        record["emotions"][emotion] = {
            "strength": strength, "band": row["band"], "note": note,
            "calibration": {k: row.get(k) for k in ("eps", "eps_se", "ppl_ratio", "topic")},
            "held_out": {k: v for k, v in held.get(emotion, {}).items()
                         if k.startswith(("eps", "tec", "ppl", "topic", "n"))}}
        print(f"{emotion}: strength {strength:g}, {row['band']} -> {args.out}")
    if args.dose_sweep:
        alphas = [float(a) for a in args.dose_sweep.split(",")]
        record["dose_sweep"] = {}
        for emotion, vector in shipped.items():
            shipped[emotion], record["dose_sweep"][emotion] = with_max_dose(
                runner, spec, emotion, vector, alphas, args)
    if args.seeds or args.add:  # the shipped vectors at alpha 1, on the held-out split (a
        # rebuild is not the frontier's build; an emotion whose chosen setting was unsteered
        # ships at the smallest strength, which the frontier did not report)
        from emosteer.evaluate.conditions import evaluation_queries

        rows = scores(runner, {e: condition(spec, e, v, 1.0) for e, v in shipped.items()},
                      evaluation_queries(5))
        for emotion, row in rows.items():
            record["emotions"][emotion]["held_out"] = {
                k: v for k, v in row.items() if k.startswith(("eps", "tec", "ppl", "topic", "n",
                                                               "repetition"))}
            record["emotions"][emotion]["held_out_of"] = (
                "the shipped (median) build" if args.seeds else "the shipped vector, alpha 1")
    for emotion, vector in shipped.items():
        vector.save(args.out / f"{emotion}.safetensors")
    if args.add:  # the shipped record stays; these emotions are one section of it
        kept = json.loads((args.out / "provenance.json").read_text())
        record = {**kept, "beyond_the_five": record}
    write_text(args.out / "provenance.json", json.dumps(record, indent=1) + "\n")


def record_max_dose(args) -> None:
    """--dose-only: the shipped vectors, each with max_dose from a sweep; provenance.json
    gains the sweep. The directions are unchanged (the meter stays valid)."""
    import emosteer
    from emosteer.vectors import load_vectors

    if not args.dose_sweep:
        raise SystemExit("--dose-only needs --dose-sweep, e.g. --dose-sweep 2,3,4")
    model, tok = emosteer.load_model("default")
    cfg = F.FrontierConfig()
    runner = JudgesRunner(model, tok, F.eval_config(cfg), args.frontier, cfg.judges[1:])
    spec = F.Method("shipped", (1.0,))  # plain addition at every position
    alphas = [float(a) for a in args.dose_sweep.split(",")]
    record = json.loads((args.out / "provenance.json").read_text())
    record["dose_sweep"] = {}
    vectors = load_vectors(args.out)
    for emotion, vector in vectors.items():
        if emotion == "base":
            continue
        vector, record["dose_sweep"][emotion] = with_max_dose(runner, spec, emotion, vector,
                                                              alphas, args)
        vector.save(args.out / f"{emotion}.safetensors")
    record["dose_rule"] = (f"max_dose: the relative dose of the largest alpha in 1, "
                           f"{args.dose_sweep} whose answers to {len(calibration_queries(3))} "
                           f"calibration questions kept PPL <= {args.break_ppl:g}x unsteered "
                           f"and repeated trigrams <= {args.break_repetition:g}")
    write_text(args.out / "provenance.json", json.dumps(record, indent=1) + "\n")


def condition(spec, emotion: str, vector: EmotionVector, alpha: float) -> Condition:
    """The method's way of adding `vector` (its system prompt, norm rule) at `alpha`."""
    return Condition(spec.name, alpha, (emotion,), vector, preserve_norm=spec.preserve_norm,
                     system=data.system_prompt(emotion) if spec.with_prompt else None,
                     positions=spec.positions)


def scores(runner, conditions: dict[str, Condition], queries) -> dict[str, dict]:
    """name -> measure() row of each (emotion-named) condition on `queries`."""
    plain = unsteered_condition(())
    runner.generate([plain, *conditions.values()], queries)
    runner.annotate([runner.gen_key(c, q) for c in [plain, *conditions.values()]
                     for q in queries])
    base = log_ppls(runner, plain, queries)
    return {name: measure(runner, c, c.targets[0], queries, base)
            for name, c in conditions.items()}


def median_build(runner, spec, chosen: dict, args) -> tuple[Path, list[dict]]:
    """Rebuild the method's vectors per seed; the folder of the build with the median mean EPS
    on the calibration questions at the chosen settings, and every build's scores."""
    from emosteer.extraction.extract import ExtractConfig, extract

    queries = calibration_queries(args.calibration_limit)
    builds = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        folder = args.frontier / "rebuilds" / f"{spec.source}-seed{seed}"
        base = ExtractConfig(**{**dict(spec.extract or {}), "limit": args.seed_limit})
        cfg = replace(base, generation=replace(base.generation, seed=seed))
        if not (folder / "joy.safetensors").is_file():
            result = extract(runner.model, runner.tokenizer, cfg)
            for name, vector in result.vectors.items():
                vector.save(folder / f"{name}.safetensors")
        conditions = {}
        for emotion, row in chosen.items():
            vector = EmotionVector.load(folder / f"{emotion}.safetensors")
            vector = vector.select(layers_of(row["band"], vector))
            conditions[emotion] = condition(spec, emotion, vector, row["strength"] or 1.0)
        rows = scores(runner, conditions, queries)
        mean = statistics.fmean(r["eps"] for r in rows.values())
        builds.append({"seed": seed, "folder": str(folder), "mean_eps": mean,
                       "eps": {e: r["eps"] for e, r in rows.items()},
                       "ppl_ratio": {e: r["ppl_ratio"] for e, r in rows.items()}})
        print(f"build seed {seed}: mean EPS {mean:.3f} on {len(queries)} calibration questions",
              flush=True)
    ranked = sorted(builds, key=lambda b: b["mean_eps"])
    median = ranked[len(ranked) // 2]
    for b in builds:
        b["shipped"] = b is median
    return Path(median["folder"]), builds


def with_max_dose(runner, spec, emotion: str, vector: EmotionVector, alphas: list[float],
                  args) -> tuple[EmotionVector, dict]:
    """The vector with metadata max_dose: the dose of the largest swept alpha (1 included)
    whose calibration answers kept PPL <= break_ppl and repetition <= break_repetition."""
    from emosteer.dose import relative_dose

    queries = calibration_queries(min(args.calibration_limit, 3))
    rows = scores(runner, {f"{a:g}": condition(spec, emotion, vector, a) for a in alphas},
                  queries)
    kept = [1.0] + [a for a in alphas if rows[f"{a:g}"]["ppl_ratio"] <= args.break_ppl
                    and rows[f"{a:g}"]["repetition"] <= args.break_repetition]
    largest = max(kept)
    dose = relative_dose(vector, largest)
    sweep = {k: {"eps": r["eps"], "ppl_ratio": r["ppl_ratio"], "repetition": r["repetition"]}
             for k, r in rows.items()}
    print(f"{emotion}: text holds up to alpha {largest:g} (dose {dose}); sweep {sweep}",
          flush=True)
    if dose is None:
        return vector, {"sweep": sweep, "max_dose": None}
    meta = {**vector.meta, "max_dose": f"{math.ceil(dose * 1e4) / 1e4:g}"}  # never below it
    return EmotionVector(vector.directions, meta), {"sweep": sweep, "max_alpha": largest,
                                                    "max_dose": dose}


if __name__ == "__main__":
    main()
