"""Several gateways as one: lupyne's REST client (``lupyne.client`` before 2.0), name for name,
on the HTTP/JSON face of ``workbench web``.

Use ``Resource`` for one gateway, ``Resources`` for several with simple partitioning or
redundancy, and ``Shards`` for partitioning gateways by keys. Resources optionally keep
connections alive for reuse; a broadcast sends every request before it reads any answer, so the
gateways (and their brokers) work at once. Which host serves a request is chosen at random,
biased by the number of kept connections available: this inherently provides limited failover,
but applications must still handle exceptions as desired.

Where this adapts the original, and why:

- **JSON both ways.** A body goes as JSON, which is what the gateway reads. ``post`` and
  ``put(path, **body)`` send their keywords as one JSON object, and nothing when there are
  none. Any other JSON value (a list, a number, ``"fifo"``) goes through ``__call__``.
- **Where a host is.** A host may be ``host[:port]``. A bare host means the gateway's port,
  8766, not 80. It may be a URL ``http(s)://host:port/``: a path in it prefixes every request,
  and a ``?token=`` in it is used, as the gateway prints one. It may also be a web connection
  file (its path, or its JSON text) as ``workbench web`` writes it. The token goes into
  ``Authorization: token …`` on every request. ``https`` (or an ``ssl`` ``context``, for a
  private CA) means TLS.
- **Errors.** Calling a failed ``Response`` raises ``ResponseError``. Like the original's
  ``HTTPException(status, reason, body)`` it carries those three, and also the gateway's
  ``message``. It is part of the workbench's exception tree, so ``except NwsException``
  catches it. It is not an ``http.client.HTTPException``: importing ``http.client`` into
  ``workbench.errors`` would load it into every broker and worker.
- **Stale connections.** The original re-sent a request after a bad status line, a reset, a
  408, or CherryPy's 400 "Illegal end of headers.". The gateway's server closes an idle
  connection without answering. A 408 is the gateway's own answer to a ``?wait=`` that ran
  out. So only a kept-alive connection that turns out closed (``RemoteDisconnected``,
  ``BadStatusLine``, reset, broken pipe) is reopened. ``Resource`` does this itself, once. A
  fresh connection that fails raises.
- **Failover.** The original's ``unicast`` sent to one chosen host and let its error through.
  Here a host whose connection fails (refused, reset, timed out, its connection file gone) is
  skipped, and the next one is chosen among the rest. The failed host's idle connections are
  closed, so they no longer draw requests to it. When every host failed,
  ``HostUnreachableError`` names each one, with the last error as its cause. It is a
  ``ConnectionError``, so code that caught the original's ``OSError`` still works. An HTTP
  error status is an answer: it is returned, not skipped. A ``broadcast`` that cannot reach a
  host raises ``HostUnreachableError`` naming that host. It first closes the connections whose
  answers it will not read.
- **Priorities** are ranks, as in the original: the lowest value ranks first, as in
  ``heapq``. ``Resources.priority(host)`` is minus the host's idle connections, so the host
  with the most ranks first. ``Shards.priority(hosts)`` is (number of hosts, sum of their
  priorities), compared as a tuple. So a multicast reaches the fewest hosts, and among equal
  covers the one with the most idle connections. Read "the highest combined priority" as this
  first rank, not as the largest number.
- **Order.** A key's hosts are a set, as in the original. ``Shards`` sends to them in the order
  the hosts were first given, so a broadcast's answers come in a known order. Each
  ``Response`` also says which URL it answers. A ``multicast`` to no keys sends nothing. The
  original sent that to every host.
- **Python 3.** ``http.client`` for ``httplib``, ``__bool__`` for ``__nonzero__``; the idle
  connections of a host are a plain deque where the original named one ``Resources.Manager``.
- **Limits.** One lock guards the idle connections. A connection beyond ``limit`` is closed,
  not left to the garbage collector. Every connection has a timeout (``SHARDS_TIMEOUT``, 30 s)
  instead of blocking forever. A response's body is read whole when it arrives, as in the
  original, so the event stream (``/api/events``) is not for this client.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import itertools
import json
import random
import ssl
import threading
from collections import defaultdict, deque
from typing import Any, Callable, Hashable, Iterable, Iterator, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from .config import SHARDS_TIMEOUT, WEB_PORT
from .errors import HostUnreachableError, NwsConnectionFileException, ResponseError

__all__ = ["HostUnreachableError", "Resource", "Resources", "Response", "ResponseError",
           "Shards"]

JSON = "application/json"
#: How a kept-alive connection that the server closed meanwhile shows itself.
_STALE = (http.client.BadStatusLine, ConnectionResetError, ConnectionAbortedError,
          BrokenPipeError)
#: How a host that cannot be reached shows itself (a missing connection file: a stopped
#: gateway removes its own).
_UNREACHABLE = (OSError, http.client.HTTPException, NwsConnectionFileException)


class Response(http.client.HTTPResponse):
    """A completed response which handles JSON and caches its body."""

    request_line = ""  # "METHOD URL" of the request it answers, for messages

    def begin(self) -> None:
        super().begin()
        body = self.read()  # all of it, now, so that the connection is free for the next
        if body and "gzip" in (self.getheader("Content-Encoding") or ""):
            body = gzip.decompress(body)
        self.body: bytes = body

    def __bool__(self) -> bool:
        """Whether the status is successful (2xx)."""
        return 200 <= self.status < 300

    def __call__(self) -> Any:
        """The evaluated body (None when empty), or ResponseError."""
        if not self:
            raise self.error()
        return self.evaluated()

    def evaluated(self) -> Any:
        """The body: parsed when it is JSON, None when empty, else the bytes."""
        if not self.body:
            return None
        if _is_json(self.getheader("Content-Type") or ""):
            return json.loads(self.body)
        return self.body

    def error(self) -> ResponseError:
        """What this answer says went wrong: the gateway's ``error`` message when it gave one
        (its JSON answer), else the body's text, else the reason."""
        message, exception = None, None
        try:
            found = self.evaluated()
        except ValueError:
            found = None
        if isinstance(found, dict) and isinstance(found.get("error"), str):
            message, exception = found["error"], found.get("exception")
        elif isinstance(found, bytes):
            message = found.decode("utf-8", "replace").strip()[:500]
        return ResponseError(self.status, self.reason, self.body, message or self.reason,
                             exception, self.request_line)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == JSON or media.endswith("+json")


class Location(NamedTuple):
    """Where a gateway is, from any of the forms a host may take (the module's docstring)."""

    host: str
    port: int
    tls: bool
    token: str | None
    prefix: str  # a path every request goes under ("" for none)

    @classmethod
    def of(cls, given: str) -> Location:
        text, token = given.strip(), None
        if text.startswith("{") or text.endswith(".json"):
            text, token = _read_web_connection_file(text)
        elif "://" not in text:
            text = f"http://{text}:{WEB_PORT}" if _bare_host(text) else f"http://{text}"
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{given!r} is not a gateway's address: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{given!r} is not a gateway's address: give host[:port], "
                             "http(s)://host:port/ or a web connection file")
        tls = parts.scheme == "https"
        token = token or parse_qs(parts.query).get("token", [None])[0]
        return cls(parts.hostname, port or (443 if tls else 80), tls, token,
                   parts.path.rstrip("/"))

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{self.prefix}{path}"


def _bare_host(text: str) -> bool:
    """``example.org``, ``10.0.0.5`` or ``[::1]``: no port given."""
    return text.endswith("]") or ":" not in text


def _read_web_connection_file(text: str) -> tuple[str, str | None]:
    """A web connection file (its path, or its JSON text) -> its URL and token."""
    source = "the web connection given as JSON text"
    if not text.startswith("{"):
        source = text
        try:
            with open(text, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise NwsConnectionFileException(
                f"cannot read the web connection file {source}: {exc.strerror or exc} (a "
                "gateway removes its own when it stops)") from None
    try:
        found = json.loads(text)
        url, token = found["url"], found.get("token")
    except (ValueError, KeyError, TypeError):
        raise NwsConnectionFileException(
            f"{source} is not a web connection file: `workbench web` writes one as JSON "
            '{"url": ..., "token": ...}') from None
    return url, token


class Resource(http.client.HTTPConnection):
    """Synchronous keep-alive connection to one gateway which handles JSON responses.

    ``host``: ``host[:port]``, a URL or a web connection file (the module's docstring);
    ``port`` overrides the one it gives; ``timeout``: seconds to connect and for each read;
    ``context``: an ``ssl.SSLContext`` (for a private CA), which also means TLS."""

    response_class = Response

    def __init__(self, host: str, port: int | None = None,
                 timeout: float | None = SHARDS_TIMEOUT, *,
                 context: ssl.SSLContext | None = None) -> None:
        location = Location.of(host)
        if port is not None:
            location = location._replace(port=port)
        super().__init__(location.host, location.port, timeout)
        if context is None and location.tls:
            context = ssl.create_default_context()
        self.location, self.context = location._replace(tls=context is not None), context
        self._sent: tuple[str, str, bytes | None, dict] | None = None
        self._reused = False  # whether the request went on a connection kept from before

    def connect(self) -> None:
        super().connect()
        if self.context is not None:
            self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)

    @property
    def kept_alive(self) -> bool:
        """Whether the connection stays open for another request."""
        return self.sock is not None

    def request(self, method: str, path: str, body: Any = None) -> None:  # type: ignore[override]
        """Send the request, ``body`` (unless None) as JSON."""
        headers = {"Accept": JSON, "Accept-Encoding": "gzip"}
        if self.location.token:
            headers["Authorization"] = f"token {self.location.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = JSON
        self._sent = (method, path, data, headers)
        self._send()

    def _send(self) -> None:
        method, path, data, headers = self._sent
        for _ in range(2):  # a kept connection that the server closed: once more, on a new one
            self._reused = self.kept_alive
            try:
                return super().request(method, self.location.prefix + path, data, headers)
            except BaseException as exc:
                self.close()  # else http.client refuses every later request on it
                if not (self._reused and isinstance(exc, _STALE)):
                    raise

    def getresponse(self) -> Response:
        """The completed response (its body read); a kept connection that the server had
        closed is reopened and the request sent again, once."""
        try:
            response = self._receive()
        except _STALE:
            if not self._reused:
                raise
            self._send()  # on a new connection now: a second failure is a real one
            response = self._receive()
        method, path, _, _ = self._sent
        response.request_line = f"{method} {self.location.url(path)}"
        return response

    def _receive(self) -> Response:
        try:
            return super().getresponse()
        except BaseException:
            self.close()  # an answer half read leaves the connection unusable
            raise

    def __enter__(self) -> Resource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        """Send the request and return the evaluated response body."""
        self.request(method, path, body)
        return self.getresponse()()

    def get(self, path: str, **params: Any) -> Any:
        return self("GET", _with_query(path, params))

    def delete(self, path: str, **params: Any) -> Any:
        return self("DELETE", _with_query(path, params))

    def post(self, path: str, **body: Any) -> Any:
        return self("POST", path, body or None)

    def put(self, path: str, **body: Any) -> Any:
        return self("PUT", path, body or None)


def _with_query(path: str, params: dict) -> str:
    if not params:
        return path
    return f"{path}{'&' if '?' in path else '?'}{urlencode(params, doseq=True)}"


def _best(candidates: Iterable, priority: Callable[[Any], Any]) -> Any:
    """A candidate of the first rank (the lowest priority value), at random among equals;
    a candidate whose priority is None is out. ValueError when none is left."""
    ranked: dict[Any, list] = defaultdict(list)
    for candidate in candidates:
        rank = priority(candidate)
        if rank is not None:
            ranked[rank].append(candidate)
    if not ranked:
        raise ValueError("no host to choose from: none given, or every one's priority is None")
    return random.choice(ranked[min(ranked)])


class Resources(dict):
    """Thread-safe mapping of hosts to their idle kept-alive connections.

    ``hosts``: ``host[:port]`` strings, URLs or web connection files; ``limit``: the most idle
    connections kept per host (0: none, a new connection per request). ``timeout`` and
    ``context`` are given to every ``Resource``."""

    resource_class = Resource

    def __init__(self, hosts: Iterable[str], limit: int = 0, *,
                 timeout: float | None = SHARDS_TIMEOUT,
                 context: ssl.SSLContext | None = None) -> None:
        super().__init__((host, deque()) for host in hosts)
        self.limit, self.timeout, self.context = limit, timeout, context
        self._lock = threading.Lock()

    def priority(self, host: str) -> int | None:
        """The host's rank, lowest first: minus its idle connections. Subclasses may return
        None to take a host out of consideration."""
        return -len(self[host])  # a deque's length is read atomically

    def choice(self, hosts: Iterable[str]) -> str:
        """The host to send to, by priority (the module's docstring); ValueError if none."""
        return _best(hosts, self.priority)

    def request(self, host: str, method: str, path: str, body: Any = None) -> Resource:
        """Send the request to ``host``, on an idle connection if one is kept -> the
        connection, now the caller's until ``getresponse``."""
        with self._lock:
            idle = self[host]
            resource = idle.popleft() if idle else None
        if resource is None:
            resource = self.resource_class(host, timeout=self.timeout, context=self.context)
        resource.request(method, path, body)
        return resource

    def getresponse(self, host: str, resource: Resource) -> Response:
        """The response; the connection is kept for the next request if the answer left it
        open and ``host`` has room for it, else closed."""
        response = resource.getresponse()
        with self._lock:
            idle = self[host]
            if resource.kept_alive and len(idle) < self.limit:
                idle.append(resource)
                return response
        resource.close()
        return response

    def forget(self, host: str) -> None:
        """Close the idle connections of ``host``."""
        with self._lock:
            idle = list(self[host])
            self[host].clear()
        for resource in idle:
            resource.close()

    def close(self) -> None:
        """Close every idle connection."""
        for host in self:
            self.forget(host)

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _reaching(self, host: str, method: str, path: str) -> Iterator[None]:
        """A failure to reach ``host`` -> HostUnreachableError naming it; its idle connections
        are closed, as they most likely went the same way."""
        try:
            yield
        except _UNREACHABLE as exc:
            self.forget(host)
            raise HostUnreachableError(f"{host} could not be reached for {method} {path} "
                                       f"({type(exc).__name__}: {exc})") from exc

    def unicast(self, method: str, path: str, body: Any = None,
                hosts: Iterable[str] = ()) -> Response:
        """Send the request and return the response from any host, optionally from ``hosts``;
        a host that cannot be reached is skipped for the next (the module's docstring)."""
        left, failures = list(hosts) or list(self), []
        while True:
            try:
                host = self.choice(left)
            except ValueError:
                if not failures:
                    raise
                raise HostUnreachableError(
                    "no host answered: " + "; ".join(map(str, failures))) from failures[-1]
            try:
                with self._reaching(host, method, path):
                    return self.getresponse(host, self.request(host, method, path, body))
            except HostUnreachableError as exc:
                failures.append(exc)
                left = [other for other in left if other != host]

    def broadcast(self, method: str, path: str, body: Any = None,
                  hosts: Iterable[str] = ()) -> list[Response]:
        """Send the request to every host, optionally only ``hosts``, before reading any
        answer -> the responses, in host order. HostUnreachableError names a host that
        cannot be reached."""
        pending: list[tuple[str, Resource]] = []
        try:
            for host in list(hosts) or list(self):
                with self._reaching(host, method, path):
                    pending.append((host, self.request(host, method, path, body)))
            responses = []
            while pending:
                host, resource = pending[0]
                with self._reaching(host, method, path):
                    responses.append(self.getresponse(host, resource))
                pending.pop(0)
            return responses
        finally:
            for _, resource in pending:  # answers that will not be read: their connections go
                resource.close()


class Shards(dict):
    """Mapping of keys to host clusters (sets of hosts), with associated ``resources``.

    ``items``: (host, key) pairs; ``limit``: the most idle connections kept per host;
    ``multimap``: hosts to their keys, ``host=[key, ...]``."""

    resources_class = Resources

    def __init__(self, items: Iterable[tuple[str, Hashable]] = (), limit: int = 0,
                 **multimap: Iterable[Hashable]) -> None:
        super().__init__()
        pairs = ((host, key) for host, keys in multimap.items() for key in keys)
        hosts: dict[str, None] = {}  # in the order first given: the order answers come in
        for host, key in itertools.chain(items, pairs):
            self.setdefault(key, set()).add(host)
            hosts[host] = None
        self.resources = self.resources_class(hosts, limit)

    def priority(self, hosts: Iterable[str]) -> tuple[int, int] | None:
        """The combined rank of a set of hosts, lowest first: (how many, the sum of their
        priorities); None if any host's is None."""
        priorities = [self.resources.priority(host) for host in hosts]
        if None in priorities:
            return None
        return len(priorities), sum(priorities)

    def choice(self, hostsets: Iterable[frozenset]) -> frozenset:
        """The set of hosts to send to, by priority; ValueError if none."""
        return _best(hostsets, self.priority)

    def _in_order(self, hosts: Iterable[str]) -> list[str]:
        chosen = set(hosts)
        return [host for host in self.resources if host in chosen]

    def unicast(self, key: Hashable, method: str, path: str, body: Any = None) -> Response:
        """Send the request and return the response from any host of ``key``."""
        return self.resources.unicast(method, path, body, self._in_order(self[key]))

    def broadcast(self, key: Hashable, method: str, path: str,
                  body: Any = None) -> list[Response]:
        """Send the request to every host of ``key`` -> the responses, in host order."""
        return self.resources.broadcast(method, path, body, self._in_order(self[key]))

    def multicast(self, keys: Iterable[Hashable], method: str, path: str,
                  body: Any = None) -> list[Response]:
        """Send the request to a minimal set of hosts covering every key -> the responses.
        Answers may overlap, or cover keys not asked for, depending on the partitioning."""
        covers = {frozenset()}
        for key in keys:  # one host per key: as many covers as the product of the clusters
            covers = {cover | {host} for cover in covers for host in self[key]}
        chosen = self.choice(covers)
        if not chosen:
            return []
        return self.resources.broadcast(method, path, body, self._in_order(chosen))

    def close(self) -> None:
        """Close every idle connection."""
        self.resources.close()

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
