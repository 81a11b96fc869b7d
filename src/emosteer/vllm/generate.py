"""Bulk generation on vLLM: many differently steered requests as one continuous batch.

The generation half of extraction and experiments can run here (`emosteer.GenerateConfig`
maps onto vLLM's SamplingParams); the activation reading stays in transformers. An alpha
sweep is one `generate` call: every (prompt, alpha) pair is its own request.

Prompts are rendered with the model's chat template and sent as token ids, tokenized as
emosteer's transformers path does (no special tokens added: the template has them).

Example:
    engine = emosteer.vllm.llm("default", "vectors/")
    answers = alpha_sweep(engine, ["How was the exam?"], "joy", [0, 1, 2])
    gens = extraction_generations(engine, ExtractConfig(limit=40))  # for extract(...)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from emosteer.errors import BadInputError
from emosteer.generation import Batch, GenerateConfig, chat_prompt
from emosteer.progress import progress_bar
from emosteer.vllm.spec import KEY, Spec

if TYPE_CHECKING:
    from emosteer.extraction.extract import ExtractConfig, Generated
    from emosteer.vectors import EmotionVector

__all__ = ["VllmAnswerer", "alpha_sweep", "as_mix", "extraction_generations",
           "generate_texts", "sampling_params"]

Emotion = Mapping[str, float] | None  # one request's mix ({"joy": 1.5}), None = unsteered
REQUESTS_PER_CALL = 1024  # requests per engine.generate call: a default alpha sweep is one
MIX_TOLERANCE = 1e-4  # relative error allowed when a vector is rebuilt from served ones


def sampling_params(cfg: GenerateConfig = GenerateConfig(), emotion: Emotion = None,
                    **overrides: Any) -> Any:
    """vLLM SamplingParams decoding as `cfg` does in transformers, steered by `emotion`.

    Args:
        cfg: emosteer's decoding settings (sampling or greedy, top_p, repetition penalty,
            seed, max_new_tokens).
        emotion: the request's mix, e.g. {"joy": 1.5, "anger": -0.5}; None: unsteered.
        **overrides: any other SamplingParams field (ignore_eos, logprobs...).

    Example:
        params = sampling_params(GenerateConfig(do_sample=False), {"joy": 2.0})
    """
    from vllm import SamplingParams

    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else \
        {"temperature": 0.0}
    fields = {"max_tokens": cfg.max_new_tokens, "repetition_penalty": cfg.repetition_penalty,
              "seed": cfg.seed, **sampling, **overrides}
    if emotion:
        fields["extra_args"] = {**fields.get("extra_args", {}), KEY: dict(emotion)}
    return SamplingParams(**fields)


def _outputs(engine: Any, questions: Sequence[str], systems: Sequence[str | None],
             emotions: Sequence[Emotion], cfg: GenerateConfig) -> list[Any]:
    """vLLM's RequestOutputs, one per question, all submitted in one generate call."""
    tokenizer = engine.get_tokenizer()
    prompts = [{"prompt_token_ids": tokenizer.encode(chat_prompt(tokenizer, q, s),
                                                     add_special_tokens=False)}
               for q, s in zip(questions, systems, strict=True)]
    params = [sampling_params(cfg, e) for e in emotions]
    return list(engine.generate(prompts, params, use_tqdm=False))


def generate_texts(engine: Any, questions: Sequence[str],
                   emotions: Sequence[Emotion] | Emotion = None, system: str | None = None,
                   cfg: GenerateConfig = GenerateConfig()) -> list[str]:
    """Answer each question, all in one vLLM batch, each steered by its own emotion: what
    emosteer.generate_text does in transformers, one vector per row.

    Args:
        engine: a vllm.LLM with the plugin on (emosteer.vllm.llm).
        questions: user messages, one answer each.
        emotions: one mix per question, or one mix for all, or None (unsteered).
        system: a system prompt (None: none).
        cfg: decoding settings, as for emosteer.generate_text.

    Example:
        texts = generate_texts(engine, ["Hi!", "Hi!"], [{"joy": 1.0}, None])
    """
    if emotions is None or isinstance(emotions, Mapping):
        emotions = [emotions] * len(questions)
    if len(emotions) != len(questions):
        raise BadInputError(f"{len(emotions)} emotions for {len(questions)} questions: give "
                            "one per question, or a single mix for all")
    outputs = _outputs(engine, questions, [system] * len(questions), emotions, cfg)
    return [out.outputs[0].text.strip() for out in outputs]


def alpha_sweep(engine: Any, questions: Sequence[str], emotion: str, alphas: Sequence[float],
                system: str | None = None, cfg: GenerateConfig = GenerateConfig()
                ) -> dict[float, list[str]]:
    """Answers to every question at every alpha of one emotion, generated as one batch.

    Args:
        engine: a vllm.LLM with the plugin on.
        questions: user messages.
        emotion: the served emotion to sweep.
        alphas: strengths; 0 is the unsteered baseline.
        system: a system prompt (None: none).
        cfg: decoding settings.

    Example:
        answers = alpha_sweep(engine, ["How was the exam?"], "joy", [0, 1, 2, 4])
    """
    pairs = [(a, q) for a in alphas for q in questions]
    texts = generate_texts(engine, [q for _, q in pairs],
                           [{emotion: a} if a else None for a, _ in pairs], system, cfg)
    out: dict[float, list[str]] = {a: [] for a in alphas}
    for (a, _), text in zip(pairs, texts, strict=True):
        out[a].append(text)
    return out


# --- extraction ---------------------------------------------------------------------------------
def extraction_generations(engine: Any, cfg: ExtractConfig,
                           progress: bool = True) -> list[Generated]:
    """The generation half of `emosteer.extract` on vLLM: pass the result as its
    `generations=` and only the reading runs in transformers.

    The same queries and batches as extract() makes (neutral rows, then emotion rows, per
    batch of cfg.generation.batch_size queries), each answer its own vLLM request; the
    tensors are on the CPU (move them with `Batch.to` for a model elsewhere).

    Args:
        engine: a vllm.LLM of the model that extract() reads (plugin on or off: these
            requests are unsteered).
        cfg: the extraction's settings.
        progress: show a progress bar.

    Example:
        gens = extraction_generations(emosteer.vllm.llm("default"), cfg)
        result = emosteer.extract(model, tok, cfg, generations=gens)
    """
    from emosteer import data
    from emosteer.extraction.extract import Generated

    queries = data.extraction_queries(cfg.dataset, list(cfg.emotions), cfg.limit,
                                      cfg.generation.seed)
    size = cfg.generation.batch_size
    batches = [(e, mine[i:i + size]) for e in cfg.emotions
               for mine in [[q for q in queries if q.emotion == e]]
               for i in range(0, len(mine), size)]
    rows = [data.elicitation(cfg.dataset, q.question, None if neutral else e)
            for e, chunk in batches for neutral in (True, False) for q in chunk]
    outputs: list[Any] = []
    with progress_bar(progress, "generating (vLLM)", len(rows)) as advance:
        for i in range(0, len(rows), REQUESTS_PER_CALL):
            part = rows[i:i + REQUESTS_PER_CALL]
            outputs += _outputs(engine, [q for q, _ in part], [s for _, s in part],
                                [None] * len(part), cfg.generation)
            advance(len(part))
    pad = _pad_id(engine.get_tokenizer())
    gens, start = [], 0
    for emotion, chunk in batches:
        gens.append(Generated(emotion, list(chunk),
                              as_batch(outputs[start:start + 2 * len(chunk)], pad)))
        start += 2 * len(chunk)
    return gens


def as_batch(outputs: Sequence[Any], pad_id: int) -> Batch:
    """vLLM outputs as the Batch transformers' generate() returns: prompts left-padded to one
    length, answers after them; the response mask stops before the end token (vLLM keeps
    the token that stopped a request as the last of its token_ids)."""
    prompts = [list(out.prompt_token_ids) for out in outputs]
    answers = [list(out.outputs[0].token_ids) for out in outputs]
    kept = [len(a) - (out.outputs[0].finish_reason == "stop" and len(a) > 0)
            for a, out in zip(answers, outputs, strict=True)]
    p, r = max(map(len, prompts)), max(map(len, answers), default=0)
    ids = torch.full((len(outputs), p + r), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response = torch.zeros_like(ids)
    for i, (prompt, answer, k) in enumerate(zip(prompts, answers, kept, strict=True)):
        ids[i, p - len(prompt):p] = torch.tensor(prompt, dtype=torch.long)
        ids[i, p:p + len(answer)] = torch.tensor(answer, dtype=torch.long)
        attention[i, p - len(prompt):p + k] = 1
        response[i, p:p + k] = 1
    return Batch(ids, attention, response, p)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id or 0)


# --- experiments ----------------------------------------------------------------------------------
def as_mix(vector: EmotionVector, served: Mapping[str, EmotionVector]) -> Spec:
    """The weights that rebuild `vector` from the served vectors: {name: weight}.

    vLLM steers a request by a weighted mix of the vectors it serves, so an experiment's
    condition (alpha * joy, joy minus EV_base, w1 * joy + w2 * anger...) is sent as the mix
    that equals it. One served vector is tried first, then each pair, then all of them
    (least squares); the mix must rebuild the vector within MIX_TOLERANCE (relative).

    Args:
        vector: the vector as added (alpha applied).
        served: the engine's vectors, by name.

    Example:
        >>> as_mix(vectors["joy"] * 2 - vectors["base"] * 2, vectors)
        {'base': -2.0, 'joy': 2.0}
    """
    names = list(served)
    layers = sorted({layer for v in (vector, *served.values()) for layer in v.layers})
    basis = torch.stack([_flat(served[n], layers) for n in names], 1)  # (dims, emotions)
    target = _flat(vector, layers)
    size = float(target.norm())
    if size == 0:
        return {}
    subsets = itertools.chain(itertools.combinations(range(len(names)), 1),
                              itertools.combinations(range(len(names)), 2),
                              [tuple(range(len(names)))])
    for subset in subsets:
        cols = basis[:, list(subset)]
        weights = torch.linalg.lstsq(cols, target[:, None]).solution[:, 0]
        rounded = [float(f"{w:.6g}") for w in weights.tolist()]
        error = float((cols @ torch.tensor(rounded, dtype=cols.dtype) - target).norm())
        if error <= MIX_TOLERANCE * size:
            pairs = zip((names[i] for i in subset), rounded, strict=True)
            return dict(sorted((name, w) for name, w in pairs if w != 0))
    raise BadInputError(f"vector {vector.emotion!r} is not a mix of the served vectors "
                        f"({', '.join(names)}): with --engine vllm every steered condition "
                        "must be built from the vectors in --vectors")


def _flat(vector: EmotionVector, layers: Sequence[int]) -> torch.Tensor:
    """The vector's directions at `layers`, concatenated (zeros where it has none), float64."""
    zero = torch.zeros(vector.hidden_size, dtype=torch.float64)
    return torch.cat([vector.directions[layer].double() if layer in vector.directions
                      else zero for layer in layers])


@dataclass
class VllmAnswerer:
    """The experiment runner's answers on vLLM: `Runner(..., engine=VllmAnswerer(...))`.

    Each condition's vector becomes the mix of served vectors that equals it (as_mix), and
    up to REQUESTS_PER_CALL differently steered requests go to vLLM as one batch.

    Args:
        engine: a vllm.LLM with the plugin on, serving `served` (emosteer.vllm.llm).
        served: the vectors of the engine's folder, by name.

    Example:
        answerer = VllmAnswerer(emosteer.vllm.llm("default", "vectors/"),
                                emosteer.load_vectors("vectors/"))
    """

    engine: Any
    served: Mapping[str, EmotionVector] = field(default_factory=dict)
    name: str = "vllm"  # joins the runner's cache keys: these answers never pass for others
    batch_size: int = REQUESTS_PER_CALL
    _mixes: dict[str, Spec] = field(default_factory=dict, repr=False)

    def answer(self, questions: Sequence[str], systems: Sequence[str | None],
               rows: Sequence[EmotionVector | None], cfg: GenerateConfig) -> list[str]:
        """One answer per question, row i steered by rows[i] (None: unsteered)."""
        emotions = [self.mix(row) if row is not None else None for row in rows]
        outputs = _outputs(self.engine, questions, systems, emotions, cfg)
        return [out.outputs[0].text.strip() for out in outputs]

    def mix(self, vector: EmotionVector) -> Spec:
        """as_mix of `vector` over the served vectors, computed once per vector."""
        from emosteer.evaluate.conditions import vector_digest

        key = str(vector_digest(vector))
        if key not in self._mixes:
            if not self.served:
                raise BadInputError("this vLLM engine serves no vectors: pass --vectors to "
                                    "steer with --engine vllm")
            self._mixes[key] = as_mix(vector, self.served)
        return self._mixes[key]

