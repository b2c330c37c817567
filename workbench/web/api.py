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
from functools import partial
from typing import Any, Callable

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..config import WEB_LOOP_CALL_MOST, WEB_MAX_BODY, WEB_MAX_WAIT
from ..protocol import Status
from . import calls, values
from .calls import BrokerCall, Value
from .problems import HttpProblem, problem

_NO_CONTENT = 204
_MODES = ("fifo", "lifo", "multi", "single")
#: What answers a request whose client went away before a value it took was handed over (the
#: value goes back; nobody reads this answer): nginx's "client closed request".
_CLIENT_GONE = 499


async def _call(request: Request, function: Callable, *args: Any) -> Any:
    """Run a blocking call in one of the gateway's threads."""
    state = request.app.state
    return await anyio.to_thread.run_sync(partial(function, *args), limiter=state.limiter)


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
    # Not under the broker calls' limiter: a value taken must not wait behind ?wait= calls.
    made = await anyio.to_thread.run_sync(respond, answer) if slow else respond(answer)
    if leased and await request.is_disconnected():
        raise _client_gone()
    return made


def _respond_in_thread(request: Request, respond: Callable[[Any], Any], leased: bool,
                       answer: Any) -> Any:
    made = respond(answer)
    if leased and anyio.from_thread.run(request.is_disconnected):
        raise _client_gone()
    return made


def _client_gone() -> HttpProblem:
    return HttpProblem(_CLIENT_GONE, "the client went away before its answer: the value it "
                                     "took was put back")


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
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpProblem(400, f"the body is not JSON: {exc}") from None


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
    wait = _wait(request)
    return await _ask(request, calls.find(request.path_params["ws"],
                                          request.path_params["var"], wait),
                      wait, _shown(request))


async def fetch(request: Request) -> Response:
    wait = _wait(request)
    return await _ask(request, calls.fetch(request.path_params["ws"],
                                           request.path_params["var"], wait),
                      wait, _shown(request))


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
        raise HttpProblem(400, f"If-Match: {tag!r} is not a version this gateway gave (an "
                               "ETag such as \"123\")")
    return int(text)


def _no_key(ns: str, key: str) -> HttpProblem:
    return HttpProblem(404, f"no key {key!r} in namespace {ns!r}")


async def kv_get(request: Request) -> Response:
    ns, key = request.path_params["ns"], request.path_params["key"]

    def shown(entry: Value | None) -> Response:
        if entry is None:
            raise _no_key(ns, key)
        return JSONResponse({**_view(request, entry.frames), "version": entry.version},
                            headers=_etag(entry.version))

    return await _ask(request, calls.kv_get(ns, key), respond=shown)


async def kv_put(request: Request) -> Response:
    ns, key = request.path_params["ns"], request.path_params["key"]
    frames = values.frames_of(await _json_body(request))
    ttl = _number(request, "ttl", 0.0)
    how, version = "set", 0
    if "if-match" in request.headers:
        how, version = "cas", _version_of(request.headers["if-match"])
    elif request.headers.get("if-none-match", "").strip() == "*":
        how = "add"
    status_, new_version = await _ask(request, calls.kv_put(ns, key, frames, ttl, how,
                                                            version))
    if status_ != Status.OK:
        said = ("exists" if how == "add" else "changed since that version, or is gone"
                if how == "cas" else "was refused")
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
