"""Reading with the emotion meter: a text read again, or every token while it is generated.

A token's reading is the state the model wrote it from: the position just before it (for a
text's first token, the BOS token before it). So the readings taken while generating (the
`metering` hook: the newest position of each forward pass, no extra pass) equal the readings
of the finished text read again (`meter`), when nothing steers.

The hooks only read: they return nothing, so the model's outputs are unchanged. Open
`metering` outside (before) `steer`: hooks run in the order they were registered, so the meter
then reads each layer's own output before the steering adds to it (the vector's own addition
would otherwise show as a constant offset on its emotion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, TypeAlias

import torch

from emosteer.emotion_meter.meter import Directions, Meter, Readings, load_meter
from emosteer.errors import BadInputError
from emosteer.generation import (
    GenerateConfig,
    chat_prompt,
    decode_responses,
    forward_kwargs,
    generate,
    render_chat,
)
from emosteer.hooks import hooked, untuple
from emosteer.models import forward_params, site_modules

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from emosteer.models import Site

__all__ = ["generate_metered", "meter", "metering", "projection_hooks", "read_texts", "sequence",
           "token_projections"]

Piece: TypeAlias = tuple[list[int], list[int]]  # (prefix ids read first, ids of the text read)

@contextmanager
def projecting(model: PreTrainedModel, site: Site, directions: Mapping[int, torch.Tensor],
               last_only: bool = False,
               on_pass: Callable[[dict[int, torch.Tensor]], None] | None = None
               ) -> Iterator[dict[int, torch.Tensor]]:
    """Each forward pass's site outputs projected on `directions` {layer: (emotions, d)}.

    Yields {layer: (batch, pos, emotions)} float32, overwritten by every pass (last_only: only
    the newest position, (batch, 1, emotions)); on_pass(projections) runs after the highest
    layer's hook, once per pass. The hooks return nothing: outputs are untouched.
    """
    out: dict[int, torch.Tensor] = {}
    modules = site_modules(model, site)
    select = (lambda hidden: hidden[:, -1:]) if last_only else (lambda hidden: hidden)
    with hooked(model, projection_hooks({layer: modules[layer] for layer in directions},
                                        directions, select, out, on_pass)):
        yield out


def projection_hooks(modules: Mapping[int, torch.nn.Module],
                     directions: Mapping[int, torch.Tensor],
                     select: Callable[[torch.Tensor], torch.Tensor], out: dict[int, torch.Tensor],
                     on_pass: Callable[[dict[int, torch.Tensor]], None] | None = None) -> dict:
    """The meter's read-only forward hooks, for `hooks.hooked`: at each layer, the rows
    `select` takes of the module's output, projected on directions[layer] (emotions, d), go
    to out[layer] in float32; on_pass(out) runs after the highest layer's hook, once per
    pass. The hooks return nothing: outputs are untouched. Both engines read with them (the
    vLLM worker selects each metered request's sampled row).
    """
    top = max(directions)

    def make(layer: int, unit: torch.Tensor):
        def hook(module, args, output):
            rows = select(untuple(output)).float()
            out[layer] = rows @ unit.to(rows.device).T  # (..., emotions)
            if on_pass is not None and layer == top:
                on_pass(out)
        return hook

    return {modules[layer]: make(layer, unit) for layer, unit in directions.items()}


@contextmanager
def metering(model: PreTrainedModel, meter: Meter) -> Iterator[list[torch.Tensor]]:
    """Record the readings of the newest position of every forward pass inside the block.

    Yields a list that gains one (batch, emotions) tensor per forward pass: during generation,
    entry k holds the readings of the k-th generated token of each row (the prefill's last
    position wrote the first one). Read-only, no extra forward pass. Enter it before `steer`.

    Example:
        with metering(model, m) as steps, emosteer.steer(model, joy, 1.0):
            model.generate(**enc, max_new_tokens=20)
        readings = torch.stack(steps, dim=1)  # (batch, new tokens, emotions)
    """
    meter.check_model(model)
    steps: list[torch.Tensor] = []

    def record(projections: dict[int, torch.Tensor]) -> None:
        steps.append(meter.calibrate(meter.raw(projections))[:, -1])

    with projecting(model, meter.site, meter.band(), last_only=True, on_pass=record):
        yield steps


@torch.no_grad()
def token_projections(model: PreTrainedModel, site: Site,
                      directions: Mapping[int, torch.Tensor], sequences: Sequence[Piece],
                      batch_size: int = 16, progress: bool = False) -> list[torch.Tensor]:
    """Per sequence, each metered token's projections at every layer: (tokens, layers, emotions).

    Layers in sorted order. Token j of a sequence (prefix, ids) is read at the position
    before it (the last prefix token for j = 0; its own position when there is no prefix).
    Sequences are batched by length, left padded.
    """
    from emosteer.progress import progress_bar

    layers = sorted(directions)
    n_emotions = next(iter(directions.values())).shape[0]
    out = [torch.zeros(0, len(layers), n_emotions) for _ in sequences]  # empty texts stay so
    order = sorted((i for i, s in enumerate(sequences) if s[1]),
                   key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    extra = {"logits_to_keep": 1} if "logits_to_keep" in forward_params(model) else {}
    device = next(model.parameters()).device
    with progress_bar(progress, "metering", len(order)) as advance, \
            projecting(model, site, directions) as proj:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows = [list(sequences[i][0]) + list(sequences[i][1]) for i in chunk]
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)  # (batch, pos)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for k, r in enumerate(rows):
                ids[k, width - len(r):] = torch.tensor(r)
                mask[k, width - len(r):] = 1
            model(**forward_kwargs(model, ids.to(device), mask.to(device)), use_cache=False,
                  **extra)
            stacked = torch.stack([proj[layer] for layer in layers], dim=2).cpu()
            for k, i in enumerate(chunk):  # stacked: (batch, pos, layers, emotions)
                n_prefix, n = len(sequences[i][0]), len(sequences[i][1])
                pad = width - len(rows[k])
                where = [pad + max(n_prefix - 1 + j, 0) for j in range(n)]
                out[i] = stacked[k, where]
            advance(len(chunk))
    return out


def sequence(tokenizer, text_or_messages: str | Sequence[Mapping[str, str]]) -> Piece:
    """(prefix ids, text ids): a plain text after the BOS token (or EOS, or nothing), or the
    last message of a conversation (an assistant answer) after the conversation before it."""
    if isinstance(text_or_messages, str):
        special = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        prefix = [] if special is None else [int(special)]
        return prefix, list(tokenizer(text_or_messages, add_special_tokens=False)["input_ids"])
    messages = [dict(m) for m in text_or_messages]
    if not messages or messages[-1].get("role") != "assistant":
        raise BadInputError("to meter a conversation, end it with the assistant message to "
                            "read: [..., {'role': 'assistant', 'content': ...}]")
    prompt = render_chat(tokenizer, messages[:-1]) if len(messages) > 1 else ""
    prefix = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    ids = list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
    return prefix, ids


def read_texts(model: PreTrainedModel, tokenizer, texts: Sequence[str | Sequence[Mapping]],
               directions: Directions = None, batch_size: int = 16,
               progress: bool = False) -> list[Readings]:
    """`meter` for many texts (or conversations) at once, batched."""
    m = load_meter(model, directions)
    seqs = [sequence(tokenizer, t) for t in texts]
    projections = token_projections(model, m.site, m.band(), seqs, batch_size, progress)
    return [Readings(m.emotions, [tokenizer.decode([t]) for t in ids], m.calibrate(p.flatten(1)),
                     tokenizer.decode(ids), m.warmup)
            for (_, ids), p in zip(seqs, projections, strict=True)]


def meter(model: PreTrainedModel, tokenizer, text_or_messages: str | Sequence[Mapping[str, str]],
          directions: Directions = None) -> Readings:
    """Per token, a 0-1 reading per emotion of a text (or of a conversation's last answer).

    Args:
        model, tokenizer: from `emosteer.load_model`.
        text_or_messages: a text, or messages ending with the assistant answer to read.
        directions: a Meter, a meter file, vectors with a shipped calibration, or None (the
            meter shipped for this model).

    Example:
        r = emosteer.meter(model, tok, "I can't stop smiling, we won!")
        max(r.mean(), key=r.mean().get)  # "joy"
    """
    return read_texts(model, tokenizer, [text_or_messages], directions)[0]


def generate_metered(model: PreTrainedModel, tokenizer, questions: Sequence[str], meter: Meter,
                     steering: AbstractContextManager | None = None, system: str | None = None,
                     cfg: GenerateConfig = GenerateConfig()) -> list[Readings]:
    """Answer each question with the meter reading every generated token (no extra pass).

    Seeded and batched as `generation.generate_text`, so the answers are the same text.

    Args:
        model, tokenizer: from `emosteer.load_model`.
        questions: one answer each.
        meter: from `load_meter`.
        steering: an unentered context such as `emosteer.steer(model, joy, 1.0)`; it is
            entered after the meter's hooks, so the meter reads each site before it is steered.
        system: a system prompt (None: none).
        cfg: decoding settings.

    Example:
        [r.text for r in generate_metered(model, tok, ["How was it?"], load_meter(model))]
    """
    torch.manual_seed(cfg.seed)
    prompts = [chat_prompt(tokenizer, q, system) for q in questions]
    out: list[Readings] = []
    with metering(model, meter) as steps, steering or nullcontext():
        for i in range(0, len(prompts), cfg.batch_size):
            steps.clear()
            batch = generate(model, tokenizer, prompts[i:i + cfg.batch_size], cfg)
            values = torch.stack(steps, dim=1)  # (batch, passes, emotions)
            texts = decode_responses(tokenizer, batch)
            for k in range(batch.input_ids.shape[0]):
                keep = batch.response_mask[k, batch.prompt_len:].bool()
                ids = batch.input_ids[k, batch.prompt_len:][keep].tolist()
                out.append(Readings(meter.emotions, [tokenizer.decode([t]) for t in ids],
                                    values[k, :len(ids)], texts[k], meter.warmup))
    return out
