"""Answer bodies as the OpenAI API writes them: one JSON completion, or server-sent events.

The engine's worker thread reports a job's progress as ("delta", text), then ("done",
reason) or ("error", message) events on an asyncio queue; these functions turn that queue
into the response.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from emosteer.server.engine import Job
from emosteer.server.errors import APIError

__all__ = ["Reply", "collect", "stream", "usage"]


def usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    """OpenAI's usage block."""
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}


@dataclass(frozen=True)
class Reply:
    """What every body of one answer repeats (id, object name, model, the emotion applied).

    Example:
        Reply(chat=True, id="chatcmpl-1", created=0, model="tiny", n_prompt=5, emotion=None)
    """

    chat: bool
    id: str
    created: int
    model: str
    n_prompt: int
    emotion: dict[str, float] | None  # echoed as applied
    include_usage: bool = False  # stream_options.include_usage

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, job: Job) -> dict[str, Any]:
        """The non-streamed completion."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": job.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": job.finish_reason}
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [choice],
                "usage": usage(self.n_prompt, len(job.tokens)), "emotion": self.emotion}

    def chunk(self, delta: str | None, reason: str | None, first: bool = False) -> str:
        """One `data: {...}` event carrying new text or the finish reason."""
        if self.chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": delta} if delta is not None else {})
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None,
                                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        body = {**self._head(self._chunk_kind), "choices": [choice], "emotion": self.emotion}
        if self.include_usage:
            body["usage"] = None
        return _event(body)

    def usage_chunk(self, job: Job) -> str:
        """The last event before [DONE] when include_usage was asked for."""
        return _event({**self._head(self._chunk_kind), "choices": [],
                       "usage": usage(self.n_prompt, len(job.tokens))})

    @property
    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def stream(events: asyncio.Queue, job: Job, reply: Reply) -> AsyncIterator[str]:
    """Server-sent events as the OpenAI API sends them, ending with `data: [DONE]`; a client
    that leaves early cancels its job (its batch row is freed at the next step)."""
    try:
        if reply.chat:
            yield reply.chunk(None, None, first=True)
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                yield reply.chunk(str(payload), None)
            elif kind == "done":
                yield reply.chunk(None, str(payload))
                break
            else:
                error = APIError(500, str(payload), "generation_failed", kind="server_error")
                yield _event(error.body())
                break
        if reply.include_usage:
            yield reply.usage_chunk(job)
        yield "data: [DONE]\n\n"
    finally:
        if job.finish_reason is None:
            job.cancel()


async def collect(events: asyncio.Queue, job: Job,
                  gone: Callable[[], Awaitable[bool]]) -> str:
    """The whole text of a job; cancels it when `gone()` says the client disconnected."""
    async def watch() -> None:
        while not await gone():
            await asyncio.sleep(0.5)
        events.put_nowait(("gone", None))

    watcher = asyncio.create_task(watch())
    text: list[str] = []
    try:
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                text.append(str(payload))
            elif kind == "done":
                return "".join(text)
            elif kind == "gone":
                raise APIError(499, "the client closed the connection", "client_closed")
            else:
                raise APIError(500, str(payload), "generation_failed", kind="server_error")
    finally:
        watcher.cancel()
        if job.finish_reason is None:
            job.cancel()
