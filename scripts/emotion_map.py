"""The similarity map of a folder of emotion vectors: their cosine matrix and a 2-D principal
component projection, each emotion placed by its spec's valence and arousal for comparison.

    python scripts/emotion_map.py --vectors default --out docs/figures/emotion-map

Each vector is its directions at every layer it has, flattened (the cosine of two vectors is
over all layers at once; layers must match). Writes <out>-cosine.png, <out>-pca.png and
<out>.json (the matrix, each emotion's nearest other emotion, the projection, and the Pearson
correlation of PC1 and PC2 with the specs' valence and arousal: does valence come out as the
first axis, as in the emotion-concepts study?).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emosteer.emotion_specs import load_specs
from emosteer.files import write_text
from emosteer.plots import pyplot, save_figure
from emosteer.vectors import load_vectors


def pearson(x: list[float], y: list[float]) -> float:
    a, b = torch.tensor(x), torch.tensor(y)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", default="default")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/emotion-map"))
    args = parser.parse_args(argv)
    specs = load_specs()
    vectors = {e: v for e, v in load_vectors(args.vectors).items() if e in specs}
    names = list(vectors)
    layers = sorted(set.intersection(*(set(v.layers) for v in vectors.values())))
    flat = torch.stack([torch.cat([vectors[e].directions[i].float() for i in layers])
                        for e in names])
    unit = torch.nn.functional.normalize(flat, dim=-1)
    cosine = unit @ unit.T
    centred = unit - unit.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    coords = (centred @ vh[:2].T).tolist()
    explained = (s[:2] ** 2 / (s ** 2).sum()).tolist()
    valence = [specs[e].valence for e in names]
    arousal = [specs[e].arousal for e in names]
    pcs = list(zip(*coords, strict=True))
    sign = 1.0 if pearson(list(pcs[0]), valence) >= 0 else -1.0  # PC signs are arbitrary
    coords = [[sign * x, y] for x, y in coords]
    pcs = list(zip(*coords, strict=True))
    nearest = {e: names[int(torch.where(torch.arange(len(names)) == k, -2.0, cosine[k]).argmax())]
               for k, e in enumerate(names)}
    result = {
        "vectors": str(args.vectors), "layers": [layers[0], layers[-1]], "emotions": names,
        "cosine": [[round(float(c), 3) for c in row] for row in cosine],
        "nearest": nearest,
        "pca": {e: [round(x, 4), round(y, 4)] for e, (x, y) in zip(names, coords, strict=True)},
        "explained": [round(x, 3) for x in explained],
        "r_pc1_valence": round(pearson(list(pcs[0]), valence), 3),
        "r_pc1_arousal": round(pearson(list(pcs[0]), arousal), 3),
        "r_pc2_valence": round(pearson(list(pcs[1]), valence), 3),
        "r_pc2_arousal": round(pearson(list(pcs[1]), arousal), 3),
        "mean_off_diagonal_cosine": round(float(
            (cosine.sum() - cosine.diagonal().sum()) / (len(names) ** 2 - len(names))), 3)}
    plt = pyplot()
    order = sorted(range(len(names)), key=lambda k: -valence[k])  # pleasant first
    fig, ax = plt.subplots(figsize=(9, 8))
    image = ax.imshow(cosine[order][:, order], cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), [names[k] for k in order], rotation=60, ha="right")
    ax.set_yticks(range(len(names)), [names[k] for k in order])
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            ax.text(j, i, f"{float(cosine[a, b]):.1f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine over all layers")
    ax.set_title("Emotion vectors: cosine similarity (ordered by the spec's valence)")
    save_figure(fig, args.out.with_name(args.out.name + "-cosine.png"))
    fig, ax = plt.subplots(figsize=(8, 6.5))
    points = ax.scatter(*pcs, c=valence, cmap="coolwarm_r", vmin=-1, vmax=1, s=60)
    for e, (x, y) in zip(names, coords, strict=True):
        ax.annotate(e, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=9)
    fig.colorbar(points, ax=ax, label="the spec's valence")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance; r with valence "
                  f"{result['r_pc1_valence']:+.2f})")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%}; r with arousal {result['r_pc2_arousal']:+.2f})")
    ax.axhline(0, color="#ccc", lw=0.5)
    ax.axvline(0, color="#ccc", lw=0.5)
    ax.set_title("Emotion vectors: first two principal components")
    save_figure(fig, args.out.with_name(args.out.name + "-pca.png"))
    write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cosine", "pca")}))


if __name__ == "__main__":
    main()
