"""`emosteer discover`: from SEV prompts to directions, ranked components, causal checks, circuit.

1. Generate: every discovery scene answered under each emotion's explicit request and under
   the neutral request; the judge keeps the emotional answers it confirms.
2. Directions: last prompt token, per layer, emotion mean minus the mean over emotions.
3. Components: each head's and neuron's share of the emotion shift along the direction.
4. Causal checks on held-out test scenes: ablate / enhance the top k against k random
   components of the same layers; sublayer influence by adding each sublayer's emotion shift.
5. Circuit: the top `budget` components by share x sublayer influence.
Emotion vectors (the other paper's method) are extracted from the same generations, so the
comparison of prompting, steering and circuits runs on one dataset.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from emosteer import data
from emosteer.circuits import analysis as A
from emosteer.circuits.circuit import EmotionCircuit, build
from emosteer.circuits.components import KINDS, Parts, parts, reading_last
from emosteer.emotions import CIRCUIT_EMOTIONS
from emosteer.errors import BadInputError
from emosteer.extraction.capture import masked_means
from emosteer.generation import GenerateConfig, chat_prompt, decode_responses, generate
from emosteer.models import Architecture, model_shape
from emosteer.progress import progress_bar
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emosteer.judges.registry import Judge


@dataclass(frozen=True)
class DiscoverConfig:
    """What `discover` reads and checks; one comment per default says why.

    Example:
        cfg = DiscoverConfig(emotions=("joy", "anger"), skeletons=10, budget=64)
    """

    emotions: tuple[str, ...] = CIRCUIT_EMOTIONS  # the circuits paper's six
    skeletons: int | None = 30  # discovery skeletons (x 3 valences); None: all of them
    test_skeletons: int | None = 30  # held-out skeletons for the causal checks
    budget: int = 128  # components per emotion in the circuit (heads + neurons)
    ks: tuple[int, ...] = (1, 4, 16, 64, 256)  # how many components the checks ablate/enhance
    readout_layer: int = -1  # where the emotion score s is read (default: the last layer)
    min_kept: int = 4  # fewer confirmed answers: the emotion's directions use every answer
    seed: int = 0
    generation: GenerateConfig = field(default_factory=lambda: GenerateConfig(
        max_new_tokens=40))  # "one or two sentences"

    def __post_init__(self) -> None:
        unknown = [e for e in self.emotions if e not in data.templates()["adjectives"]]
        if unknown or len(self.emotions) < 2:
            raise BadInputError(f"emotions {list(self.emotions)}: need at least two of "
                                f"{', '.join(data.templates()['adjectives'])}")
        if self.budget < 1 or not self.ks or min(self.ks) < 1:
            raise BadInputError("budget and every k must be at least 1")


@dataclass
class Discovery:
    circuit: EmotionCircuit
    directions: torch.Tensor  # (emotions, layers, d) unit
    scores: dict[str, torch.Tensor]  # kind -> (emotions, layers, components) local shares
    vectors: dict[str, EmotionVector]  # emotion vectors (attention output) from the same data
    summary: dict  # counts, consistency, causal curves, influence, timings
    samples: list[dict]  # every generated answer with its judge label
    states: torch.Tensor  # (n, layers, d) last-token states the directions were read from
    labels: list[str]  # emotion of each state
    contexts: list[str]  # "skeleton/valence" of each state


def discover(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
             cfg: DiscoverConfig = DiscoverConfig(), judge: Judge | None = None,
             arch: Architecture | None = None, progress: bool = True) -> Discovery:
    """Find each emotion's context-agnostic direction, heads and neurons, check them causally
    on held-out scenes, and assemble the global circuit (the emotion-circuits method).

    Args:
        model, tokenizer: from `emosteer.load_model`.
        cfg: scenes, budget, checks and decoding (see DiscoverConfig).
        judge: confirms which answers express the emotion asked for (default: embedded).
        arch: overrides the architecture table entry.
        progress: show rich progress bars.

    Example:
        result = emosteer.discover(model, tok, emosteer.DiscoverConfig(skeletons=10))
        result.circuit.save("circuits/circuit.safetensors")
    """
    from emosteer.judges.registry import load_judge

    judge = judge or load_judge("embedded")
    p = parts(model, arch)
    emotions = list(cfg.emotions)
    start = time.perf_counter()
    scenes = data.load_sev("discovery", cfg.skeletons, cfg.seed)
    # 1. generations under each request; the judge confirms the emotional ones
    gen = _generate_and_judge(model, tokenizer, scenes, emotions, judge, cfg, arch, progress)
    times = {"generate_and_judge_s": time.perf_counter() - start}
    # 2. and 3. directions from last-token reads; component shares of each emotion's shift
    t0 = time.perf_counter()
    att = _attribute(model, tokenizer, gen, emotions, p, cfg, arch, progress)
    times["attribute_s"] = time.perf_counter() - t0
    # 4. causal checks on held-out scenes
    t0 = time.perf_counter()
    readout_layer = cfg.readout_layer % p.n_layers
    readout = A.Readout.fit(att.residual, att.labels, emotions, att.dirs, readout_layer)
    test = data.load_sev("test", cfg.test_skeletons, cfg.seed)
    causal, influence = _causal(model, tokenizer, test, emotions, p, readout, att.shifts,
                                att.local, cfg, arch, progress)
    times["causal_s"] = time.perf_counter() - t0
    # 5. the global circuit: share of its sublayer's shift x that sublayer's influence
    circuit = _global_circuit(model, p, att.local, influence, att.shifts, emotions,
                              len(scenes) // 3, readout_layer, cfg, arch)
    vectors = _emotion_vectors(model, gen.response_means, gen.rows, gen.confirmed, emotions,
                               cfg, arch)
    times["total_s"] = time.perf_counter() - start
    summary = {
        "config": {**asdict(cfg), "generation": asdict(cfg.generation)},
        "model": model_shape(model, arch), "judge": f"{judge.spec}@{judge.version}",
        "layers": p.n_layers, "heads": p.n_heads,
        "neurons": p.n_neurons, "scenes": len(scenes), "test_scenes": len(test),
        **_counts(gen, emotions, att.kept, cfg.min_kept),
        "consistency": att.consistency, "causal": causal,
        "influence": {k: influence[k].tolist() for k in KINDS},
        "circuit_size": {e: circuit.size(e) for e in emotions},
        "seconds": times,
    }
    contexts = [f"{gen.rows[i][0].id}/{gen.rows[i][0].valence}" for i in att.use]
    return Discovery(circuit, att.dirs, att.local, vectors, summary, gen.samples, att.residual,
                     att.labels, contexts)


@dataclass
class _Generations:
    rows: list  # (scene, emotion asked or "neutral")
    prompts: list[str]
    samples: list[dict]
    confirmed: list[bool]  # the judge read the emotion that was asked for
    response_means: torch.Tensor  # (rows, layers, d) attention-output means over the answer


def _generate_and_judge(model, tokenizer, scenes, emotions, judge, cfg: DiscoverConfig, arch,
                        progress) -> _Generations:
    rows = [(s, e) for s in scenes for e in [*emotions, "neutral"]]
    prompts = [chat_prompt(tokenizer, data.sev_request(s, e), None) for s, e in rows]
    texts, response_means = _generate(model, tokenizer, prompts, cfg.generation, arch, progress)
    ratings = judge.rate([data.sev_request(s, None) for s, _ in rows], texts)
    samples = [{"id": s.id, "valence": s.valence, "asked": e, "judged": r.label, "text": t}
               for (s, e), t, r in zip(rows, texts, ratings, strict=True)]
    confirmed = [x["asked"] == x["judged"] for x in samples]
    return _Generations(rows, prompts, samples, confirmed, response_means)


@dataclass
class _Attribution:
    """Stages 2 and 3: what the last-token reads of the emotional prompts give."""

    kept: dict[str, int]  # confirmed answers per emotion
    use: list[int]  # the rows read: confirmed emotional ones (all of a sparse emotion's)
    labels: list[str]  # emotion of each row read
    residual: torch.Tensor  # (n, layers, d) last-token residual states
    dirs: torch.Tensor  # (emotions, layers, d) unit directions
    consistency: dict  # cosines across halves, valences and emotions
    shifts: dict[str, torch.Tensor]  # kind -> (emotions, layers, components) centred means
    local: dict[str, torch.Tensor]  # kind -> (emotions, layers, components) local shares


def _attribute(model, tokenizer, gen: _Generations, emotions, p: Parts, cfg: DiscoverConfig,
               arch, progress) -> _Attribution:
    """Directions from the last-token reads (kept answers, or all for a sparse emotion) and
    each component's share of each emotion's shift along them."""
    kept = {e: sum(c for c, (_, a) in zip(gen.confirmed, gen.rows, strict=True) if a == e)
            for e in emotions}
    use = [i for i, (_, e) in enumerate(gen.rows) if e != "neutral"
           and (gen.confirmed[i] or kept[e] < cfg.min_kept)]
    reads = _read_prompts(model, tokenizer, [gen.prompts[i] for i in use], p, arch, progress)
    labels = [gen.rows[i][1] for i in use]
    dirs = A.directions(reads["residual"], labels, emotions)
    consistency = _consistency(reads["residual"], labels, [gen.rows[i][0] for i in use],
                               emotions, dirs, cfg.seed)
    shifts = {k: _centred_means(reads[k], labels, emotions) for k in KINDS}
    local = A.component_scores(p, shifts, dirs)
    return _Attribution(kept, use, labels, reads["residual"], dirs, consistency, shifts, local)


def _counts(gen: _Generations, emotions, kept: dict[str, int], min_kept: int) -> dict:
    """The summary's answer counts: confirmed, asked, neutral read as neutral, unfiltered."""
    return {
        "confirmed": kept,
        "asked": {e: sum(1 for _, a in gen.rows if a == e) for e in [*emotions, "neutral"]},
        "neutral_judged_neutral": sum(1 for x in gen.samples if x["asked"] == "neutral"
                                      and x["judged"] == "neutral"),
        "unfiltered": [e for e in emotions if kept[e] < min_kept],
    }


def _global_circuit(model, p: Parts, local, influence, shifts, emotions, skeletons: int,
                    readout_layer: int, cfg: DiscoverConfig, arch) -> EmotionCircuit:
    scores = {e: {k: _share(local[k][i]) * influence[k][i].clamp(min=0)[:, None]
                  for k in KINDS} for i, e in enumerate(emotions)}
    info = data.dataset_info("sev")
    meta = {**model_shape(model, arch), "n_heads": p.n_heads, "head_dim": p.head_dim,
            "n_neurons": p.n_neurons, "dataset": "sev", "dataset_version": info.version,
            "dataset_sha256": info.sha256, "skeletons": skeletons,
            "readout_layer": readout_layer}
    return build(scores, shifts, emotions, cfg.budget, p, meta)


def _generate(model, tokenizer, prompts, cfg: GenerateConfig, arch, progress):
    """Answers, and each answer's mean attention-output state per layer (for vectors)."""
    torch.manual_seed(cfg.seed)
    texts, means = [], []
    with progress_bar(progress, "generating", len(prompts)) as advance:
        for i in range(0, len(prompts), cfg.batch_size):
            batch = generate(model, tokenizer, prompts[i:i + cfg.batch_size], cfg)
            texts.extend(decode_responses(tokenizer, batch))
            means.append(masked_means(model, batch.input_ids, batch.attention_mask,
                                      batch.response_mask, "attn", arch))
            advance(batch.input_ids.shape[0])
    return texts, torch.cat(means)


@torch.no_grad()
def _read_prompts(model, tokenizer, prompts, p: Parts, arch, progress, batch_size: int = 32
                  ) -> dict:
    from emosteer.generation import encode, forward_kwargs

    with reading_last(model, p, arch) as out, \
            progress_bar(progress, "reading", len(prompts)) as advance:
        for i in range(0, len(prompts), batch_size):
            enc = encode(tokenizer, prompts[i:i + batch_size], model.device)
            model(**forward_kwargs(model, enc["input_ids"], enc["attention_mask"]),
                  use_cache=False)
            advance(enc["input_ids"].shape[0])
    return {k: torch.cat(v) for k, v in out.items()}


def _centred_means(states: torch.Tensor, labels, emotions) -> torch.Tensor:
    means = A.emotion_means(states, labels, emotions)
    return means - means.mean(0, keepdim=True)


def _share(scores: torch.Tensor) -> torch.Tensor:
    """Each component's share of its layer's positive writes: (layers, components)."""
    positive = scores.clamp(min=0)
    return positive / positive.sum(-1, keepdim=True).clamp(min=1e-12)


def _consistency(residual, labels, scenes, emotions, dirs, seed) -> dict:
    """Cosines per layer between directions found on disjoint halves and across valences."""
    def half(scene) -> int:
        return hashlib.sha256(f"{seed}:{scene.id}".encode()).digest()[0] % 2

    def subset_dirs(keep) -> torch.Tensor | None:
        idx = [i for i, s in enumerate(scenes) if keep(s)]
        sub = [labels[i] for i in idx]
        if any(sub.count(e) == 0 for e in emotions):
            return None
        return A.directions(residual[idx], sub, emotions)

    out = {"cross_emotion": A.cross_emotion_cosine(dirs).tolist()}
    a, b = subset_dirs(lambda s: half(s) == 0), subset_dirs(lambda s: half(s) == 1)
    if a is not None and b is not None:
        out["halves"] = A.agreement(a, b).mean(0).tolist()
    by_valence = {v: subset_dirs(lambda s, v=v: s.valence == v) for v in data.VALENCES}
    pairs = [(x, y) for i, x in enumerate(data.VALENCES) for y in data.VALENCES[i + 1:]
             if by_valence[x] is not None and by_valence[y] is not None]
    found = {v: d for v, d in by_valence.items() if d is not None}
    if pairs:
        out["valences"] = torch.stack([A.agreement(found[x], found[y]).mean(0)
                                       for x, y in pairs]).mean(0).tolist()
    return out


def _causal(model, tokenizer, test, emotions, p: Parts, readout, shifts, local, cfg, arch,
            progress):
    """Ablation/enhancement curves and sublayer influence on held-out scenes."""
    e_count = len(emotions)
    emotional = [chat_prompt(tokenizer, data.sev_request(s, e), None)
                 for e in emotions for s in test]
    neutral = [chat_prompt(tokenizer, data.sev_request(s, None), None)
               for _ in emotions for s in test]
    index = torch.tensor([i for i in range(e_count) for _ in test])
    on_emotional = A.LastToken(model, tokenizer, emotional, p, readout, arch=arch)
    on_neutral = A.LastToken(model, tokenizer, neutral, p, readout, arch=arch)
    conditions, sublayers = _edit_conditions(p, local, shifts, index, e_count, cfg)
    base = {"emotional": on_emotional.scores(index), "neutral": on_neutral.scores(index)}
    with progress_bar(progress, "causal checks", len(conditions) + len(sublayers)) as advance:
        curves = []
        for labels, make in conditions:
            runner = on_emotional if labels["mode"] == "ablate" else on_neutral
            values = runner.scores(index, make())
            per = [A.mean_ci(values[index == i]) for i in range(e_count)]
            mean, half = A.mean_ci(values)
            curves.append({**labels, "mean": mean, "ci95": half,
                           "per_emotion": {e: per[i][0] for i, e in enumerate(emotions)}})
            advance(1)
        influence_rows = []
        for _labels, make in sublayers:
            delta = on_neutral.scores(index, make()) - base["neutral"]
            influence_rows.append([float(delta[index == i].mean()) for i in range(e_count)])
            advance(1)
    influence = {kind: torch.tensor([influence_rows[j] for j, (lab, _) in enumerate(sublayers)
                                     if lab["kind"] == kind]).T  # (emotions, layers)
                 for kind in KINDS}
    causal = {"baseline": {name: {**dict(zip(("mean", "ci95"), A.mean_ci(v), strict=True)),
                                  "per_emotion": {e: float(v[index == i].mean())
                                                  for i, e in enumerate(emotions)}}
                           for name, v in base.items()},
              "curves": curves, "rows": int(index.numel()), "readout_layer": readout.layer}
    return causal, influence


def _edit_conditions(p: Parts, local, shifts, index: torch.Tensor, e_count: int,
                     cfg: DiscoverConfig) -> tuple[list, list]:
    """The checks to run: (labels, make edits) for ablating and enhancing the top k (and k
    random components of the same layers, seeded), and for each sublayer's shift."""
    rng = random.Random(cfg.seed)
    top = {k: [A.top_components(local[k][i], max(cfg.ks)) for i in range(e_count)]
           for k in KINDS}

    def picks(kind, k, control):
        rows = []
        for i in range(e_count):
            chosen = top[kind][i][:k]
            if control:
                chosen = A.random_like(chosen, p.size(kind), rng)
            rows.append([(kind, layer, j) for layer, j in chosen])
        return [rows[int(e)] for e in index]

    conditions = []
    for kind in KINDS:
        for k in cfg.ks:
            for pick in ("top", "random"):
                chosen = picks(kind, k, pick == "random")
                conditions.append(({"mode": "ablate", "kind": kind, "k": k, "pick": pick},
                                   lambda c=chosen: A.component_edits(p, c, "ablate")))
                conditions.append(({"mode": "enhance", "kind": kind, "k": k, "pick": pick},
                                   lambda c=chosen: A.component_edits(p, c, "enhance", shifts,
                                                                      index.tolist())))
    sublayers = [({"mode": "sublayer", "kind": kind, "layer": layer},
                  lambda kind=kind, layer=layer: A.sublayer_edits(p, kind, layer, shifts,
                                                                 index.tolist()))
                 for kind in KINDS for layer in range(p.n_layers)]
    return conditions, sublayers


def _emotion_vectors(model, response_means, rows, confirmed, emotions, cfg, arch):
    """Emotion vectors from the same generations: confirmed emotional minus neutral answer."""
    neutral = {(s.id, s.valence): i for i, (s, e) in enumerate(rows) if e == "neutral"}
    info = data.dataset_info("sev")
    out = {}
    for emotion in emotions:
        pairs = [(i, neutral[(s.id, s.valence)]) for i, (s, e) in enumerate(rows)
                 if e == emotion and confirmed[i]]
        if len(pairs) < cfg.min_kept:  # too few confirmed: every answer
            pairs = [(i, neutral[(s.id, s.valence)]) for i, (s, e) in enumerate(rows)
                     if e == emotion]
        diff = torch.stack([response_means[i] - response_means[j] for i, j in pairs]).mean(0)
        meta = {**model_shape(model, arch), "emotion": emotion, "site": "attn",
                "method": "mean_diff", "positions": "response", "context": "own",
                "centered": "false", "dataset": "sev", "dataset_version": info.version,
                "dataset_sha256": info.sha256, "n_queries": len(pairs)}
        out[emotion] = EmotionVector({layer: diff[layer] for layer in range(diff.shape[0])},
                                     meta)
    return out
