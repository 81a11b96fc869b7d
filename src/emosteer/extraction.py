"""The Emotion Vector method: emotion-conditioned minus neutral layer outputs, averaged.

For each query q and layer l: O_l(q) is the layer output averaged over the response tokens;
the offset is O_l(emotion prompt) - O_l(neutral prompt); EV_l is the offset averaged over
queries. EV_base is the mean of the emotions' vectors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch

from emosteer import data
from emosteer.capture import masked_means
from emosteer.errors import BadInputError, UnknownEmotionError
from emosteer.generation import Batch, GenerateConfig, chat_prompt, decode_responses, generate
from emosteer.models import Architecture, cache_arg, forward_params, model_shape
from emosteer.progress import progress_bar
from emosteer.vectors import EMOTIONS, EmotionVector

_CHOICES = {"site": ("attn", "residual"), "positions": ("response", "all"),
            "context": ("own", "neutral"), "method": ("mean_diff", "pca")}


@dataclass(frozen=True)
class ExtractConfig:
    emotions: tuple[str, ...] = EMOTIONS  # the paper's five basic emotions
    dataset: str = "emotion_query"  # our EmotionQuery: 100 questions per emotion
    limit: int | None = None  # queries per emotion (seeded sample); None takes all 100
    site: str = "attn"  # the authors read and add at the self-attention output (notes.md)
    positions: str = "response"  # paper: mean over the T response tokens; "all" adds the prompt
    context: str = "own"  # read each response under its own prompt; "neutral": re-read the
    # emotional response under the neutral prompt, so only the response's tone differs
    method: str = "mean_diff"  # the paper's mean of offsets; "pca": first principal direction
    center: bool = False  # subtract EV_base from every emotion (removes their shared part)
    generation: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise BadInputError(f"{name}={getattr(self, name)!r}: choose one of "
                                    f"{', '.join(allowed)}")
        known = data.emotions_of(self.dataset)
        for emotion in self.emotions:
            if emotion not in known:
                raise UnknownEmotionError(f"unknown emotion {emotion!r}: {self.dataset} has "
                                          f"{', '.join(known)}")


@dataclass
class Extraction:
    vectors: dict[str, EmotionVector]  # one per emotion, plus "base"
    samples: list[dict]  # the generated responses, for inspection
    seconds: float
    used: dict[str, int]  # queries that produced a non-empty response in both settings


def extract(model, tokenizer, cfg: ExtractConfig = ExtractConfig(),
            arch: Architecture | None = None, progress: bool = True) -> Extraction:
    queries = data.load_queries(cfg.dataset, list(cfg.emotions), cfg.limit, cfg.generation.seed)
    torch.manual_seed(cfg.generation.seed)
    sums: dict[str, torch.Tensor] = {}
    offsets: dict[str, list[torch.Tensor]] = {e: [] for e in cfg.emotions}
    used = dict.fromkeys(cfg.emotions, 0)
    samples: list[dict] = []
    start = time.perf_counter()
    batches = [(e, chunk) for e in cfg.emotions
               for chunk in _chunks([q for q in queries if q.emotion == e],
                                    cfg.generation.batch_size)]
    with progress_bar(progress, "extracting", len(queries)) as advance:
        for emotion, chunk in batches:
            diffs, texts = _offsets(model, tokenizer, chunk, emotion, cfg, arch)
            sums[emotion] = sums.get(emotion, 0) + diffs.sum(0)
            used[emotion] += diffs.shape[0]
            if cfg.method == "pca":
                offsets[emotion].append(diffs)
            samples.extend(texts)
            advance(len(chunk))
    vectors = {}
    for emotion in cfg.emotions:
        if used[emotion] == 0:
            raise RuntimeError(f"no usable responses for {emotion}: every generation was empty")
        mean = sums[emotion] / used[emotion]  # (layers, d)
        if cfg.method == "pca":
            mean = _principal(torch.cat(offsets[emotion]), mean)
        vectors[emotion] = _vector(model, mean, emotion, cfg, used[emotion], arch)
    base = sum(vectors.values(), start=vectors[cfg.emotions[0]] * 0.0) / len(cfg.emotions)
    vectors = {e: (v - base) if cfg.center else v for e, v in vectors.items()}
    # base records which emotions it is the mean of, so it is never mistaken for another mean
    vectors["base"] = replace(base, meta={**base.meta, "emotion": "base",
                                          "emotions": ",".join(cfg.emotions)})
    for emotion in cfg.emotions:
        vectors[emotion] = vectors[emotion].renamed(emotion)
    return Extraction(vectors, samples, time.perf_counter() - start, used)


def read_pairs(model, tokenizer, pairs: list[tuple[str, str]], site: str = "residual",
               batch_size: int = 16, emotion: str = "unnamed",
               arch: Architecture | None = None) -> EmotionVector:
    """Mean over pairs of (positive - negative) layer outputs at each text's last token.

    The contrast-pair recipe of repeng and steering-vectors, without generation. Texts are
    sorted by their tokens, so a batch (2 * batch_size texts) mostly shares a prefix (a
    system prompt, a template): that prefix is read once and its KV cache reused by every
    row. The LM head is skipped and only a running (layers, d) sum is kept.
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
                           site: str, arch) -> torch.Tensor:
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


def _offsets(model, tokenizer, chunk, emotion, cfg: ExtractConfig, arch):
    """Per-query offsets (kept, layers, d) for one batch, and the texts generated."""
    n = len(chunk)
    prompts = ([chat_prompt(tokenizer, q.question, data.system_prompt(None)) for q in chunk]
               + [chat_prompt(tokenizer, q.question, data.system_prompt(emotion)) for q in chunk])
    batch = generate(model, tokenizer, prompts, cfg.generation)  # neutral rows, then emotion
    texts = decode_responses(tokenizer, batch)
    batch = _reread_under_neutral(batch, n) if cfg.context == "neutral" else batch
    mask = batch.response_mask if cfg.positions == "response" else batch.attention_mask
    means = masked_means(model, batch.input_ids, batch.attention_mask, mask, cfg.site, arch)
    ok = (batch.response_mask[:n].sum(-1) > 0) & (batch.response_mask[n:].sum(-1) > 0)
    diffs = (means[n:] - means[:n])[ok.cpu()]  # (kept, layers, d)
    samples = [{"id": q.id, "emotion": emotion, "neutral": texts[i], "emotional": texts[n + i]}
               for i, q in enumerate(chunk)]
    return diffs, samples


def _reread_under_neutral(batch: Batch, n: int) -> Batch:
    """Emotion rows get the neutral prompt of the same query (both padded to prompt_len)."""
    p = batch.prompt_len
    ids = batch.input_ids.clone()
    att = batch.attention_mask.clone()
    ids[n:, :p] = batch.input_ids[:n, :p]
    att[n:, :p] = batch.attention_mask[:n, :p]
    return Batch(ids, att, batch.response_mask, p)


def _principal(offsets: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Per layer, the first right singular vector of the offsets, signed and scaled like the mean.

    offsets: (queries, layers, d); returns (layers, d) with direction u_l and length mean_l . u_l.
    """
    out = []
    for layer in range(offsets.shape[1]):
        u = torch.linalg.svd(offsets[:, layer].double(), full_matrices=False).Vh[0].float()
        scale = float(mean[layer] @ u)
        out.append(u * scale)  # a negative scale flips u to agree with the mean
    return torch.stack(out)


def _vector(model, mean: torch.Tensor, emotion: str, cfg: ExtractConfig, n: int,
            arch) -> EmotionVector:
    info = data.dataset_info(cfg.dataset)
    g = cfg.generation
    meta = {**model_shape(model, arch), "emotion": emotion, "site": cfg.site,
            "method": cfg.method, "positions": cfg.positions, "context": cfg.context,
            "centered": str(cfg.center).lower(), "dataset": info.name,
            "dataset_version": info.version, "dataset_sha256": info.sha256, "n_queries": n,
            "generation": ",".join(f"{k}={v}" for k, v in asdict(g).items())}
    return EmotionVector({layer: mean[layer] for layer in range(mean.shape[0])}, meta)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
