"""What every request passes before it reaches a route (docs/security.md says why).

One ASGI middleware, in this order:
1. Host allow-list when the server is bound to loopback: a page on evil.example that
   re-points its DNS name at 127.0.0.1 (DNS rebinding) sends `Host: evil.example`: refused.
   The Host is parsed, never prefix-matched: `[::1]evil.example` is not `[::1]`.
2. Origin: a browser names the page that sent a request; only the server's own origin (the
   playground) and `ServeConfig.allow_origins` pass.
3. The API key on /v1/* when one is set (compared in constant time). A browser's CORS
   preflight (OPTIONS with Access-Control-Request-Method) from an allowed origin passes
   without it: browsers never send credentials on a preflight.
4. POST bodies: a JSON content type (a browser sends text/plain or form posts across origins
   without asking first), and at most `max_body_bytes` (413), counted as the bytes arrive, so
   a huge body is refused before it is held in memory, parsed or tokenized.

A refusal sent to an origin of `allow_origins` carries Access-Control-Allow-Origin, so the
page can read why (401, 413...), as it reads the routes' own errors.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from emosteer.server.errors import APIError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from emosteer.server.state import ServeConfig

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


_PORT = re.compile(r"(:[0-9]{0,5})?")  # what may follow the name in a Host header


def _host_name(host: str) -> str | None:
    """The name of a Host header without its port, or None when it is malformed.

    A bracketed IPv6 address is parsed and written in its short form; after the name only
    ":<port>" may follow, so nothing that merely starts like an allowed name passes.

    Example:
        _host_name("[0:0::1]:8000")  # "[::1]"; _host_name("[::1]evil.example") is None
    """
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        try:
            name = f"[{ipaddress.IPv6Address(host[1:end]).compressed}]" if end > 0 else ""
        except ValueError:
            return None
        rest = host[end + 1:]
    else:
        name, sep, port = host.partition(":")
        rest = sep + port
    if not name or _PORT.fullmatch(rest) is None:
        return None
    return name


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
        hosts = {h for h in map(_host_name, names) if h is not None}
        self.hosts = hosts or None  # None: any Host (bound publicly)
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
            await error.response(self._cors(headers))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _cors(self, headers: Headers) -> dict[str, str] | None:
        """The CORS headers of a refusal sent to an origin of allow_origins (else None)."""
        origin = headers.get("origin")
        if origin is None or not self.origins:
            return None
        if origin.rstrip("/").lower() not in self.origins and "*" not in self.origins:
            return None
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def refusal(self, method: str, path: str, headers: Headers) -> APIError | None:
        """The error that refuses this request before its body is read, or None."""
        host = headers.get("host", "")
        if self.hosts is not None and (_host_name(host) or "") not in self.hosts:
            return APIError(400, f"Host {host!r} is not served here (this server answers to "
                            f"{', '.join(sorted(self.hosts))}; add a name with "
                            "--allow-host)", "invalid_host")
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            return APIError(403, f"requests from the web page at {origin!r} are refused: "
                            "start the server with --allow-origin to allow it",
                            "origin_not_allowed")
        key = self.cfg.api_key
        preflight = (method == "OPTIONS" and origin is not None
                     and "access-control-request-method" in headers)
        if key and path.startswith("/v1/") and not preflight:
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
