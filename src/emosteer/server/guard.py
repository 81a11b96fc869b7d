"""What every request passes before it reaches a route (docs/security.md says why).

One ASGI middleware, in this order:
1. Host allow-list when the server is bound to loopback: a page on evil.example that
   re-points its DNS name at 127.0.0.1 (DNS rebinding) sends `Host: evil.example`: refused.
2. Origin: a browser names the page that sent a request; only the server's own origin (the
   playground) and `ServeConfig.allow_origins` pass.
3. The API key on /v1/* when one is set (compared in constant time).
4. POST bodies: a JSON content type (a browser sends text/plain or form posts across origins
   without asking first), and at most `max_body_bytes` (413), counted as the bytes arrive, so
   a huge body is refused before it is held in memory, parsed or tokenized.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from emosteer.server.errors import APIError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from emosteer.server.app import ServeConfig

__all__ = ["LOOPBACK_NAMES", "Guard", "is_loopback"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # Host names of this machine
# An over-cap body is read and dropped up to this much before the 413, so a client that
# sends it whole (urllib, requests) reads the answer instead of a broken pipe; beyond it the
# connection is cut.
DRAIN_BYTES = 64 * 1024 * 1024


def is_loopback(host: str) -> bool:
    """True for a bind address only this machine can reach (127.0.0.0/8, ::1, localhost).

    Example:
        is_loopback("127.0.0.1")  # True; is_loopback("0.0.0.0") is False
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class Guard:
    """ASGI middleware that refuses, in OpenAI's error shape, what must not reach a route.

    Args:
        app: the ASGI app to guard.
        cfg: the server's settings (host, api_key, allowed_hosts, allow_origins,
            max_body_bytes).

    Example:
        app.add_middleware(Guard, cfg=ServeConfig())
    """

    def __init__(self, app: ASGIApp, cfg: ServeConfig) -> None:
        self.app = app
        self.cfg = cfg
        names = set(cfg.allowed_hosts) | (set(LOOPBACK_NAMES) if is_loopback(cfg.host) else set())
        self.hosts = {_host_name(n) for n in names} or None  # None: any Host (bound publicly)
        self.origins = {o.rstrip("/").lower() for o in cfg.allow_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = self.refusal(scope["method"], scope["path"], headers)
        if error is None and scope["method"] == "POST":
            try:
                body = await self._read_body(headers, receive)
            except _ClientGone:
                return
            except APIError as err:
                error = err
            else:
                receive = _replay(body, receive)
        if error is not None:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, method: str, path: str, headers: Headers) -> APIError | None:
        """The error that refuses this request before its body is read, or None."""
        host = headers.get("host", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return APIError(400, f"Host {host!r} is not served here (this server answers to "
                            f"{', '.join(sorted(self.hosts))}; add a name with "
                            "--allow-host)", "invalid_host")
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            return APIError(403, f"requests from the web page at {origin!r} are refused: "
                            "start the server with --allow-origin to allow it",
                            "origin_not_allowed")
        key = self.cfg.api_key
        if key and path.startswith("/v1/"):
            header = headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                return APIError(401, "missing or wrong API key: send 'Authorization: Bearer "
                                "<key>' with the key the server was started with",
                                "invalid_api_key")
        if method == "POST" and not _is_json(headers.get("content-type", "")):
            return APIError(415, "send the body as JSON with 'Content-Type: application/json' "
                            f"(got {headers.get('content-type', 'none')!r})",
                            "unsupported_media_type")
        return None

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins or "*" in self.origins:
            return True
        return origin != "null" and urlsplit(origin).netloc == host.strip().lower()

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes:
        cap = self.cfg.max_body_bytes
        too_big = APIError(413, f"the request body is over this server's cap of {cap} bytes "
                           "(--max-body-bytes): send a shorter prompt", "request_too_large")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            await _drain(receive, 0)
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                if message.get("more_body", False):
                    await _drain(receive, size)
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _ClientGone(Exception):
    pass


async def _drain(receive: Receive, size: int) -> None:
    """Read and drop the rest of a body (up to DRAIN_BYTES in all), keeping nothing."""
    while size <= DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Callable[[], Any]:
    """A receive() that hands the app the body already read, then listens for a disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
