"""The gateway's ASGI application: the REST API, the event streams, the OpenAPI document and
the web view, behind the token (``auth``) when there is one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import (
    PREVIEW_TRANSLATE_TIMEOUT, WEB_CALL_TIMEOUT, WEB_CALLS, WEB_MAX_BODY, WEB_MAX_STREAMS,
    WEB_WAITS,
)
from ..errors import NwsException
from . import api, openapi
from .auth import BrowserGuard, TokenAuth
from .caller import LoopCaller
from .events import EventHub
from .gateway import Gateway
from .problems import ClientGone

STATIC = Path(__file__).with_name("static")


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi.document())


async def _page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


def create_app(broker: str | None = None, *, token: str | None = None,
               translate: Callable[..., Callable | None] | None = None,
               max_body: int = WEB_MAX_BODY, calls: int = WEB_CALLS,
               max_streams: int = WEB_MAX_STREAMS, secure_cookie: bool = False,
               loopback: bool = True, call_timeout: float = WEB_CALL_TIMEOUT):
    """The gateway for ``broker`` (an address or a connection file; None: as every client
    finds one). ``token``: required of every request when given. ``translate(gateway[,
    timeout])`` makes what shows pickles (a babelfish asker) or None. ``calls``: broker
    calls made from threads at once; ``call_timeout``: seconds the broker may take to answer
    a call that does not wait. The broker sessions open when the server starts the
    application and close when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state = app.state
        state.limiter = anyio.CapacityLimiter(calls)
        state.waits = anyio.CapacityLimiter(WEB_WAITS)  # apart: waits never hold up the rest
        state.max_body = max_body
        state.gateway = await anyio.to_thread.run_sync(
            lambda: Gateway(broker, call_timeout=call_timeout))
        try:
            # the calls from this loop, on a channel of the same session
            state.caller = LoopCaller(state.gateway.connection, call_timeout)
            state.thread_calls = 0
            state.hub = await anyio.to_thread.run_sync(
                lambda: EventHub(broker, max_streams=max_streams))
            state.translate = translate(state.gateway) if translate is not None else None
            # a listing asks about each pickled value: a babelfish gets less time there
            state.translate_preview = (translate(state.gateway, PREVIEW_TRANSLATE_TIMEOUT)
                                       if translate is not None else None)
            try:
                yield
            finally:
                await state.caller.aclose()
                await anyio.to_thread.run_sync(state.hub.shut)
        finally:
            await anyio.to_thread.run_sync(state.gateway.close)

    routes = [*api.routes, Route("/api/openapi.json", _openapi, methods=["GET"]),
              Route("/", _page, methods=["GET"]),
              Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={api.HttpProblem: api.on_error, ClientGone: api.on_error,
                                        NwsException: api.on_error,
                                        HTTPException: api.on_http_error,
                                        Exception: api.on_error})
    return BrowserGuard(TokenAuth(app, token, secure_cookie=secure_cookie), loopback)
