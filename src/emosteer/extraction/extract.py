"""Emotion vectors: emotion-conditioned minus neutral layer outputs, and the methods built on them.

For each query q and layer l: O_l(q) is the layer output averaged over the response tokens;
the offset is O_l(emotion prompt) - O_l(neutral prompt); EV_l is the offset averaged over
queries (the paper's method, `mean_diff`). EV_base is the mean of the emotions' vectors.

The other methods change one step each (ExtractConfig):
- filter="judge": average only emotional answers the judge reads as the target emotion and
  neutral answers it does not read as the target emotion (the circuits paper keeps only
  confirmed samples);
- scale="norm": each layer's vector gets the length norm_fraction x the typical norm of the
  site's output on neutral text (measured during extraction, metadata site_norms), so a
  strength means the same at every layer and in every model; scale="spread" uses the RMS
  distance of those outputs from their mean instead (site_spreads): a layer whose output is
  mostly one constant vector has a large norm but a small spread (scales.py);
- band: keep a contiguous window of layers, fixed or picked by a teacher-forced scan (bands.py);
- method="trained": start from the vector and optimise it on the same answers (train.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from emosteer import data
from emosteer.emotion_specs import EmotionSpec, load_specs, spec_for, specs_hash
from emosteer.errors import BadInputError, UnknownEmotionError
from emosteer.extraction.answers import answer_batch
from emosteer.extraction.bands import Band, banded
from emosteer.extraction.capture import masked_means
from emosteer.extraction.scales import add_squares, norm_scaled, site_stats, square_norms
from emosteer.extraction.train import PreferencePair, TrainConfig, train_vector
from emosteer.generation import (
    Batch,
    GenerateConfig,
    decode_responses,
)
from emosteer.models import Architecture, Site, model_shape
from emosteer.progress import progress_bar
from emosteer.vectors import EMOTIONS, EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Method = Literal["mean_diff", "pca", "trained"]  # mean of offsets, principal direction, optimised
Filter = Literal["none", "judge"]  # every answer, or only the ones the judge confirms
Scale = Literal["raw", "norm", "spread"]  # as read, or a fraction of the site's norm / spread
Answers = Literal["generated", "written", "prefill", "fewshot"]  # where the answers come from

_CHOICES = {"site": ("attn", "residual"), "positions": ("response", "all"),
            "context": ("own", "neutral"), "method": get_args(Method),
            "filter": get_args(Filter), "scale": get_args(Scale), "answers": get_args(Answers)}


@dataclass(frozen=True)
class ExtractConfig:
    """What extract() reads and how it turns the readings into vectors.

    Example:
        ExtractConfig(emotions=("joy", "anger"), limit=40, method="trained", band="auto")
    """

    emotions: tuple[str, ...] = EMOTIONS  # the paper's five basic emotions
    dataset: str = "emotion_query"  # our EmotionQuery: 100 questions per emotion; "sev": the
    # SEV discovery scenes, the emotion asked for in the reply request (data.elicitation)
    limit: int | None = None  # queries per emotion (seeded sample); None takes all 100
    answers: Answers = "generated"  # the paper: the model answers under each prompt;
    # "written": the answers we wrote (data/written_answers.jsonl), both read teacher-forced
    # under the neutral prompt, no generation; "prefill": the model continues our answer's
    # first sentence (emotional or neutral); "fewshot": two of our exchanges precede the
    # question (emotional or neutral), the model answers
    site: Site = "attn"  # the authors read and add at the self-attention output (notes.md)
    positions: str = "response"  # paper: mean over the T response tokens; "all" adds the prompt
    context: str = "own"  # read each response under its own prompt; "neutral": re-read the
    # emotional response under the neutral prompt, so only the response's tone differs
    method: Method = "mean_diff"  # the paper's mean of offsets; "pca": first principal
    # direction; "trained": the mean optimised on the same answers (train.py)
    center: bool = False  # subtract EV_base from every emotion (removes their shared part)
    filter: Filter = "none"  # "judge": average only the answers the judge confirms
    judge: str = "embedded"  # the judge that filters (never part of any loss)
    min_confirmed: int = 0  # filter="judge": while the judge has confirmed fewer emotional
    # answers than this, answer the emotion's questions again (new samples), up to `rounds`
    rounds: int = 1  # the most times each question is answered (1: once, the paper's)
    band: Band = None  # None: every layer; (start, stop); "auto": the best window of the scan
    band_width: int = 10  # layers of an "auto" band (the circuits paper steers 10 of 28)
    scale: Scale = "raw"  # "norm": layer l's vector is norm_fraction x site_norms[l] long;
    # "spread": norm_fraction x site_spreads[l]
    norm_fraction: float = 0.1  # what strength 1 adds, as a fraction of the site's norm
    scan_pairs: int = 8  # questions per emotion the band scan reads (teacher-forced)
    specs: tuple[EmotionSpec, ...] = ()  # dataset="emotion_specs": a user's own emotions
    # beside the shipped specs (emosteer extract --emotion smug --describe "...")
    train: TrainConfig = field(default_factory=TrainConfig)  # method="trained" only
    generation: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise BadInputError(f"{name}={getattr(self, name)!r}: choose one of "
                                    f"{', '.join(allowed)}")
        if self.dataset not in data.EXTRACTION_DATASETS:
            raise BadInputError(f"dataset={self.dataset!r}: choose one of "
                                f"{', '.join(data.EXTRACTION_DATASETS)}")
        if self.specs and self.dataset != "emotion_specs":
            raise BadInputError("specs describe emotions for dataset='emotion_specs': set it")
        known = data.emotions_of(self.dataset) + [s.name for s in self.specs]
        for emotion in self.emotions:
            if emotion not in known:
                hint = (f"; describe it: --emotion {emotion} --describe \"...\""
                        if self.dataset == "emotion_specs" else
                        "; any other emotion: --dataset emotion_specs with --describe")
                raise UnknownEmotionError(f"unknown emotion {emotion!r}: {self.dataset} has "
                                          f"{', '.join(known)}{hint}")
        if self.method == "pca" and self.filter != "none":
            raise BadInputError("method='pca' needs paired offsets: use filter='none'")
        band = self.band
        if band not in (None, "auto") and not (
                isinstance(band, tuple) and len(band) == 2 and 0 <= band[0] < band[1]):
            raise BadInputError(f"band={band!r}: use (start, stop) with 0 <= start < stop, "
                                "'auto' or None")
        if self.band_width < 1 or not self.norm_fraction > 0 or self.scan_pairs < 1:
            raise BadInputError("band_width and scan_pairs must be >= 1, norm_fraction > 0")
        if self.rounds < 1 or self.min_confirmed < 0:
            raise BadInputError(f"rounds={self.rounds}, min_confirmed={self.min_confirmed}: "
                                "use rounds >= 1 and min_confirmed >= 0")
        if self.answers != "generated" and self.dataset != "emotion_query":
            raise BadInputError(f"answers={self.answers!r} reads the answers we wrote to "
                                "emotion_query: use dataset='emotion_query'")
        if self.answers == "written" and self.rounds > 1:
            raise BadInputError("answers='written' has one fixed answer pair per question: "
                                "use rounds=1")
        if self.rounds > 1 and self.filter != "judge":
            raise BadInputError("rounds > 1 answers again until the judge has confirmed "
                                "min_confirmed answers: it needs filter='judge'")


    def spec(self, emotion: str) -> EmotionSpec:
        """The spec of an emotion of dataset="emotion_specs": a user's own, else shipped."""
        own = {s.name: s for s in self.specs}
        return own[emotion] if emotion in own else spec_for(emotion)

    def all_specs(self) -> dict[str, EmotionSpec]:
        """The shipped specs and this config's own: what a zero-shot judge reads over."""
        return {**load_specs(), **{s.name: s for s in self.specs}}


RECOMMENDED: dict[str, Any] = {"filter": "judge", "judge": "embedded-a", "context": "neutral"}
"""What the method search (`emosteer experiment frontier`, docs/frontier.md) chose on the
bundled model: the paper's mean difference over the answers judge A confirms, each emotional
answer re-read under the neutral prompt (so the vector carries the answer's tone, not the
request for it). It is the default of `emosteer extract` and `emosteer demo`, and the shipped
vectors' method (frontier method `filtered_ctx_100`: all 100 questions per emotion), so
`calibrated_like` gives a fresh extraction the shipped strengths; ExtractConfig() itself stays
the paper's recipe."""


def recommended(**changes: Any) -> ExtractConfig:
    """The recommended settings (RECOMMENDED) with `changes` on top.

    Example:
        cfg = recommended(limit=40)  # filter="judge", judge="embedded-a", context="neutral"
    """
    return ExtractConfig(**{**RECOMMENDED, **changes})


@dataclass
class Generated:
    """One batch of generations: neutral rows, then emotion rows, of the same queries."""

    emotion: str
    queries: list[data.Query]
    batch: Batch


@dataclass
class Extraction:
    vectors: dict[str, EmotionVector]  # one per emotion, plus "base"
    samples: list[dict]  # the generated responses, for inspection
    seconds: float
    used: dict[str, int]  # queries that produced a non-empty response in both settings
    generations: list[Generated] = field(default_factory=list)  # pass back to reuse them
    site_norms: list[float] = field(default_factory=list)  # per layer, on neutral answers
    site_spreads: list[float] = field(default_factory=list)  # RMS distance from their mean
    details: dict[str, dict] = field(default_factory=dict)  # per emotion: filter, scan, training


@dataclass
class _Totals:
    """Running sums of one emotion (nothing is kept per answer but token ids for training)."""

    offsets: torch.Tensor | float = 0.0  # sum of paired offsets
    emotional: torch.Tensor | float = 0.0  # filter: sum of confirmed emotional means
    neutral: torch.Tensor | float = 0.0  # filter: sum of confirmed neutral means
    n_emotional: int = 0
    n_neutral: int = 0
    used: int = 0
    pca: list[torch.Tensor] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)


def extract(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            cfg: ExtractConfig = ExtractConfig(), arch: Architecture | None = None,
            progress: bool = True, judge=None,
            generations: Sequence[Generated] | None = None) -> Extraction:
    """Generate neutral and emotional answers, read the layer outputs, make the vectors.

    Args:
        model: the model to read.
        tokenizer: its tokenizer.
        cfg: the method and its settings (ExtractConfig).
        arch: overrides the architecture table.
        progress: show a progress bar.
        judge: the judge for filter="judge" (default: load_judge(cfg.judge)); no other step
            calls it, and it never enters a loss.
        generations: an earlier Extraction's generations (same queries and generation
            settings): reused instead of generating again, so methods compare on one set.

    Example:
        result = extract(model, tok, ExtractConfig(limit=40))
        result.vectors["joy"].save("vectors/joy.safetensors")
    """
    queries = data.extraction_queries(cfg.dataset, list(cfg.emotions), cfg.limit,
                                      cfg.generation.seed)
    torch.manual_seed(cfg.generation.seed)
    if cfg.filter == "judge" and judge is None:
        from emosteer.judges.registry import load_judge

        # the zero-shot judge reads over every spec, a user's own included
        judge = load_judge(cfg.judge, **({"specs": cfg.all_specs()}
                                          if cfg.judge.startswith("zero-shot") else {}))
    totals = {e: _Totals() for e in cfg.emotions}
    squares: dict = {}  # neutral answers: sum of squared site norms per layer, tokens
    samples: list[dict] = []
    gens: list[Generated] = list(generations or [])
    start = time.perf_counter()
    batches = [(e, chunk) for e in cfg.emotions
               for chunk in _chunks([q for q in queries if q.emotion == e],
                                    cfg.generation.batch_size)]
    if gens and [(g.emotion, [q.id for q in g.queries]) for g in gens[:len(batches)]] != \
            [(e, [q.id for q in c]) for e, c in batches]:
        raise BadInputError("generations were made for other queries: extract with the same "
                            "emotions, dataset, limit, seed and batch_size")
    made = 0  # generations used so far (reused or new)

    def answer(emotion: str, chunk: list[data.Query]) -> None:
        nonlocal made
        if made < len(gens) and (gens[made].emotion, gens[made].queries) != (emotion, chunk):
            del gens[made:]  # an earlier extraction answered again elsewhere: answer anew
        if made == len(gens):
            gens.append(Generated(emotion, list(chunk),
                                  answer_batch(model, tokenizer, emotion, chunk, cfg)))
        samples.extend(_read(model, tokenizer, gens[made], cfg, arch, totals[emotion],
                             squares, judge))
        made += 1

    with progress_bar(progress, "extracting", len(queries)) as advance:
        for emotion, chunk in batches:
            answer(emotion, chunk)
            advance(len(chunk))
    for emotion in cfg.emotions:  # more answers where the judge confirmed too few
        again = [c for e, c in batches if e == emotion]
        for n in range(2, cfg.rounds + 1):
            if totals[emotion].n_emotional >= cfg.min_confirmed:
                break
            with progress_bar(progress, f"answering {emotion} again ({n}/{cfg.rounds})",
                              sum(map(len, again))) as advance:
                for chunk in again:
                    answer(emotion, chunk)
                    advance(len(chunk))
    stats = site_stats(squares)
    vectors, details = _vectors(model, tokenizer, cfg, totals, stats, arch, judge)
    return Extraction(vectors, samples, time.perf_counter() - start,
                      {e: t.used for e, t in totals.items()}, gens, stats["norm"],
                      stats["spread"], details)


def _read(model, tokenizer, gen: Generated, cfg: ExtractConfig, arch, tot: _Totals,
          squares: dict, judge) -> list[dict]:
    """Add one batch's offsets (and squared site norms of its neutral rows) to the totals."""
    n, batch = len(gen.queries), gen.batch
    texts = decode_responses(tokenizer, batch)
    # a prefilled opening sits in the prompt columns: re-reading would swap it for the neutral
    # one (and both sides already share the neutral system prompt)
    read = (_reread_under_neutral(batch, n) if cfg.context == "neutral"
            and cfg.answers != "prefill" else batch)
    mask = read.response_mask if cfg.positions == "response" else read.attention_mask
    neutral = mask.clone()
    neutral[n:] = 0  # the site norms are measured on neutral answers only
    with square_norms(model, cfg.site, neutral, arch) as sq:
        means = masked_means(model, read.input_ids, read.attention_mask, mask, cfg.site, arch)
    add_squares(squares, sq, neutral)
    ok = ((batch.response_mask[:n].sum(-1) > 0) & (batch.response_mask[n:].sum(-1) > 0)).cpu()
    diffs = (means[n:] - means[:n])[ok]  # (kept, layers, d)
    tot.offsets = tot.offsets + diffs.sum(0)
    tot.used += diffs.shape[0]
    if cfg.method == "pca":
        tot.pca.append(diffs)
    samples = [{"id": q.id, "emotion": gen.emotion, "neutral": texts[i], "emotional": texts[n + i]}
               for i, q in enumerate(gen.queries)]
    keep = ok
    if cfg.filter == "judge":
        asked = [data.elicitation(cfg.dataset, q.question, None)[0] for q in gen.queries]
        ratings = judge.rate(asked * 2, texts)
        labels = [r.label for r in ratings]
        keep = ok & torch.tensor([label == gen.emotion for label in labels[n:]])
        # neutral answers to emotional questions rarely read as "neutral" (judge A confirmed 0
        # of 40 for fear): keep those that do not read as the target emotion
        calm = ok & torch.tensor([label != gen.emotion for label in labels[:n]])
        tot.emotional = tot.emotional + means[n:][keep].sum(0)
        tot.neutral = tot.neutral + means[:n][calm].sum(0)
        tot.n_emotional += int(keep.sum())
        tot.n_neutral += int(calm.sum())
        for i, sample in enumerate(samples):
            sample.update(judged_neutral=labels[i], judged_emotional=labels[n + i])
    if cfg.method == "trained" or cfg.band == "auto":
        tot.pairs.extend(_pairs(batch, n, keep))
    return samples


def _pairs(batch: Batch, n: int, keep: torch.Tensor) -> list[PreferencePair]:
    """Neutral prompt, emotional answer, neutral answer of every kept query (token ids)."""
    p = batch.prompt_len
    ids, att, resp = batch.input_ids.cpu(), batch.attention_mask.cpu(), batch.response_mask.cpu()
    return [PreferencePair(tuple(ids[i, :p][att[i, :p].bool()].tolist()),
                           tuple(ids[n + i][resp[n + i].bool()].tolist()),
                           tuple(ids[i][resp[i].bool()].tolist()))
            for i in range(n) if keep[i]]


def _vectors(model, tokenizer, cfg: ExtractConfig, totals: dict[str, _Totals],
             stats: dict[str, list[float]], arch,
             judge) -> tuple[dict[str, EmotionVector], dict[str, dict]]:
    """The means (filtered, principal), EV_base, centring, then each emotion's finish."""
    vectors = {}
    for emotion in cfg.emotions:
        t = totals[emotion]
        if t.used == 0:
            raise RuntimeError(f"no usable responses for {emotion}: every generation was empty")
        if cfg.filter == "judge":
            if t.n_emotional == 0 or t.n_neutral == 0:
                raise BadInputError(
                    f"the judge confirmed {t.n_emotional} {emotion} and {t.n_neutral} neutral "
                    f"answers of {t.used}: raise limit or use filter='none'")
            mean = torch.as_tensor(t.emotional / t.n_emotional - t.neutral / t.n_neutral)
            name = f"{getattr(judge, 'spec', cfg.judge)}:{getattr(judge, 'version', '?')}"
            extra = {"filter": "judge", "n_neutral": str(t.n_neutral), "judge": name,
                     "n_answered": str(t.used)}
            n = t.n_emotional
        else:
            mean, extra, n = torch.as_tensor(t.offsets) / t.used, {}, t.used  # (layers, d)
        if cfg.method == "pca":
            mean = _principal(torch.cat(t.pca), mean)
        vectors[emotion] = _vector(model, mean, emotion, cfg, n, arch, stats, extra)
    base = sum(vectors.values(), start=vectors[cfg.emotions[0]] * 0.0) / len(cfg.emotions)
    vectors = {e: (v - base) if cfg.center else v for e, v in vectors.items()}
    # base records which emotions it is the mean of, so it is never mistaken for another mean
    vectors["base"] = replace(base, meta={**base.meta, "emotion": "base",
                                          "emotions": ",".join(cfg.emotions)})
    details = {}
    for emotion in cfg.emotions:
        vectors[emotion], details[emotion] = _finish(
            model, vectors[emotion].renamed(emotion), totals[emotion], cfg, stats,
            tokenizer.pad_token_id or 0, arch)
    return vectors, details


def _finish(model, vector: EmotionVector, tot: _Totals, cfg: ExtractConfig,
            stats: dict[str, list[float]], pad: int, arch) -> tuple[EmotionVector, dict]:
    """Scale, band and training, in that order, for one emotion's vector."""
    detail: dict = {"n_emotional": tot.n_emotional, "n_neutral": tot.n_neutral,
                    "pairs": len(tot.pairs)}
    if cfg.scale != "raw":
        vector = norm_scaled(vector, stats[cfg.scale], cfg.norm_fraction, cfg.scale)
    if (cfg.band == "auto" or cfg.method == "trained") and not tot.pairs:
        raise BadInputError(f"no usable answer pairs for {vector.emotion}: raise limit")
    vector, scan = banded(model, vector, cfg.band, tot.pairs[:cfg.scan_pairs], cfg.band_width,
                          cfg.train, pad, arch)
    if scan is not None:
        detail["scan"] = scan
    if cfg.method == "trained":
        result = train_vector(model, tot.pairs, vector, cfg.train, stats["norm"], pad, arch)
        vector = result.vector
        detail["train"] = {"losses": result.losses, "margins": result.margins,
                           "kls": result.kls, "seconds": result.seconds}
    return vector, detail


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


def _vector(model, mean: torch.Tensor, emotion: str, cfg: ExtractConfig, n: int, arch,
            stats: dict[str, list[float]], extra: dict[str, str]) -> EmotionVector:
    info = data.dataset_info(cfg.dataset)
    g = cfg.generation
    method = "mean_diff" if cfg.method == "trained" else cfg.method  # training comes later
    meta = {**model_shape(model, arch), "emotion": emotion, "site": cfg.site,
            "method": method, "positions": cfg.positions, "context": cfg.context,
            "centered": str(cfg.center).lower(), "dataset": info.name,
            "dataset_version": info.version, "dataset_sha256": info.sha256, "n_queries": n,
            "generation": ",".join(f"{k}={v}" for k, v in asdict(g).items()),
            "site_norms": ",".join(f"{x:.6g}" for x in stats["norm"]),
            "site_spreads": ",".join(f"{x:.6g}" for x in stats["spread"]), **extra}
    if cfg.dataset == "emotion_specs":  # the spec asked for, and its content's hash
        spec = cfg.spec(emotion)
        meta.update(spec=spec.name, spec_description=spec.description,
                    spec_sha256=specs_hash([spec]))
    if cfg.answers != "generated":  # our answers: name the file and its hash too
        written = data.dataset_info("written_answers")
        meta.update(answers=cfg.answers, answers_dataset=f"{written.name}:{written.version}",
                    answers_sha256=written.sha256)
    return EmotionVector({layer: mean[layer] for layer in range(mean.shape[0])}, meta)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
