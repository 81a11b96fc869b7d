"""Fit the emotion meter: choose its layer band and calibration on emotion_corpus's training part
(or, for emotions beyond the corpus' labels, on the shipped emotion specs' example sentences:
`spec_rows`).

The corpus's held-out 20% (`data.held_out_flags`, the embedded judge's test part) is never
read. The training part is split again by a seeded hash of the ids: the band and the kind of
calibration are chosen on its validation share, then the chosen one is refitted on the whole
training part.

Calibration kinds, logistic regressions on the standardised projections of the band:
- "own": each emotion reads only its own direction, averaged over the band (2 numbers each);
- "all": each emotion reads every emotion's direction, averaged over the band;
- "layers": each emotion reads every emotion's direction at every layer of the band (for 5
  emotions over 30 layers, 150 weights each): what one emotion's direction means can change
  from layer to layer;
- "softmax": the features of "layers", one multinomial logistic over the emotions and a last
  class "none of them" (neutral, surprise), so the readings compete for one unit.
The first three are one logistic per emotion (one-vs-rest).

Every token of a sentence is labelled with the sentence's label and weighted 1 / its length,
so each sentence counts once. Sentences labelled with an emotion the meter does not read
(surprise, neutral) are negatives for every emotion. Each fit is scored with every text-level
`WARMUPS` (the mean over a sentence's tokens after the first k: the first readings are taken
before the model has read enough to tell). Chosen by the mean of three validation scores:
argmax accuracy against the corpus labels, macro ROC AUC, and the mean Spearman correlation
per emotion with the embedded judge that did not train on the sentence (judges A and B learnt
disjoint halves of the training part, so every validation sentence is unseen by one of them).
"own" is tried on every band of `WIDTHS`, "all" on the best `REFINE` of those, "layers" and
"softmax" on the wide bands of `LAYER_WIDTHS` (a fit is cheap, but a shared 2-core machine
makes a hundred of them slow).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from emosteer.data import dataset_info, dataset_path, held_out_flags
from emosteer.emotion_meter.meter import Meter
from emosteer.emotion_meter.read import sequence, token_projections
from emosteer.emotions import CIRCUIT_EMOTIONS
from emosteer.errors import BadInputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.vectors import EmotionVector

__all__ = ["corpus_projections", "corpus_rows", "emotion_names", "fit_meter", "fit_projections",
           "roc_auc", "spearman", "spec_rows", "training_rows", "unseen_judgements"]

WIDTHS = (1, 3, 5, 9)  # band widths tried with "own" (and the whole vector)
LAYER_WIDTHS = (10, 20)  # band widths tried with "layers" (and the whole vector)
KINDS = ("own", "all", "layers", "softmax")
WARMUPS = (0, 1, 2, 3, 4, 6)  # first tokens left out of the text-level mean, tried per fit
VALIDATION_SHARE = 0.25  # of the training part: where the band and kind are chosen
VALIDATION_SEED = 7  # not the held-out split's seed (0) nor the judge halves' (1)
L2 = 1e-3  # light: 1e-2 and 1e-1 scored lower on the validation share ("layers", all layers)
REFINE = 6  # the best "own" bands that "all" is tried on

Calibration = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # mean, std, W, b


def fit_meter(model: PreTrainedModel, tokenizer, vectors: Mapping[str, EmotionVector],
              emotions: Sequence[str] | None = None, kinds: Sequence[str] = KINDS,
              limit: int | None = None, batch_size: int = 16, progress: bool = True) -> Meter:
    """A calibrated meter for `vectors` on `model`, its band and kind chosen by measurement.

    Args:
        model, tokenizer: the model the meter will read.
        vectors: emotion name -> vector (e.g. `load_vectors(folder)`); names outside the six
            emotions (e.g. "base") are left out unless named in `emotions`.
        emotions: the emotions to read (default: the vectors' emotions, in the usual order).
        kinds: calibration kinds to try (of "own", "all", "layers").
        limit: read at most this many training sentences per label (tests; None: all).
        batch_size: sentences per forward pass.
        progress: show a progress bar.

    Example:
        m = fit_meter(model, tok, emosteer.load_vectors("vectors"))
        m.save("meter.json"); m.card["selection"]["chosen"]
    """
    names = emotion_names(vectors, emotions)
    rows, per_layer = corpus_projections(model, tokenizer, vectors, names, limit, batch_size,
                                         progress)
    return fit_projections(vectors, names, rows, per_layer, kinds, limit,
                           unseen_judgements(rows))


def emotion_names(vectors: Mapping[str, EmotionVector], emotions: Sequence[str] | None
                  ) -> list[str]:
    """The emotions a meter reads: the given ones, else every emotion the vectors hold (the
    six in their usual order, then the others by name; "base" is not an emotion)."""
    others = sorted(e for e in vectors if e not in CIRCUIT_EMOTIONS and e != "base")
    names = list(emotions or [e for e in CIRCUIT_EMOTIONS if e in vectors] + others)
    if not names:
        raise BadInputError(f"none of the vectors {sorted(vectors)} is an emotion: name them "
                            "with emotions=[...]")
    return names


def corpus_projections(model: PreTrainedModel, tokenizer, vectors: Mapping[str, EmotionVector],
                       emotions: Sequence[str], limit: int | None = None, batch_size: int = 16,
                       progress: bool = True) -> tuple[list[dict], list[torch.Tensor]]:
    """The training sentences and, per sentence, each token's projections on the vectors at
    every layer they have: (tokens, layers, emotions). The slow part of a fit (one forward
    pass over the training part); `fit_projections` reuses it."""
    full = Meter.from_vectors(vectors, vectors[emotions[0]].layers, emotions)
    rows = training_rows(limit, emotions)
    seqs = [sequence(tokenizer, r["text"]) for r in rows]
    return rows, token_projections(model, full.site, full.band(), seqs, batch_size, progress)


def fit_projections(vectors: Mapping[str, EmotionVector], emotions: Sequence[str],
                    rows: list[dict], per_layer: list[torch.Tensor],
                    kinds: Sequence[str] = KINDS, limit: int | None = None,
                    judged: Sequence[Mapping[str, float] | None] | None = None) -> Meter:
    """Choose the band, kind and warmup on the validation share, refit on all `rows` (see the
    module). `judged`: per row, the probabilities of a judge that did not train on it
    (`unseen_judgements`), needed for the validation rows; None leaves the judge out of the
    rule (accuracy and AUC only)."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise BadInputError(f"unknown calibration kind {bad[:1]}: use {', '.join(KINDS)}")
    names = list(emotions)
    layers = list(vectors[names[0]].layers)
    labels = torch.tensor([names.index(r["label"]) if r["label"] in names else -1 for r in rows])
    val = torch.tensor(held_out_flags([r["id"] for r in rows], VALIDATION_SHARE, VALIDATION_SEED))
    seen = None
    if judged is not None:
        shown = [j for j, f in zip(judged, val.tolist(), strict=True) if f]
        if any(j is None for j in shown):
            raise BadInputError("a validation row has no judgement: pass unseen_judgements(rows)")
        seen = torch.tensor([[j[e] for e in names] for j in shown if j is not None])

    def trial(band: list[int], kind: str) -> list[dict[str, Any]]:
        fit, test = _part(per_layer, ~val), _part(per_layer, val)
        index = [layers.index(i) for i in band]
        cal = _calibrate(fit, labels[~val], index, kind)
        readings = _read(cal, test, index, kind)
        return [{"layers": band, "kind": kind, "warmup": w,
                 **_score(readings, labels[val], w, seen)}
                for w in WARMUPS]

    def merit(t: Mapping[str, Any]) -> float:
        scores = [t["accuracy"], t["auc"]] + ([t["spearman"]] if "spearman" in t else [])
        return sum(scores) / len(scores)

    trials: list[dict[str, Any]] = []
    if "own" in kinds:
        trials += [t for band in _bands(layers, WIDTHS) for t in trial(band, "own")]
    if "all" in kinds:
        own = sorted(trials, key=merit, reverse=True)[:REFINE] or [{"layers": layers}]
        bands = list(dict.fromkeys(tuple(t["layers"]) for t in own))
        trials += [t for band in bands for t in trial(list(band), "all")]
    for kind in ("layers", "softmax"):
        if kind in kinds:
            trials += [t for band in _bands(layers, LAYER_WIDTHS) for t in trial(band, kind)]
    best = max(trials, key=merit)
    chosen = Meter.from_vectors(vectors, best["layers"], names)
    mean, std, weight, bias = _calibrate(per_layer, labels,
                                         [layers.index(i) for i in best["layers"]], best["kind"])
    from_specs = any(r["id"].startswith("spec-") for r in rows)
    info = dataset_info("emotion_specs" if from_specs else "emotion_corpus")
    card: dict[str, Any] = {
        **chosen.card, "site": chosen.site, "reading": "the state before each token",
        "calibration": best["kind"],
        "corpus": {"name": info.name, "version": info.version, "sha256": info.sha256,
                   "part": "training: each spec's examples but every third (held out), and "
                           "emotion_corpus' neutral training sentences" if from_specs else
                           "training (held_out_flags share 0.2, seed 0: not read)",
                   "training_ids": len(rows), "validation_share": VALIDATION_SHARE,
                   "validation_seed": VALIDATION_SEED, "validation_ids": int(val.sum()),
                   "limit_per_label": limit},
        "selection": {"rule": "max of the mean of validation argmax accuracy, macro AUC and "
                              "mean Spearman with the judge that did not train on the sentence"
                              if seen is not None else
                              "max of (validation argmax accuracy + macro AUC) / 2",
                      "candidates": len(trials), "chosen": _rounded(best),
                      "top": [_rounded(t) for t in sorted(trials, key=merit, reverse=True)[:8]],
                      "best_per_kind": {k: _rounded(max((t for t in trials if t["kind"] == k),
                                                        key=merit)) for k in kinds}}}
    return replace(chosen, mean=mean, std=std, weight=weight, bias=bias, card=card,
                   link="softmax" if best["kind"] == "softmax" else "sigmoid",
                   warmup=best["warmup"])


def unseen_judgements(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Per training sentence, the probabilities of the embedded judge (A or B) whose half of
    the training part does not hold it: an opinion the sentence did not shape. For
    `spec_rows`, the zero-shot half (zero-shot-a or -b) that did not read the sentence
    (neutral sentences, read by neither: zero-shot-a).

    Example:
        unseen_judgements(corpus_rows(held_out=False)[:3])  # [{"joy": 0.8, ...}, ...]
    """
    from emosteer.judges.embedded import training_flags
    from emosteer.judges.registry import load_judge

    texts = [r["text"] for r in rows]
    out: list[dict[str, float]] = [{} for _ in rows]
    if any(r["id"].startswith("spec-") for r in rows):  # spec_rows: the zero-shot halves
        from emosteer.judges.zero_shot import reader

        def unseen_by(row: Mapping[str, Any]) -> str:
            if not row["id"].startswith("spec-"):
                return "zero-shot-a"  # a neutral sentence: neither half read it
            read = reader(int(row["id"].rsplit("-", 1)[1]))
            return "zero-shot-b" if read == "a" else "zero-shot-a"

        names = [unseen_by(r) for r in rows]
    else:  # the corpus: a sentence judge A learnt is judged by B, any other by A
        names = ["embedded-b" if flag else "embedded-a"
                 for flag in training_flags([r["id"] for r in rows], half="a")]
    groups = {judge: [i for i, n in enumerate(names) if n == judge] for judge in set(names)}
    for judge, index in sorted(groups.items()):
        ratings = load_judge(judge).rate([texts[i] for i in index], [texts[i] for i in index])
        for i, r in zip(index, ratings, strict=True):
            out[i] = dict(r.probs)
    return out


def _part(items: list[torch.Tensor], flags: torch.Tensor) -> list[torch.Tensor]:
    return [x for x, f in zip(items, flags, strict=True) if f]


def corpus_rows(held_out: bool) -> list[dict]:
    """emotion_corpus's held-out part (the judge's test 20%) or its training part.

    Example:
        len(corpus_rows(held_out=True))  # about 440 sentences
    """
    with dataset_path("emotion_corpus").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    flags = held_out_flags([r["id"] for r in rows])
    return [r for r, held in zip(rows, flags, strict=True) if held == held_out]


def spec_rows() -> list[dict]:
    """The shipped emotion specs' example sentences outside their held-out third (the third
    the zero-shot judge's accuracy is measured on), id "spec-<emotion>-<index>", and the
    corpus' neutral training sentences: what a meter reading emotions beyond the corpus' six
    learns from (every spec's sentences; a spec the meter does not read is a negative)."""
    from emosteer.emotion_specs import load_specs
    from emosteer.judges.zero_shot import reader

    rows = [{"id": f"spec-{name}-{i:02d}", "label": name, "text": text}
            for name, spec in load_specs().items() for i, text in enumerate(spec.examples)
            if reader(i) is not None]
    return rows + [r for r in corpus_rows(held_out=False) if r["label"] == "neutral"]


def training_rows(limit: int | None, emotions: Sequence[str] = ()) -> list[dict]:
    """The sentences a meter for `emotions` learns from (at most `limit` per label):
    emotion_corpus's training part where it labels every one of them, else `spec_rows`."""
    beyond = [e for e in emotions if e not in CIRCUIT_EMOTIONS]
    kept = spec_rows() if beyond else corpus_rows(held_out=False)
    unknown = sorted({*beyond} - {r["label"] for r in kept})
    if unknown:
        raise BadInputError(f"no labelled sentences for {', '.join(unknown)}: a meter reads "
                            "the five basic emotions, surprise, or the shipped emotion specs")
    if limit is None:
        return kept
    counts: dict[str, int] = {}
    out = []
    for r in kept:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
        if counts[r["label"]] <= limit:
            out.append(r)
    return out


def _bands(layers: list[int], widths: Sequence[int]) -> list[list[int]]:
    """Windows of consecutive layers of each width (stride half a width, rounded up), and all."""
    out = [layers]
    for width in widths:
        if width >= len(layers):
            continue
        step = max(1, (width + 1) // 2)
        out += [layers[s:s + width] for s in range(0, len(layers) - width + 1, step)]
    return [list(b) for b in dict.fromkeys(tuple(b) for b in out)]


def _calibrate(per_layer: list[torch.Tensor], labels: torch.Tensor, index: list[int],
               kind: str) -> Calibration:
    """A kind's calibration over the band `index` (positions in the vectors' layers), in the
    meter's form: over the per-layer features (layers * emotions), layer-major."""
    if kind in ("layers", "softmax"):
        x = [p[:, index].flatten(1) for p in per_layer]
        n = per_layer[0].shape[-1] if per_layer else 0
        return _fit(x, labels, torch.ones(n + (kind == "softmax"), len(index) * n),
                    softmax=kind == "softmax")
    x = [p[:, index].mean(1) for p in per_layer]  # (tokens, emotions): the band means
    n = x[0].shape[-1]
    mean, std, w, b = _fit(x, labels, torch.eye(n) if kind == "own" else torch.ones(n, n))
    # the same function of the per-layer features: mean_l p_le = sum_l p_le / L
    weight = (w / std).repeat(1, len(index)) / len(index)  # (emotions, layers * emotions)
    bias = b - (w * mean / std).sum(1)
    return torch.zeros(weight.shape[1]), torch.ones(weight.shape[1]), weight, bias


def _fit(raw: list[torch.Tensor], labels: torch.Tensor, mask: torch.Tensor,
         softmax: bool = False) -> Calibration:
    """(mean, std, weight, bias) of a one-vs-rest logistic per emotion on token features.

    raw: per sentence (tokens, features); labels: per sentence, an emotion index or -1;
    mask: (emotions, features), which weights may be non-zero; softmax: one multinomial
    logistic instead, mask and weights with one more row, the class "none of them".
    """
    x = torch.cat(raw)  # (tokens, features)
    n = mask.shape[0]
    lengths = torch.tensor([len(r) for r in raw])
    weights = torch.repeat_interleave(1.0 / lengths.clamp(min=1).float(), lengths)  # (tokens,)
    target = torch.zeros(len(raw), n)
    target[labels >= 0, labels[labels >= 0]] = 1.0
    if softmax:
        target[labels < 0, -1] = 1.0
    target = torch.repeat_interleave(target, lengths, dim=0)  # (tokens, emotions)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w = torch.zeros(mask.shape, requires_grad=True)
    b = torch.zeros(n, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ (w * mask).T + b
        if softmax:
            per_token = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        else:
            per_token = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, target, reduction="none").sum(1)
        loss = (per_token * weights).sum() / weights.sum() + 0.5 * L2 * (w * mask).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, (w * mask).detach(), b.detach()


def _read(cal: Calibration, per_layer: list[torch.Tensor], index: list[int],
          kind: str) -> list[torch.Tensor]:
    """Per sentence, its tokens' readings (tokens, emotions) under a calibration."""
    mean, std, weight, bias = cal
    n = per_layer[0].shape[-1] if per_layer else 0
    out = []
    for p in per_layer:
        logits = ((p[:, index].flatten(1) - mean) / std) @ weight.T + bias
        out.append(torch.softmax(logits, -1)[:, :n] if kind == "softmax"
                   else torch.sigmoid(logits))
    return out


def _score(readings: list[torch.Tensor], labels: torch.Tensor, warmup: int,
           judged: torch.Tensor | None) -> dict[str, float]:
    """Validation: argmax accuracy on the emotion sentences, macro AUC over all sentences and,
    with `judged` (sentences, emotions), the mean Spearman per emotion with those probabilities;
    the text-level reading is the mean over tokens after the first `warmup` (Readings.mean)."""
    n = readings[0].shape[-1] if readings else 0
    text = torch.stack([(r[warmup:] if len(r) > warmup else r).mean(0) if len(r)
                        else torch.zeros(n) for r in readings])
    emotional = labels >= 0
    accuracy = float((text[emotional].argmax(-1) == labels[emotional]).float().mean())
    aucs = [roc_auc(text[:, e], labels == e) for e in range(n)]
    out = {"accuracy": accuracy, "auc": sum(aucs) / len(aucs)}
    if judged is not None:
        out["spearman"] = sum(spearman(text[:, e], judged[:, e]) for e in range(n)) / n
    return out


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman's rank correlation (ties get their mean rank); nan when a side is constant.

    Example:
        spearman([1, 2, 3], [10, 30, 20])  # 0.5
    """
    ra, rb = _ranks(torch.as_tensor(a, dtype=torch.float64)), _ranks(
        torch.as_tensor(b, dtype=torch.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank of each distinct value's first copy
    return (first + (counts - 1) / 2).to(torch.float64)[inverse]


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The probability that a random positive scores above a random negative (ties: half).

    Example:
        roc_auc(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([True, False, False]))  # 1.0
    """
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    above = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    return float(above.mean())


def _rounded(trial: Mapping[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in trial.items()}
