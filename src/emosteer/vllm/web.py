"""emosteer's playground on vLLM's OpenAI-compatible server, as an HTTP middleware.

vLLM's API server takes `--middleware emosteer.vllm.web.playground` (launcher.py passes it):
`GET /` answers with the playground page of emosteer's own server, and `GET /v1/models`
gains the fields that page reads ("emotions", "site", "max_alpha", "max_tokens", "meter"), so the
page works the same on both engines. Every other request passes through untouched.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from emosteer.vectors import MAX_ALPHA

__all__ = ["playground"]

PAGE = Path(__file__).resolve().parent.parent / "server" / "playground.html"


@cache
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


async def playground(request: Any, call_next: Any) -> Any:
    """The middleware: serve the page at `/`, describe the emotions in `/v1/models`.

    Args:
        request: the Starlette request.
        call_next: the rest of vLLM's app.

    Example:
        python -m vllm.entrypoints.openai.api_server --model ... \\
            --middleware emosteer.vllm.web.playground
    """
    from starlette.responses import HTMLResponse, JSONResponse

    if request.method != "GET" or request.url.path not in ("/", "/v1/models"):
        return await call_next(request)
    if request.url.path == "/":
        return HTMLResponse(_page())
    response = await call_next(request)
    if response.status_code != 200:
        return response
    body = b"".join([chunk async for chunk in response.body_iterator])
    listing = json.loads(body)
    from emosteer.errors import EmosteerError
    from emosteer.vllm.meter import served_meter
    from emosteer.vllm.plugin import bank

    names = sorted(bank().names)
    meter: list[str] | None = None  # the emotions "meter": true reads (None: no meter)
    warmup: int | None = None  # the first readings the text-level mean leaves out
    try:
        served = served_meter(bank())
        meter, warmup = list(served.emotions), served.warmup
    except EmosteerError:
        pass
    for entry in listing.get("data", []):
        entry.update(emotions=names, site="attn", max_alpha=MAX_ALPHA,
                     max_tokens=entry.get("max_model_len"), meter=meter, meter_warmup=warmup)
    return JSONResponse(listing)
