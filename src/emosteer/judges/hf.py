"""A Hugging Face classifier as judge (spec `hf:<model id or folder>`).

Two kinds are recognised from the model's labels:
- an NLI model (labels include "entailment", e.g. facebook/bart-large-mnli as in the paper):
  zero-shot, each answer is the premise and "The writer of this text feels <label>." the
  hypothesis. probs: softmax of the entailment logits over the seven labels; scores (EAS):
  entailment against contradiction for each emotion on its own, x 100.
- a text-classification model whose labels name emotions (joy, anger, happiness, sad, ...):
  probs renormalised over the labels we know; scores are its sigmoid (multi-label models) or
  softmax probabilities x 100. Labels we cannot map are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emosteer.errors import BadInputError, ModelLoadError
from emosteer.judges.rating import LABELS, SCORED, Rating, normalise
from emosteer.models import forward_params

HYPOTHESES = {  # our wording; one short description per label
    "joy": "joyful", "anger": "angry", "sadness": "sad", "fear": "afraid",
    "disgust": "disgusted", "surprise": "surprised", "neutral": "nothing in particular",
}
HYPOTHESIS = "The writer of this text feels {}."
SYNONYMS = {
    "joy": "joy", "happy": "joy", "happiness": "joy", "joyful": "joy", "love": "joy",
    "anger": "anger", "angry": "anger", "annoyance": "anger",
    "sadness": "sadness", "sad": "sadness", "grief": "sadness",
    "fear": "fear", "afraid": "fear", "scared": "fear", "nervousness": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "none": "neutral", "others": "neutral",
}


class HFJudge:
    """A Hugging Face NLI or emotion-classification model as judge (see the module docstring).

    Args:
        model_id: a hub id or a local folder.
        batch_size: texts per forward pass.
        device: where the model runs.
        max_length: tokens kept per text.

    Example:
        judge = load_judge("hf:facebook/bart-large-mnli")  # an HFJudge
        judge.rate(["How was it?"], ["I can't stop smiling!"])[0].label
    """

    eas_is_proxy = False
    rates_topic = False

    def __init__(self, model_id: str, batch_size: int = 16, device: str = "cpu",
                 max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_id)
            self.model = AutoModelForSequenceClassification.from_pretrained(model_id)
        except OSError as err:
            raise ModelLoadError(f"could not load judge model {model_id!r}: {err}. Without "
                                 "internet use the embedded judge (--judge embedded)") from err
        self.tokenizer.padding_side = "right"  # encoders pool position 0 (BERT) or the last EOS
        self.model.to(device).eval()
        self.spec, self.device = f"hf:{model_id}", device
        self.batch_size, self.max_length = batch_size, max_length
        names = {i: str(n).lower() for i, n in self.model.config.id2label.items()}
        self.entail = next((i for i, n in names.items() if n.startswith("entail")), None)
        self.contra = next((i for i, n in names.items() if n.startswith("contra")), None)
        self.mapping = {i: SYNONYMS[n] for i, n in names.items() if n in SYNONYMS}
        if self.entail is None and not self.mapping:
            raise BadInputError(f"judge model {model_id!r} has labels {sorted(names.values())}: "
                                "neither an NLI model (entailment) nor emotion labels")
        self.mode = "nli" if self.entail is not None else "classify"
        self.version = f"{self.mode}:{getattr(self.model.config, '_commit_hash', '') or 'local'}"
        self.multi_label = (self.model.config.problem_type == "multi_label_classification")
        self.accepted = forward_params(self.model)

    def rate(self, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
        """One Rating per answer (the question is not used)."""
        if self.mode == "nli":
            return self._zero_shot(list(answers))
        return self._classify(list(answers))

    @torch.no_grad()
    def _logits(self, first: list[str], second: list[str] | None = None) -> torch.Tensor:
        out = []
        for i in range(0, len(first), self.batch_size):
            pair = (first[i:i + self.batch_size],
                    second[i:i + self.batch_size] if second is not None else None)
            enc = self.tokenizer(*[p for p in pair if p is not None], padding=True,
                                 truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            if "token_type_ids" not in self.accepted:
                enc.pop("token_type_ids", None)
            out.append(self.model(**enc).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.num_labels)

    def _zero_shot(self, texts: list[str]) -> list[Rating]:
        premises = [t or " " for t in texts for _ in LABELS]
        hypotheses = [HYPOTHESIS.format(HYPOTHESES[label]) for _ in texts for label in LABELS]
        logits = self._logits(premises, hypotheses).view(len(texts), len(LABELS), -1)
        entail = logits[..., self.entail]  # (texts, labels)
        probs = torch.softmax(entail, dim=-1)
        if self.contra is not None:  # each emotion alone: entailment vs contradiction
            alone = torch.softmax(logits[..., [self.contra, self.entail]], dim=-1)[..., 1]
        else:
            alone = torch.sigmoid(entail)
        return [Rating({label: float(p[j]) for j, label in enumerate(LABELS)},
                       {e: 100.0 * float(a[LABELS.index(e)]) for e in SCORED})
                for p, a in zip(probs, alone, strict=True)]

    def _classify(self, texts: list[str]) -> list[Rating]:
        logits = self._logits([t or " " for t in texts])  # (texts, model labels)
        soft = torch.softmax(logits, dim=-1)
        scale = torch.sigmoid(logits) if self.multi_label else soft
        ratings = []
        for s, p in zip(scale, soft, strict=True):
            mass = dict.fromkeys(LABELS, 0.0)
            scores = dict.fromkeys(SCORED, 0.0)
            for i, label in self.mapping.items():
                mass[label] += float(p[i])
                if label in scores:
                    scores[label] = max(scores[label], 100.0 * float(s[i]))
            ratings.append(Rating(normalise(mass), scores))
        return ratings

