"""OpenAI-compatible HTTP API over the batched engine, plus the playground page at `/`.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /.
Extra request field: "emotion": {"joy": 1.5, "anger": -0.5} (a weight per emotion; each weight
is that emotion's alpha). Errors are OpenAI-shaped: {"error": {"message", "type", "param",
"code"}} with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from emosteer.errors import BadAlphaError, EmosteerError, UnknownEmotionError
from emosteer.server.engine import Engine, Job, Sampling
from emosteer.steering import MAX_ALPHA, check_alpha
from emosteer.vectors import EmotionVector, mix


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only; expose deliberately with --host 0.0.0.0
    port: int = 8000  # the port OpenAI-compatible local servers usually take
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_tokens: int = 512  # cap on max_tokens per request: 512 tokens take ~25 s on 2 cores
    default_max_tokens: int = 128  # when a request names none
    max_context: int | None = None  # prompt + completion; None = the model's position limit
    max_batch: int = 8  # rows per forward pass; 8 keeps 2 CPU cores busy
    batch_window: float = 0.01  # seconds a request waits for batch-mates (adds to latency)
    max_queue: int = 64  # waiting requests beyond this get 429
    defaults: Sampling = field(default_factory=Sampling)  # when a request leaves a knob out


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = (
            status, message, code, param, kind)

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code}})


def create_app(model, tokenizer, vectors: Mapping[str, EmotionVector],
               cfg: ServeConfig = ServeConfig(), model_name: str | None = None) -> FastAPI:
    """The ASGI app; the engine thread starts with the app and stops with it."""
    from contextlib import asynccontextmanager

    from emosteer.models import model_id

    name = model_name or model_id(model)
    sites = {v.site for v in vectors.values()}
    if len(sites) > 1:
        raise EmosteerError(f"the vectors mix sites {sorted(sites)}: serve one site at a time "
                            "(put attn and residual vectors in different folders)")
    site = next(iter(sites), None)
    limit = cfg.max_context or int(getattr(model.config, "max_position_embeddings", 2048))
    engine = Engine(model, tokenizer, max_batch=cfg.max_batch, batch_window=cfg.batch_window,
                    max_queue=cfg.max_queue)
    page = resources.files("emosteer.server").joinpath("playground.html").read_text("utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="emosteer", version=_version(), lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, err: Exception) -> JSONResponse:
        return APIError(404, f"no route {request.method} {request.url.path}: see /v1/models, "
                        "/v1/chat/completions, /v1/completions, /health", "not_found").response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, err: Exception) -> JSONResponse:
        return APIError(405, f"{request.method} is not allowed on {request.url.path}",
                        "method_not_allowed").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if cfg.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
                return APIError(401, "missing or wrong API key: send 'Authorization: Bearer "
                                "<key>' with the key the server was started with",
                                "invalid_api_key").response()
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "emotions": sorted(vectors),
                "queued": engine.queued(), **engine.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": 0, "owned_by": "emosteer",
            "emotions": sorted(vectors), "site": site,
            "max_alpha": MAX_ALPHA, "max_tokens": cfg.max_tokens, "context_length": limit}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await _json_body(request)
        messages = _messages(body.get("messages"))
        prompt = _render_chat(tokenizer, messages)
        return await _complete(request, body, prompt, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _json_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)",
                           "invalid_prompt", "prompt")
        return await _complete(request, body, prompt, chat=False)

    async def _complete(request: Request, body: dict, prompt: str, chat: bool) -> Response:
        vector = _steering(body.get("emotion"), vectors)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sampling = _sampling(body, cfg, limit, len(prompt_ids))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be true or false", "invalid_type", "stream")
        if engine.queued() >= cfg.max_queue:
            raise APIError(429, f"{engine.queued()} requests are waiting: retry shortly",
                           "server_busy", kind="rate_limit_error")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, payload: object) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        job = Job(prompt_ids, vector, sampling, emit)
        engine.submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        mix_sent = _mix_echo(body.get("emotion"))
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = _stream(events, job, chat, rid, created, name, len(prompt_ids),
                             include_usage, mix_sent)
            return StreamingResponse(chunks, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            text = []
            while True:
                kind, payload = await events.get()
                if kind == "delta":
                    text.append(str(payload))
                elif kind == "done":
                    break
                else:
                    raise APIError(500, str(payload), "generation_failed", kind="server_error")
        except asyncio.CancelledError:
            job.cancel()
            raise
        usage = _usage(len(prompt_ids), len(job.tokens))
        content = "".join(text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content},
                      "logprobs": None, "finish_reason": job.finish_reason}
        else:
            choice = {"index": 0, "text": content, "logprobs": None,
                      "finish_reason": job.finish_reason}
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else
                             "text_completion", "created": created, "model": name,
                             "choices": [choice], "usage": usage, "emotion": mix_sent})

    return app


async def _stream(events: asyncio.Queue, job: Job, chat: bool, rid: str, created: int,
                  name: str, n_prompt: int, include_usage: bool,
                  mix_sent: dict | None) -> AsyncIterator[str]:
    """Server-sent events as the OpenAI API sends them, ending with `data: [DONE]`."""
    kind_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": delta} if delta is not None else {})
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None,
                                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        body = {"id": rid, "object": kind_name, "created": created, "model": name,
                "choices": [choice], "emotion": mix_sent}
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                yield chunk(str(payload), None)
            elif kind == "done":
                yield chunk(None, str(payload))
                break
            else:
                error = {"message": str(payload), "type": "server_error", "param": None,
                         "code": "generation_failed"}
                yield f"data: {json.dumps({'error': error})}\n\n"
                break
        if include_usage:
            yield f"data: {json.dumps({'id': rid, 'object': kind_name, 'created': created, 'model': name, 'choices': [], 'usage': _usage(n_prompt, len(job.tokens))})}\n\n"  # noqa: E501
        yield "data: [DONE]\n\n"
    finally:
        if job.finish_reason is None:  # the client left early: free its batch row
            job.cancel()


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err})",
                       "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_json")
    n = body.get("n", 1)
    if n not in (1, None):
        raise APIError(400, "only n=1 is supported: send one request per completion",
                       "unsupported_parameter", "n")
    for key in ("logprobs", "top_logprobs", "tools", "functions", "echo", "logit_bias"):
        if body.get(key):
            raise APIError(400, f"'{key}' is not supported by emosteer's server",
                           "unsupported_parameter", key)
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise APIError(400, f"'{key}' is not supported: use 'repetition_penalty' "
                           "(1.0 = off, 1.15 = emosteer's default)", "unsupported_parameter",
                           key)
    return body


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise APIError(400, "'messages' must be a non-empty list of {role, content}",
                       "invalid_messages", "messages")
    clean = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "developer", "user",
                                                                 "assistant"):
            raise APIError(400, f"messages[{i}] needs a role of system, user or assistant",
                           "invalid_messages", "messages")
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if any(p.get("type") != "text" for p in content if isinstance(p, dict)):
                raise APIError(400, f"messages[{i}] has a non-text part: only text is served",
                               "invalid_messages", "messages")
            content = "".join(p for p in parts if isinstance(p, str))
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string",
                           "invalid_messages", "messages")
        role = "system" if msg["role"] == "developer" else msg["role"]
        clean.append({"role": role, "content": content})
    return clean


def _render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def _steering(value: object, vectors: Mapping[str, EmotionVector]) -> EmotionVector | None:
    """The request's emotion mix as one vector (weights are alphas); None when plain."""
    if value is None:
        return None
    if isinstance(value, str):  # shorthand: "joy" = {"joy": 1}
        value = {value: 1.0}
    if not isinstance(value, dict):
        raise APIError(400, "'emotion' must be an object such as {\"joy\": 1.5, \"anger\": -0.5}",
                       "invalid_emotion", "emotion")
    weights = {}
    for key, w in value.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise APIError(400, f"emotion weight for {key!r} must be a number", "invalid_alpha",
                           "emotion")
        try:
            weights[key] = check_alpha(w)
        except BadAlphaError as err:
            raise APIError(400, f"emotion {key!r}: {err}", "invalid_alpha", "emotion") from None
    weights = {k: w for k, w in weights.items() if w != 0.0 or k not in vectors}
    if not weights:
        return None
    try:
        return mix(vectors, weights)
    except UnknownEmotionError as err:
        raise APIError(400, str(err), "unknown_emotion", "emotion") from None
    except EmosteerError as err:
        raise APIError(400, str(err), "invalid_emotion", "emotion") from None


def _mix_echo(value: object) -> dict | None:
    if isinstance(value, str):
        return {value: 1.0}
    return value if isinstance(value, dict) else None


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or not low <= value <= high:
        raise APIError(400, f"'{key}' must be a number in [{low:g}, {high:g}], got {value!r}",
                       "invalid_value", key)
    return float(value)


def _sampling(body: dict, cfg: ServeConfig, limit: int, n_prompt: int) -> Sampling:
    d = cfg.defaults
    if n_prompt >= limit:
        raise APIError(400, f"the prompt has {n_prompt} tokens; this model's context is "
                       f"{limit} tokens: shorten the prompt", "context_length_exceeded",
                       "messages")
    requested = body.get("max_completion_tokens", body.get("max_tokens"))
    if requested is None:
        max_tokens = min(cfg.default_max_tokens, limit - n_prompt)
    else:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise APIError(400, "'max_tokens' must be a positive integer", "invalid_value",
                           "max_tokens")
        if requested > cfg.max_tokens:
            raise APIError(400, f"max_tokens {requested} is over this server's cap of "
                           f"{cfg.max_tokens}", "max_tokens_exceeded", "max_tokens")
        if n_prompt + requested > limit:
            raise APIError(400, f"prompt ({n_prompt} tokens) + max_tokens ({requested}) is over "
                           f"the context length of {limit}", "context_length_exceeded",
                           "max_tokens")
        max_tokens = requested
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of up to 4 strings",
                       "invalid_value", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, "'seed' must be an integer", "invalid_value", "seed")
    return Sampling(max_tokens=max_tokens,
                    temperature=_number(body, "temperature", d.temperature, 0.0, 2.0),
                    top_p=_number(body, "top_p", d.top_p, 0.0, 1.0) or 1e-9,
                    repetition_penalty=_number(body, "repetition_penalty",
                                               d.repetition_penalty, 0.5, 2.0),
                    seed=None if seed is None else seed % (2**63),
                    stop=tuple(s for s in (stop or []) if s))


def _usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}


def _version() -> str:
    from emosteer import __version__

    return __version__
