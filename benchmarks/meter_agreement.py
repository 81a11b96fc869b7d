"""Does the emotion meter agree with the embedded judge? Held-out sentences and steered answers.

1. Held-out corpus: the 20% of emotion_corpus that neither the meter's calibration nor the
   judge trained on. Each sentence's text-level reading (the mean over its tokens) against the
   judge's probabilities: Spearman per emotion, and the accuracy of the meter's argmax on the
   sentences the judge labels with one of the meter's emotions; the same against the corpus
   labels, for reference.
2. Steered answers: EmotionQuery+ questions (evaluation only), answered unsteered and steered
   by each emotion's vector at alpha 1 and 2. Two readings of each answer: "live", taken by
   the metering hook while it was generated (registered before the steering, so it reads each
   site before the vector is added), and "reread", the finished text read again unsteered.
Where it disagrees: the judge-label -> meter-argmax confusion and the worst examples.

Targets (issue 13): Spearman >= 0.6 per emotion, argmax accuracy >= 70%.
Writes benchmarks/results/meter_agreement-<machine>.json; the last stdout line is its JSON.

    python benchmarks/meter_agreement.py [--vectors default] [--questions 4]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch
from machine_info import machine, write_results

from emosteer.data import load_queries
from emosteer.emotion_meter.fit import corpus_rows, spearman
from emosteer.emotion_meter.meter import load_meter
from emosteer.emotion_meter.read import generate_metered, read_texts
from emosteer.generation import GenerateConfig
from emosteer.judges.registry import load_judge
from emosteer.models import load_model
from emosteer.steering import steer
from emosteer.vectors import load_vectors

TARGETS = {"spearman": 0.6, "accuracy": 0.7}


def agreement(means: list[dict[str, float]], judged: list[dict[str, float]],
              emotions: tuple[str, ...], texts: list[str], truth: list[str] | None = None,
              examples: int = 6) -> dict:
    """Spearman per emotion and argmax accuracy of the meter against the judge (and labels)."""
    per = {e: round(spearman([m[e] for m in means], [j[e] for j in judged]), 3)
           for e in emotions}
    labels = [max(j, key=j.get) for j in judged]
    argmax = [max(m, key=m.get) for m in means]
    scored = [i for i, label in enumerate(labels) if label in emotions]
    hits = [argmax[i] == labels[i] for i in scored]
    out = {"n": len(means), "spearman": per,
           "spearman_mean": round(float(np.nanmean(list(per.values()))), 3),
           "argmax_accuracy": round(sum(hits) / max(len(hits), 1), 3),
           "argmax_n": len(hits),
           "judge_labels": dict(Counter(labels)),
           "confusion": _confusion([labels[i] for i in scored], [argmax[i] for i in scored])}
    if truth is not None:
        mine = [i for i, t in enumerate(truth) if t in emotions]
        out["vs_corpus_label"] = {
            "argmax_accuracy": round(sum(argmax[i] == truth[i] for i in mine) / len(mine), 3),
            "n": len(mine),
            "judge_argmax_accuracy": round(sum(labels[i] == truth[i] for i in mine) / len(mine),
                                           3)}
    wrong = sorted((i for i, hit in zip(scored, hits, strict=True) if not hit),
                   key=lambda i: -judged[i][labels[i]])[:examples]
    out["disagreements"] = [{"text": texts[i][:160], "judge": labels[i],
                             "judge_p": round(judged[i][labels[i]], 2), "meter": argmax[i],
                             "meter_mean": {e: round(v, 3) for e, v in means[i].items()}}
                            for i in wrong]
    return out


def _confusion(true: list[str], pred: list[str]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = {}
    for t, p in zip(true, pred, strict=True):
        table.setdefault(t, Counter())[p] += 1
    return {t: dict(c) for t, c in sorted(table.items())}


def held_out(model, tok, m, judge) -> dict:
    rows = corpus_rows(held_out=True)
    texts = [r["text"] for r in rows]
    means = [r.mean() for r in read_texts(model, tok, texts, m, progress=True)]
    judged = [r.probs for r in judge.rate(texts, texts)]
    return agreement(means, judged, m.emotions, texts, [r["label"] for r in rows])


def steered(model, tok, m, vectors, judge, per_emotion: int, cfg: GenerateConfig) -> dict:
    questions = [q.question for q in load_queries("emotion_query_plus", list(m.emotions),
                                                  per_emotion)]
    runs = [("none", 0.0)] + [(e, a) for e in m.emotions for a in (1.0, 2.0)]
    rows = []
    for emotion, alpha in runs:
        context = None if emotion == "none" else steer(model, vectors[emotion], alpha)
        live = generate_metered(model, tok, questions, m, context, cfg=cfg)
        chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": r.text}]
                 for q, r in zip(questions, live, strict=True)]
        again = read_texts(model, tok, chats, m)
        rows += [{"question": q, "steer": emotion, "alpha": alpha, "text": r.text,
                  "live": r.mean(), "reread": a.mean()}
                 for q, r, a in zip(questions, live, again, strict=True)]
        print(f"  steered by {emotion} at {alpha:g}: {len(live)} answers", flush=True)
    texts = [r["text"] for r in rows]
    judged = [r.probs for r in judge.rate([r["question"] for r in rows], texts)]
    out = {kind: agreement([r[kind] for r in rows], judged, m.emotions, texts)
           for kind in ("live", "reread")}
    out["by_alpha"] = _by_alpha(rows, judged)
    out["answers"] = [{k: r[k] for k in ("steer", "alpha", "text")} | {
        "live": {e: round(v, 3) for e, v in r["live"].items()},
        "judge": max(j, key=j.get)} for r, j in zip(rows, judged, strict=True)]
    return out


def _by_alpha(rows: list[dict], judged: list[dict]) -> dict:
    """Per alpha: the mean reading (live, reread) and judge probability of the steered emotion."""
    out = {}
    for alpha in sorted({r["alpha"] for r in rows if r["steer"] != "none"}):
        mine = [(r, j) for r, j in zip(rows, judged, strict=True)
                if r["alpha"] == alpha and r["steer"] != "none"]
        out[f"{alpha:g}"] = {kind: round(float(np.mean([r[kind][r["steer"]] for r, _ in mine])),
                                         3) for kind in ("live", "reread")}
        out[f"{alpha:g}"]["judge"] = round(float(np.mean([j[r["steer"]] for r, j in mine])), 3)
    plain = [(r, j) for r, j in zip(rows, judged, strict=True) if r["steer"] == "none"]
    emotions = list(rows[0]["live"])
    out["0"] = {kind: round(float(np.mean([r[kind][e] for r, _ in plain for e in emotions])), 3)
                for kind in ("live", "reread")}
    out["0"]["judge"] = round(float(np.mean([j[e] for _, j in plain for e in emotions])), 3)
    out["note"] = "alpha 0: the mean over emotions of the unsteered answers"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--vectors", default="default", help="a folder, or default (shipped)")
    parser.add_argument("--meter", default=None, help="a meter JSON (default: the shipped one)")
    parser.add_argument("--questions", type=int, default=4, help="EQ+ questions per emotion")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    start = time.time()
    model, tok = load_model(args.model)
    m = load_meter(model, args.meter)
    vectors = load_vectors(args.vectors)
    judge = load_judge("embedded")
    cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, batch_size=32)
    report = {"benchmark": "meter_agreement", "machine": info, "targets": TARGETS,
              "meter": {"layers": list(m.layers), "site": m.site,
                        "calibration": m.card.get("calibration"),
                        "model_id": m.card.get("model_id"),
                        "fitted_with_these_vectors": m.matches(vectors),
                        "validation": m.card.get("selection", {}).get("chosen")},
              "judge": "embedded", "held_out": held_out(model, tok, m, judge),
              "steered": steered(model, tok, m, vectors, judge, args.questions, cfg)}
    report["detail"] = {"steered_answers": report["steered"].pop("answers")}
    report["seconds"] = round(time.time() - start, 1)
    write_results("meter_agreement", report)


if __name__ == "__main__":
    main()
