"""The API's OpenAPI 3.1 document, served at ``/api/openapi.json``.

Written out here rather than generated: the routes are few, and each one's meaning is the
Python method it stands for. ``tests/test_web.py`` checks that it and the routes name the same
operations.
"""

from __future__ import annotations

import re

from .._version import __version__

_VIEW = {"$ref": "#/components/schemas/Value"}
_ERROR = {"description": "an error: the Python exception's message and name",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {}}},
              "description": "any JSON value"}
_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number"},
         "description": "seconds to wait for a value (without it: answer at once)"}


#: What any route may answer: the token missing (a gateway with one), a page of another site
#: or a name that is not loopback (``auth.BrowserGuard``), the broker gone or silent.
_EVERY_ROUTE = {
    "401": _ERROR, "403": _ERROR,
    "502": {**_ERROR, "description": "the broker went away or fell silent (the heartbeat gave "
                                     "it up): NwsConnectionDroppedException"},
    "504": {**_ERROR, "description": "the broker did not answer within the gateway's call "
                                     "timeout; the request was cancelled: BrokerTimeout"},
}


def _ok(description: str, schema: dict | None = None) -> dict:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: (method, path) -> (summary: the Python call it is, extra parameters, body, answers)
OPERATIONS = {
    ("get", "/api/status"): ("NwsServer.status(): the broker's state", [], None,
                             {"200": _ok("the status", {"type": "object"})}),
    ("get", "/api/workspaces"): ("listWss(format='dict')", [], None,
                                 {"200": _ok("workspaces by name", {"type": "object"})}),
    ("put", "/api/workspaces/{ws}"): ("useWs(ws, create=True)", [], None, {
        "201": _ok("made", {"type": "object"}), "200": _ok("it existed", {"type": "object"})}),
    ("delete", "/api/workspaces/{ws}"): ("deleteWs(ws)", [], None,
                                         {"204": _ok("deleted"), "404": _ERROR}),
    ("get", "/api/workspaces/{ws}/vars"): ("listVars(format='dict')", [
        {"name": "preview", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "1: each variable's next value, shortened"}], None,
        {"200": _ok("variables by name", {"type": "object"}), "404": _ERROR}),
    ("post", "/api/workspaces/{ws}/vars/{var}"): ("store(var, value)", [], _JSON_BODY,
                                                  {"204": _ok("stored"), "404": _ERROR}),
    ("get", "/api/workspaces/{ws}/vars/{var}"): ("findTry(var); with wait, find(var, wait)",
                                                 [_WAIT], None, {
        "200": _ok("a value, left there", _VIEW), "404": _ERROR, "408": _ERROR}),
    ("delete", "/api/workspaces/{ws}/vars/{var}"): ("deleteVar(var)", [], None,
                                                    {"204": _ok("deleted"), "404": _ERROR}),
    ("post", "/api/workspaces/{ws}/vars/{var}/fetch"): (
        "fetchTry(var); with wait, fetch(var, wait)", [_WAIT], None, {
            "200": _ok("a value, taken", _VIEW), "404": _ERROR, "408": _ERROR}),
    ("put", "/api/workspaces/{ws}/vars/{var}/mode"): (
        "declare(var, mode)", [], {"required": True, "content": {"application/json": {
            "schema": {"enum": ["fifo", "lifo", "multi", "single"]}}}},
        {"204": _ok("declared"), "400": _ERROR, "409": _ERROR}),
    ("get", "/api/kv/{ns}/{key}"): ("KeyValueStore(workspace=ns).get(key)", [
        {"name": "If-None-Match", "in": "header", "required": False,
         "schema": {"type": "string"}, "description": "the ETags known: 304 if current"}],
        None, {"200": _ok("the entry; its version is also the ETag", _VIEW),
               "304": _ok("the version given is the current one"), "404": _ERROR}),
    ("put", "/api/kv/{ns}/{key}"): ("store(key, value, ttl); If-Match: a version: cas, *: "
                                    "replace; If-None-Match: *: add", [
        {"name": "ttl", "in": "query", "required": False, "schema": {"type": "number"}},
        {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}},
        {"name": "If-None-Match", "in": "header", "required": False,
         "schema": {"type": "string"}}], _JSON_BODY,
        {"200": _ok("written: the new version", {"type": "object"}), "400": _ERROR,
         "412": _ERROR}),
    ("delete", "/api/kv/{ns}/{key}"): ("delete(key)", [], None,
                                       {"204": _ok("deleted"), "404": _ERROR}),
    ("post", "/api/kv/{ns}/{key}/incr"): ("incr(key, delta)", [
        {"name": "delta", "in": "query", "required": False, "schema": {"type": "integer"}}],
        None, {"200": _ok("the new number", {"type": "object"}), "404": _ERROR,
               "400": _ERROR}),
    ("post", "/api/publish/{identifier}"): ("MessageBus.publish(identifier, value, wait=True)",
                                            [], _JSON_BODY, {
        "200": _ok("how many received it", {"type": "object"}), "400": _ERROR}),
    ("get", "/api/events"): ("server-sent events: workspace changes and messages", [
        {"name": "ws", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "a workspace, or * for every one"},
        {"name": "subscribe", "in": "query", "required": False,
         "schema": {"type": "array", "items": {"type": "string"}},
         "description": "pub/sub identifier patterns (repeatable)"}], None,
        {"200": {"description": "text/event-stream: snapshot, workspace, message, overflow",
                 "content": {"text/event-stream": {}}}, "400": _ERROR}),
}


def document() -> dict:
    paths: dict = {}
    for (method, path), (summary, parameters, body, answers) in OPERATIONS.items():
        in_path = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                   for name in re.findall(r"{(\w+)}", path)]
        operation = {"summary": summary, "parameters": in_path + parameters,
                     "responses": {**answers, **_EVERY_ROUTE}}
        if body is not None:
            operation["requestBody"] = body
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "workbench HTTP/JSON gateway", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header",
                                          "name": "Authorization",
                                          "description": "token <the gateway's token>"}},
            "schemas": {
                "Value": {"type": "object", "required": ["kind"], "properties": {
                    "kind": {"enum": ["json", "text", "int", "bytes", "pickle", "unknown"]},
                    "value": {}, "encoding": {"const": "base64"}, "type": {"type": "string"},
                    "size": {"type": "integer"}, "repr": {"type": "string"}}},
                "Error": {"type": "object", "required": ["error", "exception", "status"],
                          "properties": {"error": {"type": "string"},
                                         "exception": {"type": "string"},
                                         "status": {"type": "integer"}}},
            },
        },
        "security": [{}, {"token": []}],
    }
