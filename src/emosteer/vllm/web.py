"""emosteer's playground on vLLM's OpenAI-compatible server, as an HTTP middleware.

vLLM's API server takes `--middleware emosteer.vllm.web.playground` (launcher.py passes it):
`GET /` answers with the playground page of emosteer's own server, and `GET /v1/models`
gains the fields emosteer's own server lists (`protocol.model_fields`), so the page works
the same on both engines. Every other request passes through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from emosteer import protocol
from emosteer.errors import EmosteerError
from emosteer.vllm.bank import served_bank
from emosteer.vllm.meter import served_meter

__all__ = ["playground"]


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
        return HTMLResponse(protocol.playground_page())
    response = await call_next(request)
    if response.status_code != 200:
        return response
    body = b"".join([chunk async for chunk in response.body_iterator])
    listing = json.loads(body)

    served = served_bank()
    try:
        meter = served_meter(served)
    except EmosteerError:
        meter = None
    for entry in listing.get("data", []):
        # vLLM has no per-request cap: a request may ask for up to the context length
        length = entry.get("max_model_len")
        entry.update(protocol.model_fields(served.vectors, site="attn", max_tokens=length,
                                           context_length=length, meter=meter,
                                           folder=served.folder))
    return JSONResponse(listing)
