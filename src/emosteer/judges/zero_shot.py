"""A judge for emotions no judge was trained on: any set of emotion specs, read with the MiniLM
encoder the embedded judge already ships.

Each spec's prototype is the normalised mean embedding of its description and the training
share of its example sentences (two of every three; the third is held out). zero-shot-a and
zero-shot-b read one of those two thirds each (disjoint sentences, the same description and
encoder): a second opinion, as embedded-a and embedded-b are for the five. A text's
probability of each emotion is softmax(cos(text, prototype) / T); the temperature T is the one
of a fixed grid that fits the training sentences best (lowest log loss), so nothing held out
chooses anything. `held_out_accuracy` reports how often the held-out sentences are read as
their own emotion. The trained judges (embedded, embedded-a, embedded-b) stay the instrument
for the five basic emotions; this one is for the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from emosteer.emotion_specs import EmotionSpec, load_specs, specs_hash
from emosteer.errors import BadInputError
from emosteer.judges.rating import Rating

TEMPERATURES = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
HELD_OUT_EVERY = 3  # example i is held out when i % 3 == 2

__all__ = ["ZeroShotJudge", "held_out_accuracy", "reader", "split"]

Embed = Callable[[Sequence[str]], torch.Tensor]  # texts -> (n, d) unit rows


HALVES = {"a": 0, "b": 1}  # zero-shot-a reads examples i % 3 == 0, zero-shot-b i % 3 == 1


def split(spec: EmotionSpec, half: str | None = None) -> tuple[list[str], list[str]]:
    """(training, held-out) example sentences of a spec: every third one is held out; half
    "a" or "b" keeps one of the two disjoint training thirds (a second judge from other data).
    """
    train = [t for i, t in enumerate(spec.examples)
             if reader(i) is not None and (half is None or reader(i) == half)]
    held = [t for i, t in enumerate(spec.examples) if reader(i) is None]
    return train, held


def reader(index: int) -> str | None:
    """The half ("a" or "b") whose prototypes read a spec's example `index`; None: held out."""
    return next((h for h, k in HALVES.items() if index % HELD_OUT_EVERY == k), None)


def _default_embed(texts: Sequence[str]) -> torch.Tensor:
    from emosteer.judges.embedded import embed

    return embed(texts)


class ZeroShotJudge:
    """Prototype similarity over emotion specs (see the module docstring).

    Example:
        judge = ZeroShotJudge()  # the 20 shipped specs
        judge.classify(["I can't thank you enough for staying late to help me."])[0]["label"]
    """

    eas_is_proxy = True  # scores are 100 x its probabilities
    rates_topic = False

    def __init__(self, specs: Mapping[str, EmotionSpec] | None = None,
                 embed: Embed | None = None, half: str | None = None) -> None:
        if half is not None and half not in HALVES:
            raise BadInputError(f"half must be 'a' or 'b', not {half!r}")
        self.specs = dict(load_specs() if specs is None else specs)
        if len(self.specs) < 2:
            raise BadInputError("the zero-shot judge needs at least two emotion specs to choose "
                                "between")
        self._embed = embed or _default_embed
        self.labels = list(self.specs)
        # one pass over every spec's description and training sentences
        groups = [[spec.description, *split(spec, half)[0]] for spec in self.specs.values()]
        parts = torch.split(self._embed([t for g in groups for t in g]).float(),
                            [len(g) for g in groups])
        self.prototypes = torch.stack([torch.nn.functional.normalize(p.mean(0), dim=0)
                                       for p in parts])  # (emotions, d)
        train = torch.cat([p[1:] for p in parts])  # the sentences, without the descriptions
        targets = torch.tensor([k for k, p in enumerate(parts) for _ in range(len(p) - 1)])
        self.temperature = self._fit_temperature(train, targets)
        self.spec = "zero-shot" + (f"-{half}" if half else "")
        self.version = f"{specs_hash(self.specs.values())}-T{self.temperature:g}"

    def _fit_temperature(self, train: torch.Tensor, targets: torch.Tensor) -> float:
        """The grid's temperature with the lowest log loss on the training sentences'
        embeddings (their spec's index as target)."""
        if not len(train):  # specs without examples: the grid's middle
            return TEMPERATURES[len(TEMPERATURES) // 2]
        cos = torch.nn.functional.normalize(train, dim=-1) @ self.prototypes.T
        losses = [float(torch.nn.functional.cross_entropy(cos / t, targets))
                  for t in TEMPERATURES]
        return TEMPERATURES[min(range(len(losses)), key=losses.__getitem__)]

    def similarity(self, texts: Sequence[str]) -> torch.Tensor:
        """(texts, emotions) cosine of each text with each prototype."""
        vectors = torch.nn.functional.normalize(self._embed(list(texts)).float(), dim=-1)
        return vectors @ self.prototypes.T

    def probabilities(self, texts: Sequence[str]) -> torch.Tensor:
        """(texts, emotions) softmax(cos / T), rows summing to 1."""
        return torch.softmax(self.similarity(texts) / self.temperature, dim=-1)

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
        """One Rating per answer, over the specs' names (the question is not read)."""
        out = []
        for row in self.probabilities(answers).tolist():
            probs = dict(zip(self.labels, row, strict=True))
            out.append(Rating(probs, {e: 100.0 * p for e, p in probs.items()}))
        return out

    def classify(self, texts: Sequence[str]) -> list[dict]:
        """[{"label", "probs"}] per text, as `emosteer classify` prints them."""
        return [{"label": r.label, "probs": r.probs} for r in self.rate(texts, texts)]


def held_out_accuracy(judge: ZeroShotJudge) -> dict[str, dict[str, Any]]:
    """Per emotion: the share of its held-out sentences read as itself (accuracy), its
    standard error, n, and the emotion most often read instead."""
    out: dict[str, dict[str, Any]] = {}
    for k, (name, spec) in enumerate(judge.specs.items()):
        _, held = split(spec)
        if not held:
            continue
        predicted = judge.probabilities(held).argmax(-1)
        correct = (predicted == k).float()
        acc = float(correct.mean())
        wrong = [judge.labels[int(p)] for p in predicted if int(p) != k]
        out[name] = {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / len(held)),
                     "n": len(held),
                     "confused_with": max(set(wrong), key=wrong.count) if wrong else None}
    return out
