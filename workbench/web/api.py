"""The REST API's routes: JSON in and out, one broker call (or two) per request.

Every route answers as the Python client's method of the same name would, translated into HTTP
(see ``docs/web.md``): a value as a JSON view (``values``), an error as JSON with the Python
exception's message and a status code (``problems``). The broker calls are ``calls``; a call
that does not wait and sends little goes out from the event loop (``caller``), the others
(``?wait=``, large bodies) from a gateway thread (``gateway``), at most ``WEB_CALLS`` at once.
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
import anyio.from_thread
import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..config import WAIT_SLICE, WEB_LOOP_CALL_MOST, WEB_MAX_BODY, WEB_MAX_WAIT
from ..errors import NwsTimeoutException
from ..protocol import Status
from . import calls, values
from .calls import BrokerCall, EmptyVariable, Value
from .problems import ClientGone, HttpProblem, problem

_NO_CONTENT = 204
_MODES = ("fifo", "lifo", "multi", "single")


async def _call(request: Request, function: Callable, *args: Any,
                limiter: anyio.CapacityLimiter | None = None) -> Any:
    """Run a blocking call in one of the gateway's threads (``limiter``: the threads it may
    use; by default those of the calls that do not wait)."""
    return await anyio.to_thread.run_sync(partial(function, *args),
                                          limiter=limiter or request.app.state.limiter)


async def _ask(request: Request, call: BrokerCall, wait: float | None = None,
               respond: Callable[[Any], Any] | None = None) -> Any:
    """The broker's answer to ``call`` -> ``respond(answer)`` if given, made before a value
    the call took is acknowledged (and not at all if the HTTP client went away meanwhile: the
    value goes back). From the event loop if the call does not ``wait`` and is small, else
    from a gateway thread."""
    state = request.app.state
    caller = state.caller
    if wait is None and caller.takes(call):
        if respond is None:
            return await caller.call(call)
        return await caller.call(call, partial(_respond_on_loop, request, state, respond,
                                               call.leased))
    state.thread_calls += 1
    respond_there = respond and partial(_respond_in_thread, request, respond, call.leased)
    return await anyio.to_thread.run_sync(
        partial(state.gateway.call, call, wait, respond_there), limiter=state.limiter)


def _respond_on_loop(request: Request, state: Any, respond: Callable[[Any], Any],
                     leased: bool, answer: Any) -> Any:
    """``respond(answer)`` on the loop, or a coroutine making it: in a thread if the value is
    slow to show, and checking that the client is still there if a value was taken."""
    slow = type(answer) is Value and values.slow_to_show(answer.frames, state.translate,
                                                         WEB_LOOP_CALL_MOST)
    if not (slow or leased):
        return respond(answer)
    return _respond_later(request, respond, leased, slow, answer)


async def _respond_later(request: Request, respond: Callable[[Any], Any], leased: bool,
                         slow: bool, answer: Any) -> Any:
    # Not under the broker calls' limiter: a value taken must not wait behind other calls.
    made = await anyio.to_thread.run_sync(respond, answer) if slow else respond(answer)
    if leased and await request.is_disconnected():
        raise ClientGone()  # the value it took goes back
    return made


def _respond_in_thread(request: Request, respond: Callable[[Any], Any], leased: bool,
                       answer: Any) -> Any:
    made = respond(answer)
    if leased and anyio.from_thread.run(request.is_disconnected):
        raise ClientGone()
    return made


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
    if not request.scope.get("query_string"):  # the common case, without parsing a query
        return None
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


def _shown(request: Request) -> Callable[[Value], Response]:
    """What answers with a value: its JSON view."""
    translate = request.app.state.translate
    return lambda value: JSONResponse(values.view(value.frames, translate))


# ---------------------------------------------------------------------- the broker


async def status(request: Request) -> Response:
    """The broker's status, which of its clients are this gateway's sessions, and how many
    calls the gateway made from its event loop and from its threads."""
    state = request.app.state
    answer = await _ask(request, calls.status())
    answer["gateway"] = {"sessions": [state.gateway.label, state.hub.label],
                         "calls": {"loop": state.caller.calls, "threads": state.thread_calls}}
    return JSONResponse(answer)


# ---------------------------------------------------------------------- workspaces


async def list_workspaces(request: Request) -> Response:
    return JSONResponse(await _ask(request, calls.list_workspaces()))


async def put_workspace(request: Request) -> Response:
    ws = request.path_params["ws"]
    existed = ws in await _ask(request, calls.list_workspaces())
    await _ask(request, calls.use_workspace(ws))
    return JSONResponse({"name": ws, "created": not existed}, 200 if existed else 201)


async def delete_workspace(request: Request) -> Response:
    await _ask(request, calls.delete_workspace(request.path_params["ws"]))
    return Response(status_code=_NO_CONTENT)


async def list_variables(request: Request) -> Response:
    ws = request.path_params["ws"]
    listed = await _ask(request, calls.list_variables(ws))
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
            found = gateway.call(calls.find(ws, row["name"], None))
        except Exception:  # noqa: BLE001 - fetched meanwhile, or deleted: no preview
            continue
        row["preview"] = _shortened(values.view(found.frames,
                                                request.app.state.translate_preview))


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
    frames = values.frames_of(await _json_body(request))
    await _ask(request, calls.store(request.path_params["ws"], request.path_params["var"],
                                    frames))
    return Response(status_code=_NO_CONTENT)


async def find(request: Request) -> Response:
    return await _read(request, take=False)


async def fetch(request: Request) -> Response:
    return await _read(request, take=True)


async def _read(request: Request, take: bool) -> Response:
    """A find or fetch: at once, from the event loop; with ``?wait=S``, waiting for a value
    (``_wait_for_value``)."""
    ws, var = request.path_params["ws"], request.path_params["var"]
    wait = _wait(request)
    if wait is not None:
        return await _wait_for_value(request, ws, var, wait, take)
    return await _ask(request, (calls.fetch if take else calls.find)(ws, var, None),
                      respond=_shown(request))


async def _wait_for_value(request: Request, ws: str, var: str, wait: float,
                          take: bool) -> Response:
    """Wait up to ``wait`` seconds for a value of the variable -> the answer with it (taken if
    ``take``). NwsTimeoutException when none came.

    The broker is asked in slices of at most ``WAIT_SLICE`` seconds, each a find that takes
    nothing and is cancelled at the broker when it runs out, from a thread of the waits'; between
    slices the gateway looks whether the HTTP client is still there, so a client that gave up
    holds no broker call and no thread for longer than a slice. A fetch takes its value only
    once a find saw one and the client is still there (a fetch left waiting at the broker would
    take a value stored later and hand it to no one), as a fetchTry from the event loop; if
    another fetcher took it first, the wait goes on."""
    state = request.app.state
    shown = _shown(request)
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        slice_ = max(0.0, min(WAIT_SLICE, left))
        try:
            found = await _call(request, state.gateway.call, calls.find(ws, var, slice_),
                                slice_, None if take else shown, limiter=state.waits)
        except NwsTimeoutException:
            if left <= WAIT_SLICE:
                raise NwsTimeoutException(f"no value of variable {var!r} of workspace {ws!r} "
                                          f"within {wait:g} s (nothing was taken)") from None
            if await request.is_disconnected():
                raise ClientGone() from None
            continue
        if not take:
            return found
        if await request.is_disconnected():
            raise ClientGone()
        try:
            return await _ask(request, calls.fetch(ws, var, None), respond=shown)
        except EmptyVariable:  # another fetcher was first: wait on
            if time.monotonic() >= deadline:
                raise NwsTimeoutException(f"no value of variable {var!r} of workspace {ws!r} "
                                          f"within {wait:g} s (nothing was taken)") from None


async def declare(request: Request) -> Response:
    mode = await _json_body(request)
    if not isinstance(mode, str) or mode.lower() not in _MODES:
        raise HttpProblem(400, f"illegal mode: {mode!r} (the body is one of "
                               f"{', '.join(map(json.dumps, _MODES))})")
    await _ask(request, calls.declare(request.path_params["ws"], request.path_params["var"],
                                      mode.lower()))
    return Response(status_code=_NO_CONTENT)


async def delete_variable(request: Request) -> Response:
    await _ask(request, calls.delete_variable(request.path_params["ws"],
                                              request.path_params["var"]))
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


def _no_key(ns: str, key: str) -> HttpProblem:
    return HttpProblem(404, f"no key {key!r} in namespace {ns!r}")


async def kv_get(request: Request) -> Response:
    ns, key = request.path_params["ns"], request.path_params["key"]

    def shown(entry: Value | None) -> Response:
        if entry is None:
            raise _no_key(ns, key)
        if _tags(request.headers.get("if-none-match")) & {str(entry.version), "*"}:
            return Response(status_code=304, headers=_etag(entry.version))  # unchanged
        return JSONResponse({**_view(request, entry.frames), "version": entry.version},
                            headers=_etag(entry.version))

    return await _ask(request, calls.kv_get(ns, key), respond=shown)


def _tags(header: str | None) -> set[str]:
    """The entity tags of an If-Match or If-None-Match header, without quotes or W/."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")}


async def kv_put(request: Request) -> Response:
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
    status_, new_version = await _ask(request, calls.kv_put(ns, key, frames, ttl, how,
                                                            version))
    if status_ != Status.OK:
        said = {"add": "exists", "cas": "changed since that version, or is gone",
                "replace": "does not exist"}.get(how, "was refused")
        raise HttpProblem(412, f"key {key!r} in namespace {ns!r} {said}")
    return JSONResponse({"version": new_version}, headers=_etag(new_version))


async def kv_delete(request: Request) -> Response:
    ns, key = request.path_params["ns"], request.path_params["key"]
    if not await _ask(request, calls.kv_delete(ns, key)):
        raise _no_key(ns, key)
    return Response(status_code=_NO_CONTENT)


async def kv_incr(request: Request) -> Response:
    ns, key = request.path_params["ns"], request.path_params["key"]
    value = await _ask(request, calls.kv_incr(ns, key, _number(request, "delta", 1, int)))
    if value is None:
        raise _no_key(ns, key)
    return JSONResponse({"value": value})


# ---------------------------------------------------------------------- messages


async def publish(request: Request) -> Response:
    frames = values.frames_of(await _json_body(request))
    try:
        call = calls.publish(request.path_params["identifier"], frames)
    except ValueError as exc:  # not an identifier
        raise HttpProblem(400, str(exc)) from None
    return JSONResponse({"delivered": await _ask(request, call)})


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

# The values' routes first: every request is matched against the routes in order, and these
# are the ones called most.
routes = [
    Route(_VAR, store, methods=["POST"]),
    Route(_VAR, find, methods=["GET"]),
    Route(_VAR + "/fetch", fetch, methods=["POST"]),
    Route(_VAR, delete_variable, methods=["DELETE"]),
    Route("/api/status", status, methods=["GET"]),
    Route("/api/workspaces", list_workspaces, methods=["GET"]),
    Route(_WS, put_workspace, methods=["PUT"]),
    Route(_WS, delete_workspace, methods=["DELETE"]),
    Route(_WS + "/vars", list_variables, methods=["GET"]),
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
