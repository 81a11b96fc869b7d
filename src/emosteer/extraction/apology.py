"""The shared apology: the direction an "I'm sorry" opening adds to an answer, and vectors
projected off it.

On the bundled model the anger and disgust vectors carry an apology: the answers they steer
open with "I'm sorry" (issue 29). `apology_direction` reads our neutral written answers
(data/written_answers.jsonl) teacher-forced under the neutral prompt twice, once as written
and once opened by one of our apologies, and averages the difference over the answer tokens
at each layer (the same site and positions the vectors are read at). `without` removes a
vector's component along it at each layer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from emosteer import data
from emosteer.extraction.answers import teacher_forced
from emosteer.extraction.capture import masked_means
from emosteer.models import Site, model_shape
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["APOLOGIES", "apology_direction", "without"]

APOLOGIES = ("I'm sorry. ", "I'm sorry for the confusion. ", "I'm sorry to hear that. ",
             "Sorry about that. ", "I'm so sorry. ", "I apologise. ")  # written by us


def apology_direction(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      limit: int = 60, site: Site = "attn", batch_size: int = 8
                      ) -> EmotionVector:
    """Per layer, the mean over `limit` of our neutral answers of (apology + answer) - answer,
    each averaged over its answer tokens (apology included), teacher-forced.

    Example:
        sorry = apology_direction(model, tok)
        plain_anger = without(vectors["anger"], sorry)
    """
    questions = {q.id: q.question for q in data.load_queries("emotion_query")}
    every = sorted(data.written_answers().items())  # a spread over the five emotions' questions
    written = every[::max(1, len(every) // limit)][:limit]
    total, n = None, 0
    for start in range(0, len(written), batch_size):
        chunk = written[start:start + batch_size]
        asked = [questions[i] for i, _ in chunk]
        plain = [w.neutral for _, w in chunk]
        sorry = [APOLOGIES[(start + k) % len(APOLOGIES)] + t for k, t in enumerate(plain)]
        batch = teacher_forced(model, tokenizer, asked * 2, plain + sorry)
        means = masked_means(model, batch.input_ids, batch.attention_mask,
                             batch.response_mask, site)  # (2 * b, layers, d)
        diff = (means[len(chunk):] - means[:len(chunk)]).sum(0)
        total = diff if total is None else total + diff
        n += len(chunk)
    assert total is not None, "data/written_answers.jsonl is empty"
    mean = total / n
    meta = {**model_shape(model), "emotion": "apology", "site": site, "method": "mean_diff",
            "n_queries": n, "source": "our neutral written answers, opened by an apology"}
    return EmotionVector({layer: mean[layer] for layer in range(mean.shape[0])}, meta)


def without(vector: EmotionVector, direction: EmotionVector) -> EmotionVector:
    """`vector` minus its projection on `direction`, layer by layer (layers the direction
    lacks are kept as they are); the metadata says what was removed and how much."""
    out, removed = {}, []
    for layer, v in vector.directions.items():
        d = direction.directions.get(layer)
        if d is None:
            out[layer] = v
            continue
        u = torch.nn.functional.normalize(d.float(), dim=0)
        along = float(v.float() @ u)
        out[layer] = (v.float() - along * u).to(v.dtype)
        removed.append(abs(along) / max(float(v.float().norm()), 1e-12))
    share = sum(removed) / max(len(removed), 1)
    return replace(vector, directions=out, meta={
        **vector.meta, "projected_off": direction.meta.get("emotion", "?"),
        "projected_cosine": f"{share:.3f}"})
