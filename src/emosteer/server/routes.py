"""The endpoints: validated requests in, the engine's tokens out (replies.py writes them)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from emosteer import protocol
from emosteer.emotion_meter.meter import Meter
from emosteer.errors import EmosteerError
from emosteer.generation import render_chat
from emosteer.server.engine import Job, Sampling
from emosteer.server.errors import APIError
from emosteer.server.replies import Reply, Verdict, collect, stream
from emosteer.server.schemas import ChatRequest, CompletionRequest
from emosteer.server.state import ServeConfig, Server
from emosteer.vectors import EmotionVector

__all__ = ["router"]

router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


Served = Annotated[Server, Depends(_server)]


@router.get("/", response_class=HTMLResponse)
async def playground(server: Served) -> HTMLResponse:
    return HTMLResponse(server.page)


@router.get("/health")
async def health(server: Served) -> dict[str, Any]:
    return {"status": "ok", "model": server.name, "emotions": sorted(server.vectors),
            "queued": server.engine.queued(), **server.engine.stats}


@router.get("/v1/models")
async def models(server: Served) -> dict[str, Any]:
    fields = protocol.model_fields(
        server.vectors, site=server.site, max_tokens=server.cfg.max_tokens,
        context_length=server.limit, meter=_meter(server), folder=server.vectors_from,
        judge=server.verdicts.installed())
    return {"object": "list", "data": [{"id": server.name, "object": "model", "created": 0,
                                        "owned_by": "emosteer", **fields}]}


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request, server: Served) -> Response:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    server.check_chars(sum(len(m["content"]) for m in messages), "messages")
    vector = _steering(body.emotion, server.vectors)
    ids = await server.tokenize(lambda: render_chat(server.tokenizer, messages))
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return await _complete(request, server, body, ids, vector, chat=True, question=question)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, server: Served) -> Response:
    server.check_chars(len(body.prompt), "prompt")
    vector = _steering(body.emotion, server.vectors)
    ids = await server.tokenize(lambda: body.prompt)
    return await _complete(request, server, body, ids, vector, chat=False,
                           question=body.prompt)


async def _complete(request: Request, server: Server, body: ChatRequest | CompletionRequest,
                    prompt_ids: list[int], vector: EmotionVector | None,
                    chat: bool, question: str) -> Response:
    sampling = _sampling(body, server.cfg, server.limit, len(prompt_ids))
    engine = server.engine
    if body.meter:
        try:
            engine.ready_meter()
        except EmosteerError as err:
            raise APIError(400, str(err), "meter_unavailable", "meter") from None
    judge = await _verdict(server, question) if body.judge else None
    if engine.queued() >= server.cfg.max_queue:
        raise APIError(429, f"{engine.queued()} requests are waiting: retry shortly",
                       "server_busy", kind="rate_limit_error")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(kind: str, payload: object) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

    job = Job(prompt_ids, vector, sampling, emit, meter=body.meter)
    engine.submit(job)
    reply = Reply(chat=chat, id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
                  created=int(time.time()), model=server.name, n_prompt=len(prompt_ids),
                  emotion=body.emotion,
                  include_usage=bool(body.stream_options and body.stream_options.include_usage))
    if body.stream:
        return StreamingResponse(stream(events, job, reply, judge),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    text, readings = await collect(events, job, request.is_disconnected)
    verdict = None
    if judge is not None:
        try:
            verdict = await judge(text)
        except Exception as err:
            raise APIError(500, f"the judge failed: {err}", "judge_failed",
                           kind="server_error") from None
    return JSONResponse(reply.whole(text, job, readings if body.meter else None, verdict))


async def _verdict(server: Server, question: str) -> Verdict:
    """The judge ready to rate this request's answer (loaded on first use), or a 400."""
    try:
        await server.verdicts.ready()
    except EmosteerError as err:
        raise APIError(400, str(err), "judge_unavailable", "judge") from None

    async def rate(answer: str) -> dict[str, Any]:
        return await server.verdicts.rate(question, answer)

    return rate


def _meter(server: Server) -> Meter | None:
    """The meter `"meter": true` reads with, or None when there is none."""
    try:
        return server.engine.ready_meter()
    except EmosteerError:
        return None


def _steering(weights: Mapping[str, float] | None,
              vectors: Mapping[str, EmotionVector]) -> EmotionVector | None:
    """The request's emotion mix as one vector (weights are alphas); None when plain."""
    try:
        return protocol.steering_mix(weights, vectors)[1]
    except EmosteerError as err:
        raise APIError(400, str(err), protocol.error_code(err), "emotion") from None


def _sampling(body: ChatRequest | CompletionRequest, cfg: ServeConfig, limit: int,
              n_prompt: int) -> Sampling:
    """The request's decoding settings, its length checked against the cap and the context."""
    if n_prompt >= limit:
        raise APIError(400, f"the prompt has {n_prompt} tokens; this model's context is "
                       f"{limit} tokens: shorten the prompt", "context_length_exceeded",
                       "messages")
    requested = body.requested_tokens()
    if requested is None:
        max_tokens = min(cfg.default_max_tokens, limit - n_prompt)
    elif requested > cfg.max_tokens:
        raise APIError(400, f"max_tokens {requested} is over this server's cap of "
                       f"{cfg.max_tokens}", "max_tokens_exceeded", "max_tokens")
    elif n_prompt + requested > limit:
        raise APIError(400, f"prompt ({n_prompt} tokens) + max_tokens ({requested}) is over "
                       f"the context length of {limit}", "context_length_exceeded",
                       "max_tokens")
    else:
        max_tokens = requested
    d = cfg.defaults
    return Sampling(
        max_tokens=max_tokens,
        temperature=d.temperature if body.temperature is None else body.temperature,
        top_p=d.top_p if body.top_p is None else body.top_p,
        repetition_penalty=(d.repetition_penalty if body.repetition_penalty is None
                            else body.repetition_penalty),
        seed=None if body.seed is None else body.seed % (2**63),
        stop=tuple(s for s in body.stop or () if s))
