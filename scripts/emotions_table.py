"""The held-out table of the emotions beyond the five (markdown, on stdout): per emotion, the
unsteered model, the system prompt, and the shipped vector at alpha 1, by both zero-shot
judges, with fluency and how the vector was extracted.

    python scripts/emotions_table.py --frontier docs/results/frontier-specs \
        --details runs/spec20/vectors/filtered_ctx/details.json

Reads the frontier's summary.jsonl (unsteered and prompt rows), the shipped provenance.json's
`beyond_the_five` (the shipped vector at alpha 1 on the same held-out questions) and the
extraction's details.json (how many answers the zero-shot filter confirmed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from emosteer.emotion_specs import load_specs
from emosteer.vectors import DEFAULT_VECTORS

JUDGES = ("zero-shot-a", "zero-shot-b")


def pair(row: dict | None, se: bool = False) -> str:
    if not row:
        return "-"
    text = " / ".join(f"{row[f'eps:{j}']:.2f}" for j in JUDGES)
    if se:
        text += f" (± {max(row[f'eps_se:{j}'] for j in JUDGES):.2f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontier", type=Path, required=True)
    parser.add_argument("--details", type=Path, required=True)
    parser.add_argument("--provenance", type=Path, default=DEFAULT_VECTORS / "provenance.json")
    args = parser.parse_args()
    rows: dict[tuple[str, str], dict] = {}
    for line in (args.frontier / "summary.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["method"], r["emotion"])] = r
    shipped = json.loads(args.provenance.read_text())["beyond_the_five"]["emotions"]
    details = json.loads(args.details.read_text())
    specs = load_specs()
    print("| emotion | valence | filter kept | strength | unsteered | prompt | vector, alpha 1 "
          "| PPL ratio | topic |")
    print("|---|---|---|---|---|---|---|---|---|")
    means: dict[str, list[float]] = {"unsteered": [], "prompt": [], "vector": []}
    for emotion, row in shipped.items():
        held = row["held_out"]
        plain = rows.get(("unsteered", emotion))
        prompt = rows.get(("prompt (unbounded)", emotion)) or rows.get(("prompt", emotion))
        d = details.get(emotion, {})
        kept = (f"{d['confirmed']} of {d['answered']}" if d.get("filter") == "judge" else
                f"none ({d.get('confirmed', '?')} of {d.get('answered', '?')}: every answer)")
        for name, r in (("unsteered", plain), ("prompt", prompt), ("vector", held)):
            if r:
                means[name].append(statistics.fmean(r[f"eps:{j}"] for j in JUDGES))
        print(f"| {emotion} | {specs[emotion].valence:+.1f} | {kept} | {row['strength']:g} | "
              f"{pair(plain)} | {pair(prompt)} | {pair(held, se=True)} | "
              f"{held['ppl_ratio']:.2f} | {held['topic']:.2f} |")
    print("| **mean** | | | | " + " | ".join(
        f"{statistics.fmean(v):.2f}" if v else "-" for v in means.values()) + " | | |")


if __name__ == "__main__":
    main()
