"""Bulk generation on vLLM: many differently steered requests as one continuous batch.

The generation half of extraction and experiments can run here (`emosteer.GenerateConfig`
maps onto vLLM's SamplingParams); the activation reading stays in transformers. An alpha
sweep is one `generate` call: every (prompt, alpha) pair is its own request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emosteer.generation import GenerateConfig, chat_prompt
from emosteer.vllm.spec import KEY

__all__ = ["alpha_sweep", "generate_texts", "sampling_params"]

Emotion = Mapping[str, float] | None  # one request's mix ({"joy": 1.5}), None = unsteered


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
        from emosteer.errors import BadInputError

        raise BadInputError(f"{len(emotions)} emotions for {len(questions)} questions: give "
                            "one per question, or a single mix for all")
    tokenizer = engine.get_tokenizer()
    prompts = [chat_prompt(tokenizer, q, system) for q in questions]
    params = [sampling_params(cfg, e) for e in emotions]
    outputs = engine.generate(prompts, params, use_tqdm=False)
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
