"""OpenAI-compatible HTTP API over the batched engine, plus the playground page at `/`.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /.
Extra request field: "emotion": {"joy": 1.5, "anger": -0.5} (a weight per emotion; each weight
is that emotion's alpha). Errors are OpenAI-shaped: {"error": {"message", "type", "param",
"code"}} with a 4xx status; the server keeps serving. What a request must pass before it
reaches a route (host, origin, key, content type, size) is in `guard.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from emosteer.server.errors import install_handlers
from emosteer.server.guard import Guard
from emosteer.server.routes import router
from emosteer.server.state import ServeConfig, Server
from emosteer.vectors import EmotionVector

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["create_app"]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.server.start()
    try:
        yield
    finally:
        app.state.server.stop()


def create_app(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               vectors: Mapping[str, EmotionVector], cfg: ServeConfig = ServeConfig(),
               model_name: str | None = None,
               vectors_from: str | Path | None = None) -> FastAPI:
    """The ASGI app; the engine thread starts with the app and stops with it.

    Args:
        model, tokenizer: from `emosteer.load_model`.
        vectors: emotion name -> vector (each file stem of the --vectors folder).
        cfg: the settings.
        model_name: the name answered in `model` fields (default: the model's id).
        vectors_from: the folder the vectors were read from, for /v1/models' provenance.

    Example:
        uvicorn.run(create_app(model, tok, vectors), host="127.0.0.1", port=8000)
    """
    from starlette.middleware.cors import CORSMiddleware

    server = Server(model, tokenizer, vectors, cfg, model_name, vectors_from)
    app = FastAPI(title="emosteer", version=_version(), lifespan=_lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.server = server
    app.state.engine = server.engine
    install_handlers(app)
    app.include_router(router)
    if cfg.allow_origins:  # answers the browsers' preflight for the pages allowed
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.allow_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, cfg=cfg)  # added last: runs first
    return app


def _version() -> str:
    from emosteer import __version__

    return __version__
