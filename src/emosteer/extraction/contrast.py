"""Contrast pairs read without generation: the repeng / steering-vectors recipe.

The mean over (positive, negative) text pairs of the difference of layer outputs at each
text's last token. extraction.py re-exports read_pairs, where it used to live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from emosteer.errors import BadInputError
from emosteer.extraction.capture import masked_means
from emosteer.models import Architecture, Site, cache_arg, forward_params, model_shape
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def read_pairs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               pairs: list[tuple[str, str]], site: Site = "residual", batch_size: int = 16,
               emotion: str = "unnamed", arch: Architecture | None = None) -> EmotionVector:
    """Mean over pairs of (positive - negative) layer outputs at each text's last token.

    The contrast-pair recipe of repeng and steering-vectors, without generation. Texts are
    sorted by their tokens, so a batch (2 * batch_size texts) mostly shares a prefix (a
    system prompt, a template): that prefix is read once and its KV cache reused by every
    row. The LM head is skipped and only a running (layers, d) sum is kept.

    Args:
        model: the model to read.
        tokenizer: its tokenizer.
        pairs: (positive text, negative text) pairs.
        site: "residual" (the peers' choice) or "attn".
        batch_size: pairs per forward pass (2 * batch_size texts).
        emotion: the name the vector carries.
        arch: overrides the architecture table.

    Example:
        joy = read_pairs(model, tok, [("I am thrilled!", "I am here.")], emotion="joy")
    """
    if not pairs:
        raise BadInputError("read_pairs needs at least one (positive, negative) pair")
    texts = [p for p, _ in pairs] + [q for _, q in pairs]
    signs = [1.0] * len(pairs) + [-1.0] * len(pairs)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: ids[i])  # shared prefixes side by side
    total = None
    for rows in _prefix_batches([ids[i] for i in order], 2 * batch_size):
        rows = [order[r] for r in rows]
        part = _signed_last_token_sum(model, [ids[i] for i in rows], [signs[i] for i in rows],
                                      tokenizer.pad_token_id or 0, site, arch)
        total = part if total is None else total + part
    assert total is not None  # pairs is not empty
    mean = total / len(pairs)
    meta = {**model_shape(model, arch), "emotion": emotion, "site": site,
            "method": "mean_diff", "positions": "last", "n_queries": len(pairs)}
    return EmotionVector({layer: mean[layer] for layer in range(mean.shape[0])}, meta)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:  # keep a last token to read
        n += 1
    return n


def _prefix_batches(seqs: list[list[int]], size: int) -> list[list[int]]:
    """Cut sorted token lists into batches of at most size, where a batch stops when adding
    the next text would raise the tokens computed per text by more than 5% (the shared
    prefix is computed once, the rest once per row, padded to the longest)."""

    def cost(lcp: int, longest: int, n: int) -> float:
        return (lcp + n * (longest - lcp)) / n

    batches: list[list[int]] = []
    for i, seq in enumerate(seqs):
        if batches and len(batches[-1]) < size:
            rows = batches[-1]
            lcp = min((_common_prefix(seqs[rows[0]], seqs[r]) for r in rows[1:]),
                      default=len(seqs[rows[0]]) - 1)
            longest = max(len(seqs[r]) for r in rows)
            new_lcp = min(lcp, _common_prefix(seqs[rows[0]], seq))
            if cost(new_lcp, max(longest, len(seq)), len(rows) + 1) <= \
                    1.05 * cost(lcp, longest, len(rows)) or len(rows) < 2:
                rows.append(i)
                continue
        batches.append([i])
    return batches


def _signed_last_token_sum(model, seqs: list[list[int]], signs: list[float], pad: int,
                           site: Site, arch) -> torch.Tensor:
    """sum_i signs[i] * (layer outputs at the last token of seqs[i]): (layers, d)."""
    shared = 0
    limit = min(map(len, seqs)) - 1  # every row keeps at least its last token
    while shared < limit and all(s[shared] == seqs[0][shared] for s in seqs):
        shared += 1
    past = None
    params = forward_params(model)
    name = cache_arg(model)
    if len(seqs) > 1 and shared >= 4 and name is not None:
        head = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        with torch.no_grad():
            out = model(input_ids=torch.tensor([seqs[0][:shared]], device=model.device),
                        use_cache=True, **head)
        past = out[name]
        past.batch_repeat_interleave(len(seqs))
        seqs = [s[shared:] for s in seqs]
    else:
        shared = 0
    width = max(map(len, seqs))
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=model.device)
    att = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs],
                       device=model.device)  # left padding: the last column is a real token
    mask = torch.zeros_like(att)
    mask[:, -1] = 1
    full = torch.cat([torch.ones(len(seqs), shared, dtype=att.dtype, device=att.device), att], 1)
    means = masked_means(model, input_ids, full, mask, site, arch, past=past)  # (b, layers, d)
    return torch.einsum("b,bld->ld", torch.tensor(signs), means)
