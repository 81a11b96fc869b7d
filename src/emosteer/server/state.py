"""What one running server holds: its settings (ServeConfig) and its state (Server: the
model, the vectors, the engine thread, the judge), read by the routes and the guard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from emosteer import protocol
from emosteer.errors import BadInputError, EmosteerError
from emosteer.server.engine import Engine, Sampling
from emosteer.server.errors import APIError
from emosteer.server.verdict import Verdicts
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ServeConfig", "Server"]


@dataclass(frozen=True)
class ServeConfig:
    """How `emosteer serve` listens and what one request may ask (docs/security.md).

    Example:
        ServeConfig(port=8080, api_key="s3cret", allow_origins=("http://localhost:3000",))
    """

    host: str = "127.0.0.1"  # loopback only; expose deliberately with --host 0.0.0.0
    port: int = 8000  # the port OpenAI-compatible local servers usually take
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_tokens: int = 512  # cap on max_tokens per request: 512 tokens take ~25 s on 2 cores
    default_max_tokens: int = Sampling.max_tokens  # when a request names none
    max_context: int | None = None  # prompt + completion; None = the model's position limit
    max_batch: int = 8  # rows per forward pass; 8 keeps 2 CPU cores busy
    batch_window: float = 0.01  # seconds a request waits for batch-mates (adds to latency)
    max_queue: int = 64  # waiting requests beyond this get 429
    defaults: Sampling = field(default_factory=Sampling)  # when a request leaves a knob out
    # a prompt of max_prompt_chars fits even JSON-escaped (6 bytes a character); larger
    # bodies get 413 before they are read into memory
    max_body_bytes: int = 1_048_576
    # checked before tokenizing: 100k characters are ~25k tokens, three times the bundled
    # model's 8192-token context, and tokenize in well under a second
    max_prompt_chars: int = 100_000
    allow_origins: tuple[str, ...] = ()  # web pages besides the playground that may call /v1
    allowed_hosts: tuple[str, ...] = ()  # Host names besides localhost (e.g. a proxy's)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise BadInputError("the API key is empty: pass a key, or None to serve without "
                                "one")


class Server:
    """What the routes share: the engine, the vectors, the settings, a tokenizing thread.

    Args:
        model, tokenizer: from `emosteer.load_model`.
        vectors: emotion name -> vector; all of one site.
        cfg: the settings.
        model_name: the name answered in `model` fields (default: the model's id).
        vectors_from: the folder the vectors were read from (shown in /v1/models); None
            when they were built in Python.

    Example:
        server = Server(model, tok, vectors, ServeConfig())
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 vectors: Mapping[str, EmotionVector], cfg: ServeConfig,
                 model_name: str | None = None, vectors_from: str | Path | None = None) -> None:
        from emosteer.models import context_length, model_id

        sites = {v.site for v in vectors.values()}
        if len(sites) > 1:
            raise EmosteerError(f"the vectors mix sites {sorted(sites)}: serve one site at a "
                                "time (put attn and residual vectors in different folders)")
        self.cfg, self.tokenizer, self.vectors = cfg, tokenizer, dict(vectors)
        self.site = next(iter(sites), None)
        self.vectors_from = vectors_from
        self.name = model_name or model_id(model)
        self.limit = cfg.max_context or context_length(model)
        self.engine = Engine(model, tokenizer, max_batch=cfg.max_batch,
                             batch_window=cfg.batch_window, max_queue=cfg.max_queue)
        self.page = protocol.playground_page()
        # one thread: the event loop never tokenizes (a long prompt would stall /health)
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="emosteer-tokenize")
        self.verdicts = Verdicts()  # the judge loads on the first `"judge": true`

    def check_chars(self, n: int, param: str) -> None:
        """Refuse a prompt over `max_prompt_chars` before any tokenizing."""
        cap = self.cfg.max_prompt_chars
        if n > cap:
            raise APIError(400, f"the {param} hold {n} characters; this server takes at most "
                           f"{cap} (--max-prompt-chars): shorten them",
                           "context_length_exceeded", param)

    async def tokenize(self, render: Callable[[], str]) -> list[int]:
        """Token ids of the prompt `render()` builds, computed on the tokenizing thread."""
        def run() -> list[int]:
            return list(self.tokenizer(render(), add_special_tokens=False)["input_ids"])

        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, run)

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        self.verdicts.close()
