"""How well does the zero-shot judge read emotions it was never trained on? And on the five basic
emotions, how does it compare with the trained judges?

1. 20-way: each shipped spec's held-out sentences (every third of its 60 examples; the
   prototypes and the temperature saw only the other two thirds), read by the zero-shot judge
   over all 20 specs. Accuracy per emotion with its standard error (chance: 1/20).
2. The five basic emotions, two test sets: the five specs' held-out sentences and the held-out
   20% of emotion_corpus (the trained judges' own test part) for those five labels. Readers:
   the zero-shot judge over the five specs only, and the trained judges embedded-a and
   embedded-b (argmax over their seven labels; right when it is the sentence's emotion).
3. zero-shot-a and zero-shot-b (each one of the two training thirds: a second opinion), 20-way
   on the same held-out sentences, and how often they give the same label.
4. A similarity map of the 20 prototypes (cosine) and their 2-D projection (PCA): does valence
   come out as the first axis? (the correlation of PC1 with the specs' valence).

Writes benchmarks/results/zero_shot_judge-<machine>.json (the last stdout line is its JSON) and
docs/figures/zero-shot-prototypes.png.

    python benchmarks/zero_shot_judge.py
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from machine_info import machine, write_results

from emosteer.emotion_meter.fit import corpus_rows
from emosteer.emotion_specs import load_specs
from emosteer.emotions import VECTOR_EMOTIONS
from emosteer.judges.registry import load_judge
from emosteer.judges.zero_shot import ZeroShotJudge, held_out_accuracy, split

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "zero-shot-prototypes.png"


def accuracy(predicted: list[str], truth: list[str]) -> dict:
    n = len(truth)
    acc = sum(p == t for p, t in zip(predicted, truth, strict=True)) / n
    return {"accuracy": round(acc, 4), "se": round(math.sqrt(acc * (1 - acc) / n), 4), "n": n}


def five_way(specs) -> dict:
    """The five basic emotions: zero-shot (five specs) vs the trained judges, two test sets."""
    five = {e: specs[e] for e in VECTOR_EMOTIONS}
    zero = ZeroShotJudge(five)
    held = [(t, e) for e in VECTOR_EMOTIONS for t in split(five[e])[1]]
    corpus = [(r["text"], r["label"]) for r in corpus_rows(held_out=True)
              if r["label"] in VECTOR_EMOTIONS]
    out = {}
    for set_name, rows in (("spec sentences (held out)", held),
                           ("emotion_corpus (held out)", corpus)):
        texts, truth = [t for t, _ in rows], [e for _, e in rows]
        readers = {"zero-shot (5 specs)": [c["label"] for c in zero.classify(texts)]}
        for name in ("embedded-a", "embedded-b"):
            readers[name] = [r.label for r in load_judge(name).rate(texts, texts)]
        out[set_name] = {name: accuracy(pred, truth) for name, pred in readers.items()}
    return out


def prototype_map(judge: ZeroShotJudge) -> dict:
    """Cosine matrix of the prototypes, their PCA, and PC1's correlation with valence."""
    protos = judge.prototypes
    cosine = (protos @ protos.T).tolist()
    centred = protos - protos.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).tolist()
    valence = [judge.specs[n].valence for n in judge.labels]
    pc1 = [p[0] for p in xy]
    r = float(torch.corrcoef(torch.tensor([pc1, valence], dtype=torch.float32))[0, 1])
    _plot(judge.labels, cosine, xy, valence)
    return {"labels": judge.labels, "cosine": [[round(c, 3) for c in row] for row in cosine],
            "pca": [[round(a, 4) for a in p] for p in xy], "pc1_valence_r": round(abs(r), 3)}


def _plot(labels, cosine, xy, valence) -> None:
    from emosteer.plots import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    image = left.imshow(cosine, cmap="viridis")
    left.set_xticks(range(len(labels)), labels, rotation=90)
    left.set_yticks(range(len(labels)), labels)
    left.set_title("cosine of the 20 spec prototypes (MiniLM)")
    fig.colorbar(image, ax=left, fraction=0.046)
    points = right.scatter([p[0] for p in xy], [p[1] for p in xy], c=valence, cmap="coolwarm",
                           vmin=-1, vmax=1)
    for name, (x, y) in zip(labels, xy, strict=True):
        right.annotate(name, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    right.set_xlabel("PC1")
    right.set_ylabel("PC2")
    right.set_title("prototypes, first two principal components (colour: valence)")
    fig.colorbar(points, ax=right, fraction=0.046, label="valence (spec)")
    fig.tight_layout()
    save_figure(fig, FIGURE)


def main() -> None:
    start = time.perf_counter()
    specs = load_specs()
    judge = ZeroShotJudge(specs)
    per_emotion = held_out_accuracy(judge)
    mean = sum(r["accuracy"] for r in per_emotion.values()) / len(per_emotion)
    for name, row in per_emotion.items():
        print(f"{name:12s} {row['accuracy']:.2f} ± {row['se']:.2f}  (n {row['n']}, most often "
              f"read as {row['confused_with']})", flush=True)
    print(f"20-way mean accuracy {mean:.3f} (chance 0.05); temperature {judge.temperature:g}",
          flush=True)
    halves = {h: ZeroShotJudge(specs, half=h) for h in "ab"}  # disjoint example thirds
    held = [(t, e) for e, spec in specs.items() for t in split(spec)[1]]
    texts, truth = [t for t, _ in held], [e for _, e in held]
    read = {h: [c["label"] for c in j.classify(texts)] for h, j in halves.items()}
    agree = sum(a == b for a, b in zip(read["a"], read["b"], strict=True)) / len(texts)
    second = {f"zero-shot-{h}": accuracy(read[h], truth) for h in "ab"}
    second["a_b_agreement"] = round(agree, 4)
    print(f"halves: 20-way accuracy a {second['zero-shot-a']['accuracy']:.3f}, "
          f"b {second['zero-shot-b']['accuracy']:.3f}, agreement {agree:.3f}", flush=True)
    report = {"benchmark": "zero_shot_judge", "machine": machine(),
              "halves": second,
              "specs": judge.version, "temperature": judge.temperature,
              "twenty_way": {"per_emotion": per_emotion, "mean_accuracy": round(mean, 4),
                             "chance": 1 / len(specs)},
              "five_way": five_way(specs), "prototypes": prototype_map(judge),
              "seconds": round(time.perf_counter() - start, 1)}
    for set_name, readers in report["five_way"].items():
        print(set_name, {k: v["accuracy"] for k, v in readers.items()}, flush=True)
    print("PC1 vs valence |r| =", report["prototypes"]["pc1_valence_r"], flush=True)
    write_results("zero_shot_judge", report)


if __name__ == "__main__":
    main()
