"""Who may ask the gateway: its token, and where a request comes from.

The token is Jupyter's model: a request carries it as ``Authorization: token T`` (or ``Bearer
T``), or once as ``?token=T``, which answers with a cookie so that a page's later requests and
its event stream need nothing more. Without a token (a gateway on loopback that was given none)
every request of this machine passes the token check.

Web pages in the user's browser are on this machine too, so ``BrowserGuard`` also refuses what
a page of another site could make the browser send: a request that changes something (any
method but GET and HEAD) whose ``Origin`` is not the gateway's own (a cross-site form or
``fetch``), and, on loopback, a request whose ``Host`` is not a loopback name (a site whose
name was made to resolve to 127.0.0.1, DNS rebinding, to read the answers).
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from ..config import WEB_TOKEN_COOKIE

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SCHEMES = (b"token ", b"bearer ")
_LOOPBACK_NAMES = {b"localhost", b"127.0.0.1", b"[::1]", b"::1"}
_SAFE_METHODS = {"GET", "HEAD"}


class TokenAuth:
    """ASGI middleware: refuse (401) what does not carry the token; set the cookie for a
    ``?token=`` that does."""

    def __init__(self, app: ASGIApp, token: str | None, secure_cookie: bool = False) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.secure_cookie = secure_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self._carried(headers):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[0].encode()
        if given and hmac.compare_digest(given, self.token):
            await self.app(scope, receive, self._setting_cookie(send))
            return
        await _refuse(scope, send)

    def _carried(self, headers: dict) -> bool:
        authorization = headers.get(b"authorization", b"")
        for scheme in _SCHEMES:
            if authorization[:len(scheme)].lower() == scheme:
                return hmac.compare_digest(authorization[len(scheme):].strip(), self.token)
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header carries no token
            return False
        morsel = cookie.get(WEB_TOKEN_COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self.token)

    def _setting_cookie(self, send: Send) -> Send:
        value = (f"{WEB_TOKEN_COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"
                 + ("; Secure" if self.secure_cookie else ""))

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"set-cookie", value.encode("latin-1"))]}
            await send(message)

        return sending


class BrowserGuard:
    """ASGI middleware: refuse (403) cross-site writes everywhere, and on loopback requests
    addressed to a name that is not a loopback one (see the module's docstring)."""

    def __init__(self, app: ASGIApp, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"")
        if self.loopback and _without_port(host) not in _LOOPBACK_NAMES:
            await _answer(send, 403, "Forbidden", "this gateway listens on loopback and answers "
                          "requests to localhost, 127.0.0.1 or [::1] only, not to "
                          f"{host.decode('latin-1')!r}")
            return
        origin = headers.get(b"origin")
        if scope["method"] not in _SAFE_METHODS and origin is not None:
            own = f"{scope.get('scheme', 'http')}://".encode() + host
            if origin != own:
                await _answer(send, 403, "Forbidden", "a change asked by a page of another "
                              f"site ({origin.decode('latin-1')}) is refused: call the gateway "
                              "from its own page, or from a program (which sends no Origin)")
                return
        await self.app(scope, receive, send)


def _without_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        return host[:host.find(b"]") + 1]
    return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host


async def _refuse(scope: Scope, send: Send) -> None:
    await _answer(send, 401, "Unauthorized",
                  "this gateway needs its token: send 'Authorization: token <token>', or open "
                  "the address it printed at start (it ends in ?token=...); the token is also "
                  "in its web connection file",
                  [(b"www-authenticate", b'Token realm="workbench"')])


async def _answer(send: Send, status: int, name: str, message: str,
                  headers: list | None = None) -> None:
    body = json.dumps({"error": message, "exception": name, "status": status},
                      separators=(",", ":")).encode()  # as every other answer
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or ())]})
    await send({"type": "http.response.body", "body": body})
