"""The REST API's routes: JSON in and out, one broker call (in a gateway thread) per request.

Every route answers as the Python client's method of the same name would, translated into HTTP
(see ``docs/web.md``): a value as a JSON view (``values``), an error as JSON with the Python
exception's message and a status code (``problems``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from functools import partial
from typing import Any, Callable

import anyio
import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..client.keyvalue import Entry
from ..config import WAIT_SLICE, WEB_MAX_BODY, WEB_MAX_WAIT
from ..errors import NwsTimeoutException
from ..protocol import Status
from . import values
from .gateway import EmptyVariable
from .problems import ClientGone, HttpProblem, problem

_NO_CONTENT = 204
_MODES = ("fifo", "lifo", "multi", "single")


async def _call(request: Request, function: Callable, *args: Any,
                limiter: anyio.CapacityLimiter | None = None) -> Any:
    """Run a blocking broker call in one of the gateway's threads (``limiter``: the threads
    it may use; by default those of the calls that do not wait)."""
    return await anyio.to_thread.run_sync(partial(function, *args),
                                          limiter=limiter or request.app.state.limiter)


async def _json_body(request: Request) -> Any:
    """The request's body parsed as JSON; at most ``max_body`` bytes are read (413 beyond)."""
    most = getattr(request.app.state, "max_body", WEB_MAX_BODY)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise HttpProblem(413, f"the body is {declared} bytes; this gateway takes at most "
                               f"{most} (its --max-body)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            raise HttpProblem(413, f"the body is over {most} bytes, the most this gateway "
                                   "takes (its --max-body)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise HttpProblem(400, "the body must be a JSON value (a number, a string in quotes, "
                               "an object, ...), and it is empty")
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpProblem(400, f"the body is not JSON: {exc}") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (nor can JSON carry it back)")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a JSON number that every reader can read")
    return number


def _wait(request: Request) -> float | None:
    text = request.query_params.get("wait")
    if text is None:
        return None
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= WEB_MAX_WAIT:
        raise HttpProblem(400, f"wait={text!r}: give seconds from 0 to {WEB_MAX_WAIT:g}")
    return wait


def _number(request: Request, name: str, default: float, kind: type = float) -> Any:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise HttpProblem(400, f"{name}={text!r} is not a{'n integer' if kind is int else ' number'}"
                          ) from None


def _view(request: Request, frames: list) -> dict:
    return values.view(frames, request.app.state.translate)


# ---------------------------------------------------------------------- the broker


async def status(request: Request) -> Response:
    """The broker's status, and which of its clients are this gateway's sessions."""
    state = request.app.state
    answer = await _call(request, state.gateway.status)
    answer["gateway"] = {"sessions": [state.gateway.label, state.hub.label]}
    return JSONResponse(answer)


# ---------------------------------------------------------------------- workspaces


async def list_workspaces(request: Request) -> Response:
    return JSONResponse(await _call(request, request.app.state.gateway.list_workspaces))


async def put_workspace(request: Request) -> Response:
    ws = request.path_params["ws"]
    created = await _call(request, request.app.state.gateway.create_workspace, ws)
    return JSONResponse({"name": ws, "created": created}, 201 if created else 200)


async def delete_workspace(request: Request) -> Response:
    gateway = request.app.state.gateway
    ws = request.path_params["ws"]
    await _call(request, gateway.delete_workspace, ws)
    return Response(status_code=_NO_CONTENT)


async def list_variables(request: Request) -> Response:
    gateway = request.app.state.gateway
    ws = request.path_params["ws"]
    listed = await _call(request, gateway.list_variables, ws)
    if request.query_params.get("preview") in ("1", "true", "yes"):
        await _call(request, _add_previews, request, ws, listed)
    return JSONResponse(listed)


#: Variables whose first value a listing with ``preview`` shows (the rest have none).
PREVIEWS = 50
#: Characters of a text or JSON preview.
PREVIEW_CHARS = 200


def _add_previews(request: Request, ws: str, listed: dict) -> None:
    """In a gateway thread: each variable's next value, shortened (one find each)."""
    gateway = request.app.state.gateway
    for row in list(listed.values())[:PREVIEWS]:
        if not row["values"]:
            continue
        try:
            frames = gateway.find(ws, row["name"], None)
        except Exception:  # noqa: BLE001 - fetched meanwhile, or deleted: no preview
            continue
        row["preview"] = _shortened(values.view(frames, request.app.state.translate_preview))


def _shortened(view: dict) -> dict:
    if view["kind"] == "bytes":  # the first bytes, still base64
        if view["size"] > PREVIEW_CHARS:
            first = base64.b64decode(view["value"])[:PREVIEW_CHARS]
            view = {**view, "value": base64.b64encode(first).decode("ascii"), "truncated": True}
        return view
    if "value" in view:
        text = view["value"] if view["kind"] == "text" else json.dumps(view["value"])
        if len(text) > PREVIEW_CHARS:
            view = {**view, "value": text[:PREVIEW_CHARS] + "…", "truncated": True}
    return view


# ---------------------------------------------------------------------- variables


async def store(request: Request) -> Response:
    gateway = request.app.state.gateway
    frames = values.frames_of(await _json_body(request))
    await _call(request, gateway.store, request.path_params["ws"], request.path_params["var"],
                frames)
    return Response(status_code=_NO_CONTENT)


async def find(request: Request) -> Response:
    return await _read(request, take=False)


async def fetch(request: Request) -> Response:
    return await _read(request, take=True)


async def _read(request: Request, take: bool) -> Response:
    """A find or fetch; with ``?wait=S``, waiting for a value (``_wait_for_value``)."""
    gateway = request.app.state.gateway
    ws, var = request.path_params["ws"], request.path_params["var"]
    wait = _wait(request)
    if wait is None:
        frames = await _call(request, gateway.fetch if take else gateway.find, ws, var, None)
    else:
        frames = await _wait_for_value(request, ws, var, wait, take)
    return JSONResponse(_view(request, frames))


async def _wait_for_value(request: Request, ws: str, var: str, wait: float,
                          take: bool) -> list:
    """Wait up to ``wait`` seconds for a value of the variable -> its frames (taken if
    ``take``). NwsTimeoutException when none came.

    The broker is asked in slices of at most ``WAIT_SLICE`` seconds, each a find that takes
    nothing and is cancelled at the broker when it runs out; between slices the gateway looks
    whether the HTTP client is still there, so a client that gave up holds no broker call and
    no thread for longer than a slice. A fetch takes its value only once a find saw one and the
    client is still there (a fetch left waiting at the broker would take a value stored later
    and hand it to no one); if another fetcher took it first, the wait goes on."""
    gateway = request.app.state.gateway
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        try:
            frames = await _call(request, gateway.find, ws, var, max(0.0, min(WAIT_SLICE, left)),
                                 limiter=request.app.state.waits)
        except NwsTimeoutException:
            if left <= WAIT_SLICE:
                raise NwsTimeoutException(f"no value of variable {var!r} of workspace {ws!r} "
                                          f"within {wait:g} s (nothing was taken)") from None
            if await request.is_disconnected():
                raise ClientGone() from None
            continue
        if not take:
            return frames
        if await request.is_disconnected():
            raise ClientGone()
        try:
            return await _call(request, gateway.fetch, ws, var, None)
        except EmptyVariable:  # another fetcher was first: wait on
            if time.monotonic() >= deadline:
                raise NwsTimeoutException(f"no value of variable {var!r} of workspace {ws!r} "
                                          f"within {wait:g} s (nothing was taken)") from None


async def declare(request: Request) -> Response:
    gateway = request.app.state.gateway
    mode = await _json_body(request)
    if not isinstance(mode, str) or mode.lower() not in _MODES:
        raise HttpProblem(400, f"illegal mode: {mode!r} (the body is one of "
                               f"{', '.join(map(json.dumps, _MODES))})")
    await _call(request, gateway.declare, request.path_params["ws"], request.path_params["var"],
                mode.lower())
    return Response(status_code=_NO_CONTENT)


async def delete_variable(request: Request) -> Response:
    gateway = request.app.state.gateway
    await _call(request, gateway.delete_variable, request.path_params["ws"],
                request.path_params["var"])
    return Response(status_code=_NO_CONTENT)


# ---------------------------------------------------------------------- key-value


def _etag(version: int) -> dict:
    return {"ETag": f'"{version}"'}


def _version_of(tag: str) -> int:
    text = tag.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise HttpProblem(400, f"If-Match: {tag!r}: give one version this gateway gave (an "
                               "ETag such as \"123\"), or * for a key that exists")
    return int(text)


async def kv_get(request: Request) -> Response:
    gateway = request.app.state.gateway
    ns, key = request.path_params["ns"], request.path_params["key"]
    entry: Entry | None = await _call(request, gateway.kv_get, ns, key)
    if entry is None:
        raise HttpProblem(404, f"no key {key!r} in namespace {ns!r}")
    if _tags(request.headers.get("if-none-match")) & {str(entry.version), "*"}:
        return Response(status_code=304, headers=_etag(entry.version))  # unchanged
    return JSONResponse({**_view(request, entry.value), "version": entry.version},
                        headers=_etag(entry.version))


def _tags(header: str | None) -> set[str]:
    """The entity tags of an If-Match or If-None-Match header, without quotes or W/."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")}


async def kv_put(request: Request) -> Response:
    gateway = request.app.state.gateway
    ns, key = request.path_params["ns"], request.path_params["key"]
    frames = values.frames_of(await _json_body(request))
    ttl = _number(request, "ttl", 0.0)
    how, version = "set", 0
    if request.headers.get("if-match", "").strip() == "*":
        how = "replace"  # only if it exists
    elif "if-match" in request.headers:
        how, version = "cas", _version_of(request.headers["if-match"])
    elif request.headers.get("if-none-match", "").strip() == "*":
        how = "add"
    elif "if-none-match" in request.headers:
        raise HttpProblem(400, "If-None-Match on a write takes * only (write if the key is "
                               "absent); to write only over a known version use If-Match")
    status_, new_version = await _call(request, gateway.kv_put, ns, key, frames, ttl, how,
                                       version)
    if status_ != Status.OK:
        said = {"add": "exists", "cas": "changed since that version, or is gone",
                "replace": "does not exist"}.get(how, "was refused")
        raise HttpProblem(412, f"key {key!r} in namespace {ns!r} {said}")
    return JSONResponse({"version": new_version}, headers=_etag(new_version))


async def kv_delete(request: Request) -> Response:
    gateway = request.app.state.gateway
    ns, key = request.path_params["ns"], request.path_params["key"]
    if not await _call(request, gateway.kv_delete, ns, key):
        raise HttpProblem(404, f"no key {key!r} in namespace {ns!r}")
    return Response(status_code=_NO_CONTENT)


async def kv_incr(request: Request) -> Response:
    gateway = request.app.state.gateway
    ns, key = request.path_params["ns"], request.path_params["key"]
    value = await _call(request, gateway.kv_incr, ns, key, _number(request, "delta", 1, int))
    if value is None:
        raise HttpProblem(404, f"no key {key!r} in namespace {ns!r}")
    return JSONResponse({"value": value})


# ---------------------------------------------------------------------- messages


async def publish(request: Request) -> Response:
    gateway = request.app.state.gateway
    frames = values.frames_of(await _json_body(request))
    try:
        delivered = await _call(request, gateway.publish, request.path_params["identifier"],
                                frames)
    except ValueError as exc:  # not an identifier
        raise HttpProblem(400, str(exc)) from None
    return JSONResponse({"delivered": delivered})


async def events(request: Request) -> Response:
    hub = request.app.state.hub
    workspace = request.query_params.get("ws")
    patterns = request.query_params.getlist("subscribe")
    if workspace is None and not patterns:
        raise HttpProblem(400, "say what to follow: ?ws=NAME (or ?ws=* for every workspace) "
                               "and/or ?subscribe=PATTERN (a pub/sub identifier, repeatable)")
    loop = asyncio.get_running_loop()
    try:
        stream = await _call(request, hub.open, loop, workspace, patterns)
    except ValueError as exc:  # a pattern that is not an identifier
        raise HttpProblem(400, str(exc)) from None

    async def lines():
        try:
            async for line in stream.lines():
                yield line
        finally:  # the reader left (this task is being cancelled): let its watch go anyway
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(hub.close, stream)

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


_WS = "/api/workspaces/{ws}"
_VAR = _WS + "/vars/{var}"
_KV = "/api/kv/{ns}/{key}"

routes = [
    Route("/api/status", status, methods=["GET"]),
    Route("/api/workspaces", list_workspaces, methods=["GET"]),
    Route(_WS, put_workspace, methods=["PUT"]),
    Route(_WS, delete_workspace, methods=["DELETE"]),
    Route(_WS + "/vars", list_variables, methods=["GET"]),
    Route(_VAR, store, methods=["POST"]),
    Route(_VAR, find, methods=["GET"]),
    Route(_VAR, delete_variable, methods=["DELETE"]),
    Route(_VAR + "/fetch", fetch, methods=["POST"]),
    Route(_VAR + "/mode", declare, methods=["PUT"]),
    Route(_KV, kv_get, methods=["GET"]),
    Route(_KV, kv_put, methods=["PUT"]),
    Route(_KV, kv_delete, methods=["DELETE"]),
    Route(_KV + "/incr", kv_incr, methods=["POST"]),
    Route("/api/publish/{identifier}", publish, methods=["POST"]),
    Route("/api/events", events, methods=["GET"]),
]


async def on_error(request: Request, exc: Exception) -> Response:
    return problem(exc)


async def on_http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own answers (no such route, a method the route has not) as JSON too."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every method of the path, not only the first route's
        headers["Allow"] = ", ".join(sorted(_methods_of(request.url.path)))
    return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}",
                         "exception": "HTTPException", "status": exc.status_code},
                        exc.status_code, headers=headers)


def _methods_of(path: str) -> set[str]:
    from starlette.routing import Match

    scope = {"type": "http", "path": path, "method": "GET"}
    return {method for route in routes if route.matches(scope)[0] != Match.NONE
            for method in route.methods or ()}
