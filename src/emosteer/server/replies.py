"""Answer bodies as the OpenAI API writes them: one JSON completion, or server-sent events.

The engine's worker thread reports a job's progress as ("delta", text), then ("done",
reason) or ("error", message) events on an asyncio queue; these functions turn that queue
into the response.

A metered request (`"meter": true`) also gets ("meter", (token, readings)) events, one per
token before its text: a streamed chunk carries `emotion_meter`, the mean readings of the
tokens since the chunk before ({"joy": 0.81, ...}; absent when it has no tokens); a whole
completion carries `choices[0].emotion_meter`, one {"token", "readings"} per generated token.

A request with `"judge": true` gets the judge's verdict on the whole answer, `emotion_judge`
({"label", "probability", "probabilities", "judge"}): in the body of a whole completion, in the
last chunk of a stream (the one with the finish reason, before the usage chunk).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from emosteer.protocol import mean_readings
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

    def whole(self, text: str, job: Job, meter: list[dict] | None = None,
              judge: dict[str, Any] | None = None) -> dict[str, Any]:
        """The non-streamed completion (with meter: one {"token", "readings"} per token; with
        judge: the verdict on the answer)."""
        choice: dict[str, Any]
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": job.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": job.finish_reason}
        if meter is not None:
            choice["emotion_meter"] = meter
        kind = "chat.completion" if self.chat else "text_completion"
        body = {**self._head(kind), "choices": [choice],
                "usage": usage(self.n_prompt, len(job.tokens)), "emotion": self.emotion}
        if judge is not None:
            body["emotion_judge"] = judge
        return body

    def chunk(self, delta: str | None, reason: str | None, first: bool = False,
              meter: dict[str, float] | None = None, judge: dict[str, Any] | None = None) -> str:
        """One `data: {...}` event carrying new text or the finish reason (and the mean
        readings of its tokens, when metered; the verdict, on the last chunk when judged)."""
        if self.chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": delta} if delta is not None else {})
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None,
                                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
        body = {**self._head(self._chunk_kind), "choices": [choice], "emotion": self.emotion}
        if meter is not None:
            body["emotion_meter"] = meter
        if judge is not None:
            body["emotion_judge"] = judge
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


Verdict = Callable[[str], Awaitable[dict[str, Any]]]  # the answer's text -> emotion_judge


async def stream(events: asyncio.Queue, job: Job, reply: Reply,
                 judge: Verdict | None = None) -> AsyncIterator[str]:
    """Server-sent events as the OpenAI API sends them, ending with `data: [DONE]`; a client
    that leaves early cancels its job (its batch row is freed at the next step). With
    `judge`, the last chunk waits for the verdict on the whole answer and carries it."""
    pending: list[dict[str, float]] = []  # readings of the tokens not yet sent
    try:
        if reply.chat:
            yield reply.chunk(None, None, first=True)
        while True:
            kind, payload = await events.get()
            if kind == "meter":
                pending.append(payload[1])
            elif kind == "delta":
                yield reply.chunk(str(payload), None, meter=mean_readings(pending))
                pending = []
            elif kind == "done":
                try:
                    verdict = None if judge is None else await judge(job.text)
                except Exception as err:  # the text is sent: say why no verdict follows
                    yield _event(APIError(500, f"the judge failed: {err}", "judge_failed",
                                          kind="server_error").body())
                    break
                yield reply.chunk(None, str(payload), meter=mean_readings(pending),
                                  judge=verdict)
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
                  gone: Callable[[], Awaitable[bool]]) -> tuple[str, list[dict]]:
    """The whole text of a job and its tokens' readings ([] unless metered); cancels the job
    when `gone()` says the client disconnected."""
    async def watch() -> None:
        while not await gone():
            await asyncio.sleep(0.5)
        events.put_nowait(("gone", None))

    watcher = asyncio.create_task(watch())
    text: list[str] = []
    meter: list[dict] = []
    try:
        while True:
            kind, payload = await events.get()
            if kind == "meter":
                meter.append({"token": payload[0], "readings": payload[1]})
            elif kind == "delta":
                text.append(str(payload))
            elif kind == "done":
                return "".join(text), meter
            elif kind == "gone":
                raise APIError(499, "the client closed the connection", "client_closed")
            else:
                raise APIError(500, str(payload), "generation_failed", kind="server_error")
    finally:
        watcher.cancel()
        if job.finish_reason is None:
            job.cancel()
