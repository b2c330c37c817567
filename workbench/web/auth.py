"""The gateway's token, as Jupyter's: a request carries it as ``Authorization: token T`` (or
``Bearer T``), or once as ``?token=T``, which answers with a cookie so that a page's later
requests and its event stream need nothing more. Without a token (a gateway on loopback that
was given none) every request passes.
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


async def _refuse(scope: Scope, send: Send) -> None:
    body = json.dumps({
        "error": "this gateway needs its token: send 'Authorization: token <token>', or open "
                 "the address it printed at start (it ends in ?token=...); the token is also "
                 "in its web connection file",
        "exception": "Unauthorized", "status": 401}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"),
                            (b"www-authenticate", b'Token realm="workbench"'),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
