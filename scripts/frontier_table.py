"""Every frontier method of every run in one held-out table (markdown, on stdout).

Each run answered its own held-out questions (30 of emotion_query_plus, seed and sample in its
report), so each row carries its run and that run's unsteered mean: compare a row with the
unsteered row of its own run first, and rows of different runs only through that.

    python scripts/frontier_table.py docs/results/frontier*/ > table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

EMOTIONS = ("joy", "anger", "sadness", "fear", "disgust")
JUDGES = ("embedded-a", "embedded-b")


def rows_of(folder: Path) -> dict[str, dict[str, dict]]:
    """method -> emotion -> held-out row."""
    out: dict[str, dict[str, dict]] = {}
    for line in (folder / "summary.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["method"], {})[row["emotion"]] = row
    return out


def mean(rows: dict[str, dict], key: str) -> float | None:
    values = [r[key] for r in rows.values() if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return " / ".join(f"{row[f'eps:{j}']:.2f}" for j in JUDGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | method | " + " | ".join(EMOTIONS) + " | mean EPS | run's unsteered mean "
          "| PPL ratio | repetition |")
    print("|---|---|" + "---|" * (len(EMOTIONS) + 4))
    for folder in args.runs:
        if not (folder / "summary.jsonl").is_file():
            continue
        methods = rows_of(folder)
        plain = methods.get("unsteered", {})
        base = " / ".join(f"{mean(plain, f'eps:{j}'):.2f}" for j in JUDGES) if plain else "-"
        for method, rows in methods.items():
            if method == "unsteered":
                continue
            ratios = [r["ppl_ratio"] for r in rows.values() if r.get("ppl_ratio")]
            ppl = statistics.geometric_mean(ratios) if ratios else None
            rep = mean(rows, "repetition")
            print(f"| {folder.name} | {method} | "
                  + " | ".join(cell(rows.get(e)) for e in EMOTIONS)
                  + " | " + " / ".join(f"{mean(rows, f'eps:{j}'):.2f}" for j in JUDGES)
                  + f" | {base} | " + (f"{ppl:.2f}" if ppl else "-") + " | "
                  + (f"{rep:.2f}" if rep is not None else "-") + " |")


if __name__ == "__main__":
    main()
