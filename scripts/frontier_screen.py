"""The frontier's first stage on the calibration split only: a wide grid on fewer questions.

`emosteer experiment frontier` answers every setting on the calibration questions and then the
chosen ones on the held-out questions. A wide grid (six depths x doses x sites) on all 60
calibration questions costs about an hour on 2 CPU cores; this script answers the grid on a
smaller calibration sample (never a held-out question), prints every row and writes
`<out>/screen-<methods>.jsonl`, so the frontier proper can be run on the settings that survive. The
answers are cached in `<out>` like the frontier's: the frontier run in the same folder reuses
them.

    python scripts/frontier_screen.py --vectors runs/f29/vectors --out runs/f29 \
        --method written --method written_residual --calibration-limit 5
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import emosteer
from emosteer.evaluate import frontier as F
from emosteer.evaluate.conditions import calibration_queries
from emosteer.evaluate.measure import JudgesRunner
from emosteer.files import write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--method", action="append", required=True)
    parser.add_argument("--emotion", action="append")
    parser.add_argument("--calibration-limit", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    known = {m.name: m for m in F.METHODS}
    cfg = F.FrontierConfig(methods=tuple(known[m] for m in args.method),
                           emotions=tuple(args.emotion or F.FrontierConfig().emotions),
                           calibration_limit=args.calibration_limit)
    model, tok = emosteer.load_model("default")
    ecfg = F.eval_config(cfg)
    ecfg = replace(ecfg, generation=replace(ecfg.generation, batch_size=args.batch_size))
    runner = JudgesRunner(model, tok, ecfg, args.out, cfg.judges[1:], progress=True)
    grid, skipped = F.plan(cfg, args.vectors)
    queries = calibration_queries(cfg.calibration_limit, ecfg.seed, ecfg.calibration_share)
    print(f"screen: {sum(map(len, grid.values()))} settings x {len(queries)} calibration "
          f"questions; skipped {skipped or 'none'}", flush=True)
    start = time.perf_counter()
    rows = F._run_split(runner, grid, queries)
    for r in rows:
        r["feasible"] = F.feasible(r, cfg.max_ppl_ratio, cfg.min_topic, cfg.max_repetition)
    write_text(f"{args.out}/screen-{'-'.join(args.method)}.jsonl",
               "".join(json.dumps(r) + "\n" for r in rows))
    a, b = cfg.judges
    for (method, emotion), group in F.by_method_and_emotion(rows).items():
        for r in group[1:]:
            print(f"{emotion:8} {method:26} {r['band']:12} {r['strength']:5.2f} "
                  f"A {r[f'eps:{a}']:.2f} B {r[f'eps:{b}']:.2f} ppl x{r['ppl_ratio']:.2f} "
                  f"topic {r['topic']:.2f} rep {r['repetition']:.2f}"
                  + ("" if r["feasible"] else "  (out of bounds)"), flush=True)
    print(f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
