"""The emotion meter in vLLM's OpenAI server: the front-end half (the worker half is meter.py).

- `metered` (called from the protocol patch, before a response starts): the body's "meter"
  is checked (true or false; n must be 1; the server must have a meter), a bad one is a 400
  with param "meter"; a metered request's SamplingParams get `extra_args["emosteer_meter"]`.
- `AsyncLLM.generate`, for a metered request only: a fresh id per engine request, and after
  each output the readings of its new tokens fetched from the workers (vLLM's
  collective_rpc, one call per output; the workers computed them in the step that made the
  tokens), attached to the output as `emosteer_meter` [(token id, [value per emotion])].
- the chat and completions response builders, for a metered request only: as emosteer's own
  server writes them, a whole answer's choice gets `emotion_meter` = [{"token", "readings"}]
  one per generated token, and each streamed chunk gets `emotion_meter` = the mean readings
  of the tokens since the chunk before ({"joy": 0.81, ...}; absent when it has none).

An unmetered request goes through vLLM's own code paths untouched.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from emosteer.emotion_meter.meter import as_dict
from emosteer.errors import EmosteerError
from emosteer.protocol import METER, mean_readings, parse_meter
from emosteer.vllm.bank import served_bank
from emosteer.vllm.meter import ID_KEY, RPC, served_meter
from emosteer.vllm.patching import mark

__all__ = ["metered", "patch_async_llm", "patch_chat_serving", "patch_completion_serving"]

READINGS = "emosteer_meter"  # the RequestOutput attribute the readings ride on
_FORGETTING: set[asyncio.Future] = set()  # calls telling the workers to drop a request's readings


def metered(request: Any, params: Any, bank: Any) -> None:
    """Check the request body's "meter" and mark `params` (vLLM SamplingParams) if it is on.

    Raises EmosteerError (the caller answers a 400) for a value that is not a boolean, n > 1,
    or a server without a meter."""
    if not parse_meter((request.model_extra or {}).get(METER)):
        return
    if (getattr(request, "n", 1) or 1) != 1 or getattr(request, "use_beam_search", False):
        raise EmosteerError("'meter' reads one answer: send n=1 without beam search")
    served_meter(bank)  # raises, saying how to get one, when the server has no meter
    params.extra_args = {**(params.extra_args or {}), ID_KEY: True}


def _is_metered(request: Any) -> bool:
    return (request.model_extra or {}).get(METER) is True


# --- the engine client -----------------------------------------------------------------------
def patch_async_llm(module: ModuleType) -> None:
    """AsyncLLM.generate: metered requests get their readings attached to each output."""
    engine_cls = module.AsyncLLM
    original = engine_cls.generate

    def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        extra = getattr(sampling_params, "extra_args", None) or {}
        if not extra.get(ID_KEY):
            return original(self, prompt, sampling_params, request_id, *args, **kwargs)
        params = sampling_params.clone()  # one id per engine request (completions may fan out)
        meter_id = uuid.uuid4().hex
        params.extra_args = {**extra, ID_KEY: meter_id}
        from vllm.sampling_params import RequestOutputKind

        return _with_readings(self, original(self, prompt, params, request_id, *args, **kwargs),
                              meter_id, params.output_kind == RequestOutputKind.DELTA)

    mark(engine_cls, "generate", generate)


async def _with_readings(engine: Any, outputs: AsyncIterator[Any], meter_id: str, delta: bool
                         ) -> AsyncIterator[Any]:
    """The engine's outputs, each with the readings of the tokens it adds (delta: each output
    holds only its new tokens; else all the tokens so far)."""
    seen, finished = 0, False
    try:
        async for out in outputs:
            ids = list(out.outputs[0].token_ids)
            new = ids if delta else ids[seen:]
            finished = bool(out.finished)
            rows = await _fetch(engine, meter_id, seen, seen + len(new), finished) \
                if new or finished else []
            setattr(out, READINGS, list(zip(new, rows, strict=True)))
            seen += len(new)
            yield out
    finally:
        if not finished:  # aborted or failed: the workers forget its readings
            task = asyncio.ensure_future(engine.collective_rpc(RPC, args=(meter_id, 0, 0, True)))
            _FORGETTING.add(task)  # held until done (the loop keeps weak references only)
            task.add_done_callback(_FORGETTING.discard)


async def _fetch(engine: Any, meter_id: str, first: int, last: int, done: bool
                 ) -> list[list[float]]:
    answers = await engine.collective_rpc(RPC, args=(meter_id, first, last, done))
    rows = next((a for a in answers or () if a is not None), None)
    if rows is None:
        raise EmosteerError("no vLLM worker holds the emotion meter (with pipeline "
                            "parallelism the meter's layers must be on one stage)")
    if any(r is None for r in rows):
        raise EmosteerError(f"the workers have no reading for some of tokens {first}-{last - 1} "
                            "(speculative decoding is not metered)")
    return rows


# --- the response builders -------------------------------------------------------------------
def _emotions() -> tuple[str, ...]:
    return served_meter(served_bank()).emotions


def _per_token(server: Any, pairs: list[tuple[int, list[float]]]) -> list[dict[str, Any]]:
    tokenizer, emotions = server.renderer.tokenizer, _emotions()
    return [{"token": tokenizer.decode([t]), "readings": as_dict(emotions, row)}
            for t, row in pairs]


async def _tapped(results: AsyncIterator[Any], pending: dict[int, list], indexed: bool
                  ) -> AsyncIterator[Any]:
    """The results as they are, each one's readings added to pending[prompt index]."""
    async for item in results:
        index, res = item if indexed else (0, item)
        pending.setdefault(index, []).extend(getattr(res, READINGS, None) or [])
        yield item


def _with_meter(event: str, pending: dict[int, list], emotions: tuple[str, ...]) -> str:
    """One `data: {...}` event with the mean readings of its choice's tokens not yet sent."""
    if not event.startswith("data: {"):
        return event
    body = json.loads(event[len("data: "):])
    choices = body.get("choices") or []
    if len(choices) != 1:
        return event
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
    rows = pending.get(int(choice.get("index", 0)), [])
    if not rows or not (text or choice.get("finish_reason")):
        return event  # e.g. the role chunk: its tokens' readings go with the next text
    # the same summary as emosteer's own server: the mean of the rounded per-token readings
    body["emotion_meter"] = mean_readings([as_dict(emotions, row) for _, row in rows])
    rows.clear()
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def patch_chat_serving(module: ModuleType) -> None:
    """OpenAIServingChat: emotion_meter in metered chunks and whole answers."""
    serving = module.OpenAIServingChat
    stream, full = serving.chat_completion_stream_generator, serving.chat_completion_full_generator

    def chat_completion_stream_generator(self, request, result_generator, *args, **kwargs):
        if not _is_metered(request):
            return stream(self, request, result_generator, *args, **kwargs)
        pending: dict[int, list] = {}
        return _metered_stream(stream(self, request, _tapped(result_generator, pending, False),
                                      *args, **kwargs), pending)

    async def chat_completion_full_generator(self, request, result_generator, *args, **kwargs):
        if not _is_metered(request):
            return await full(self, request, result_generator, *args, **kwargs)
        pending: dict[int, list] = {}
        response = await full(self, request, _tapped(result_generator, pending, False),
                              *args, **kwargs)
        if getattr(response, "choices", None):
            response.choices[0].emotion_meter = _per_token(self, pending.get(0, []))
        return response

    mark(serving, "chat_completion_stream_generator", chat_completion_stream_generator)
    mark(serving, "chat_completion_full_generator", chat_completion_full_generator)


def patch_completion_serving(module: ModuleType) -> None:
    """OpenAIServingCompletion: emotion_meter in metered chunks and whole answers."""
    serving = module.OpenAIServingCompletion
    stream, whole = serving.completion_stream_generator, \
        serving.request_output_to_completion_response

    def completion_stream_generator(self, request, engine_inputs, result_generator, *args,
                                    **kwargs):
        if not _is_metered(request):
            return stream(self, request, engine_inputs, result_generator, *args, **kwargs)
        pending: dict[int, list] = {}
        return _metered_stream(stream(self, request, engine_inputs, _tapped(
            result_generator, pending, True), *args, **kwargs), pending)

    def request_output_to_completion_response(self, final_res_batch, request, *args, **kwargs):
        response = whole(self, final_res_batch, request, *args, **kwargs)
        if _is_metered(request):
            for choice, res in zip(response.choices, final_res_batch, strict=False):
                choice.emotion_meter = _per_token(self, getattr(res, READINGS, None) or [])
        return response

    mark(serving, "completion_stream_generator", completion_stream_generator)
    mark(serving, "request_output_to_completion_response",
          request_output_to_completion_response)


async def _metered_stream(events: AsyncIterator[str], pending: dict[int, list]
                          ) -> AsyncIterator[str]:
    emotions = _emotions()
    async for event in events:
        yield _with_meter(event, pending, emotions)
