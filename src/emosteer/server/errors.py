"""OpenAI-shaped error answers: {"error": {"message", "type", "param", "code"}}.

Every way a request can fail ends here: our own `APIError`, a request body that fails
validation (worded by `schemas.describe`), Starlette's HTTP errors (unknown route, wrong
method, a body FastAPI cannot parse) and, as a last resort, any exception at all, so no
answer is ever a plain-text "Internal Server Error".
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from emosteer.server.schemas import describe

__all__ = ["APIError", "ErrorResponse", "install_handlers"]


class ErrorResponse(JSONResponse):
    """A JSON answer written with ASCII escapes: a message quoting bad input always encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields.

    Args:
        status: the HTTP status (4xx for the client's mistakes, 5xx for ours).
        message: one line saying what was wrong and what to do.
        code: a stable machine-readable name ("invalid_value", "unknown_emotion"...).
        param: the request field at fault, when there is one.
        kind: OpenAI's error type ("invalid_request_error", "rate_limit_error"...).

    Example:
        raise APIError(400, "'stop' must be a string", "invalid_value", "stop")
    """

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = (
            status, message, code, param, kind)

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> ErrorResponse:
        return ErrorResponse(self.body(), status_code=self.status, headers=headers)


async def _api_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, APIError)
    return err.response()


async def _invalid(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    code, param, message = describe(err.errors())
    return APIError(400, message, code, param).response()


async def _http(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    if err.status_code == 404:
        error = APIError(404, f"no route {request.method} {request.url.path}: see /v1/models, "
                         "/v1/chat/completions, /v1/completions, /health", "not_found")
    elif err.status_code == 405:
        error = APIError(405, f"{request.method} is not allowed on {request.url.path}",
                         "method_not_allowed")
    elif err.status_code == 400:  # FastAPI could not read the body (e.g. not UTF-8)
        error = APIError(400, "the request body is not valid JSON (send UTF-8 JSON)",
                         "invalid_json")
    else:
        error = APIError(err.status_code, str(err.detail), "http_error")
    return error.response(headers=getattr(err, "headers", None))


async def _crash(request: Request, err: Exception) -> JSONResponse:
    # Starlette re-raises after this answer is sent, so uvicorn still logs the traceback
    return APIError(500, f"internal error ({type(err).__name__}): the server keeps serving; "
                    "please report this request", "internal_error", kind="server_error"
                    ).response()


def install_handlers(app: FastAPI) -> None:
    """Answer every failure of `app` in OpenAI's error shape.

    Args:
        app: the FastAPI app.

    Example:
        install_handlers(app)
    """
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _crash)
