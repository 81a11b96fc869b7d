"""Reports of a discovery: its files, clusters per layer, consistency, causal curves, influence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emosteer.circuits import analysis as A
from emosteer.circuits.components import KINDS
from emosteer.files import write_text
from emosteer.plots import COLOURS, pyplot, save_figure
from emosteer.tables import markdown_table
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from emosteer.circuits.discover import Discovery

KIND_NAMES = {"head": "attention heads", "neuron": "MLP neurons"}


def all_plots(result: Discovery, emotions: list[str], out: Path) -> dict[str, Path]:
    """The four figures of a discovery: pca.png, consistency.png, causal.png, sublayers.png.

    Example:
        all_plots(result, result.circuit.emotions, Path("circuits"))
    """
    return {"pca": plot_pca(result, emotions, out / "pca.png"),
            "consistency": plot_consistency(result.summary, out / "consistency.png"),
            "causal": plot_causal(result.summary, out / "causal.png"),
            "sublayers": plot_sublayers(result.summary, emotions, out / "sublayers.png")}


def save(result: Discovery, out: Path, emotions: list[str]) -> dict[str, Path]:
    """Write the circuit, directions, vectors, rankings, samples, summary, plots and report.md.

    Example:
        save(emosteer.discover(model, tok), Path("circuits"), ["joy", "anger"])
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {"circuit": result.circuit.save(out / "circuit.safetensors")}
    for i, emotion in enumerate(emotions):
        meta = {**result.vectors[emotion].meta, "site": "residual", "method": "sev_direction",
                "positions": "last_prompt_token"}
        EmotionVector({layer: result.directions[i, layer]
                       for layer in range(result.directions.shape[1])}, meta
                      ).save(out / "directions" / f"{emotion}.safetensors")
        result.vectors[emotion].save(out / "vectors" / f"{emotion}.safetensors")
    rankings = {e: {k: [{"layer": layer, "index": j, "share": float(result.scores[k][i, layer, j])}
                        for layer, j in A.top_components(result.scores[k][i], 20)]
                    for k in KINDS} for i, e in enumerate(emotions)}
    write_text(out / "rankings.json", json.dumps(rankings, indent=1))
    write_text(out / "samples.jsonl", "".join(json.dumps(x) + "\n" for x in result.samples))
    write_text(out / "summary.json", json.dumps(result.summary, indent=1))
    paths.update(all_plots(result, emotions, out))
    paths["report"] = write_text(out / "report.md", markdown(result.summary, emotions))
    return paths


def _pca2(x: torch.Tensor) -> torch.Tensor:
    x = x.double() - x.double().mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(x, q=2, center=False)
    return (x @ v[:, :2]).float()


def plot_pca(result: Discovery, emotions: list[str], path: Path, n_panels: int = 4) -> Path:
    """Last-token states projected on their first two principal components, a few layers.

    Top row: the states as read. Bottom row: each state minus the mean of its scene (the same
    scenario and event under every emotion), so only what the emotion adds is left.

    Example:
        plot_pca(result, ["joy", "anger"], Path("circuits/pca.png"))
    """
    plt = pyplot()
    states, labels = result.states, result.labels
    n_layers = states.shape[1]
    layers = sorted({round(i * (n_layers - 1) / (n_panels - 1)) for i in range(n_panels)})
    contexts = result.contexts
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        groups.setdefault(c, []).append(i)
    pure = states.clone()
    for idx in groups.values():
        pure[idx] = states[idx] - states[idx].mean(0, keepdim=True)
    fig, axes = plt.subplots(2, len(layers), figsize=(3.4 * len(layers), 6.4), squeeze=False)
    for row, (name, x) in enumerate((("states", states), ("minus scene mean", pure))):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            xy = _pca2(x[:, layer])
            for e in emotions:
                idx = [i for i, label in enumerate(labels) if label == e]
                ax.scatter(xy[idx, 0], xy[idx, 1], s=7, alpha=0.7, color=COLOURS.get(e),
                           label=e)
            ax.set_title(f"layer {layer}: {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].legend(fontsize=7, markerscale=2)
    fig.suptitle("Last prompt token, emotion-conditioned SEV prompts (PCA per layer)")
    return save_figure(fig, path, dpi=110)


def plot_consistency(summary: dict, path: Path) -> Path:
    """Cosine of directions found on disjoint halves and across valences, per layer, with the
    cosine between different emotions as the reference.

    Args:
        summary: `Discovery.summary` (its "consistency" curves).
        path: the PNG written.

    Example:
        plot_consistency(result.summary, Path("circuits/consistency.png"))
    """
    plt = pyplot()
    c = summary["consistency"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = {"halves": "disjoint scenario halves", "valences": "across valences",
             "cross_emotion": "between different emotions (reference)"}
    for key, label in names.items():
        if key in c:
            ax.plot(range(len(c[key])), c[key], marker=".", label=label,
                    linestyle="--" if key == "cross_emotion" else "-")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean cosine of directions")
    ax.set_ylim(-1, 1.02)
    ax.axhline(0, color="#999", linewidth=0.6)
    ax.legend(fontsize=8)
    ax.set_title("Are emotion directions context-agnostic?")
    return save_figure(fig, path, dpi=110)


def plot_causal(summary: dict, path: Path) -> Path:
    """Emotion score s against k, top vs random components, 95% confidence bands.

    Example:
        plot_causal(result.summary, Path("circuits/causal.png"))
    """
    plt = pyplot()
    causal = summary["causal"]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4))
    for row, mode in enumerate(("ablate", "enhance")):
        base = causal["baseline"]["emotional" if mode == "ablate" else "neutral"]["mean"]
        for col, kind in enumerate(("neuron", "head")):
            ax = axes[row][col]
            for pick, colour in (("top", "#d62728"), ("random", "#777777")):
                pts = [c for c in causal["curves"]
                       if c["mode"] == mode and c["kind"] == kind and c["pick"] == pick]
                k = [0] + [c["k"] for c in pts]
                m = [base] + [c["mean"] for c in pts]
                h = [0.0] + [c["ci95"] for c in pts]
                ax.plot(k, m, marker="o", color=colour, label=f"{pick} {kind}s")
                ax.fill_between(k, [a - b for a, b in zip(m, h, strict=True)],
                                [a + b for a, b in zip(m, h, strict=True)], color=colour,
                                alpha=0.2)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel(f"k {KIND_NAMES[kind]} {'zeroed' if mode == 'ablate' else 'enhanced'}")
            ax.set_ylabel("emotion score s")
            what = "emotion asked for" if mode == "ablate" else "neutral request"
            ax.set_title(f"{mode}: {what}", fontsize=10)
            ax.legend(fontsize=8)
    fig.suptitle("Causal checks on held-out SEV scenes (mean over emotions, 95% CI)")
    return save_figure(fig, path, dpi=110)


def plot_sublayers(summary: dict, emotions: list[str], path: Path) -> Path:
    """Heatmaps (emotion x layer) of how much each sublayer's emotion shift moves s.

    Example:
        plot_sublayers(result.summary, ["joy", "anger"], Path("circuits/sublayers.png"))
    """
    plt = pyplot()
    influence = summary["influence"]
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True)
    top = max(abs(v) for kind in influence.values() for row in kind for v in row) or 1.0
    for ax, kind in zip(axes, ("head", "neuron"), strict=True):
        im = ax.imshow(influence[kind], aspect="auto", cmap="RdBu_r", vmin=-top, vmax=top)
        ax.set_yticks(range(len(emotions)), emotions, fontsize=8)
        ax.set_title(f"{'attention' if kind == 'head' else 'MLP'}: change of s when the "
                     "sublayer's emotion shift is added (neutral request)", fontsize=9)
        fig.colorbar(im, ax=ax)
    axes[-1].set_xlabel("layer")
    return save_figure(fig, path, dpi=110)


def markdown(summary: dict, emotions: list[str]) -> str:
    """The discovery in tables: kept answers, consistency, causal checks, circuit, timings.

    Args:
        summary: `Discovery.summary`.
        emotions: the emotions, in the circuit's order.

    Example:
        Path("circuits/report.md").write_text(markdown(result.summary, result.circuit.emotions))
    """
    s = summary
    n_layers = s["layers"]
    picks = sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers - 1})
    lines = [f"# Emotion circuits of {s['model']['model_id']}", "",
             f"{s['scenes']} discovery scenes ({s['scenes'] // 3} SEV skeletons x 3 valences), "
             f"{s['test_scenes']} held-out test scenes for the causal checks; "
             f"{n_layers} layers, {s['heads']} heads and {s['neurons']} MLP neurons per layer.",
             "", "## Answers the judge confirmed", "",
             markdown_table(["emotion", "asked", "confirmed", "share"],
                            [[e, s["asked"][e], s["confirmed"][e],
                              f"{100 * s['confirmed'][e] / max(s['asked'][e], 1):.0f}%"]
                             for e in emotions])]
    if s["unfiltered"]:
        lines += ["", f"Too few confirmed answers for {', '.join(s['unfiltered'])}: their "
                      "directions use every prompt of the emotion."]
    c = s["consistency"]
    names = (("halves", "disjoint scenario halves"), ("valences", "across valences"),
             ("cross_emotion", "different emotions (reference)"))
    lines += ["", "## Context-agnostic directions (mean cosine over emotions)", "",
              markdown_table(["layer", *picks], [[name, *[f"{c[key][i]:.2f}" for i in picks]]
                                                 for key, name in names if key in c])]
    lines += _causal(s["causal"])
    influence = [[name, *[f"{sum(row[i] for row in s['influence'][kind]) / len(emotions):+.2f}"
                          for i in picks]]
                 for kind, name in (("head", "attention"), ("neuron", "MLP"))]
    lines += ["", "## Sublayer influence (change of s, neutral request, mean over emotions)",
              "", markdown_table(["layer", *picks], influence),
              "", "## Circuit", "",
              markdown_table(["emotion", "heads", "neurons"],
                             [[e, s["circuit_size"][e]["head"], s["circuit_size"][e]["neuron"]]
                              for e in emotions])]
    lines += ["", "## Time", "", ", ".join(f"{k.removesuffix('_s')} {v:.0f} s"
                                            for k, v in s["seconds"].items()), "",
              "![clusters](pca.png)", "![consistency](consistency.png)",
              "![causal](causal.png)", "![sublayers](sublayers.png)", ""]
    return "\n".join(lines)


def _causal(causal: dict) -> list[str]:
    """The causal-check section: top vs random components at each k, ablated and enhanced."""
    base = causal["baseline"]
    rows = []
    for mode in ("ablate", "enhance"):
        for kind in ("neuron", "head"):
            for k in sorted({x["k"] for x in causal["curves"]}):
                got = {x["pick"]: x for x in causal["curves"] if x["mode"] == mode
                       and x["kind"] == kind and x["k"] == k}
                if got:
                    rows.append([mode, kind + "s", k,
                                 *[f"{got[p]['mean']:.2f} ± {got[p]['ci95']:.2f}"
                                   for p in ("top", "random")]])
    return ["", f"## Causal checks (emotion score s at layer {causal['readout_layer']}, "
                f"{causal['rows']} rows, 95% CI)", "",
            f"Unedited: s = {base['emotional']['mean']:.2f} when the emotion is asked for, "
            f"{base['neutral']['mean']:.2f} under the neutral request (0 = the mean over "
            "emotions, 1 = the emotion's mean).", "",
            markdown_table(["edit", "components", "k", "top", "random"], rows)]
