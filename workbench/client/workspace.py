"""The NetWorkSpaces API: ``NwsServer`` (a session with a broker) and ``NetWorkSpace``.

Names, arguments and behaviour follow ``nws.client``; every method also answers to its PEP 8
name (``fetchTry`` is ``fetch_try``), the same function under two names.
"""

from __future__ import annotations

import io
import json
from typing import Any, BinaryIO, Callable, Iterable
from urllib.parse import urlsplit

from ..codec import decode, decode_at, encode, raw_bytes
from ..config import CONNECT_TIMEOUT, REPR_TIMEOUT
from ..errors import (
    NwsBadRequestException, NwsIllegalModeException, NwsNoWorkSpaceException,
    NwsOperationException, NwsUnsupportedMethodException,
)
from ..protocol import HEADER_SIZE, META, Op, Status, pack_many, split_many, valid_template
from .cluster import Brokers, ClusterWatch, cluster_status, is_several, temp_name
from .connection import Connection
from .embedded import connect
from .iterator import NwsValueIterator
from .pubsub import Watch
from .textfile import NwsTextFile

FIFO, LIFO, MULTI, SINGLE = "fifo", "lifo", "multi", "single"
_MODES = (FIFO, LIFO, MULTI, SINGLE)
STRING, DICT = "string", "dict"
V_VARIABLE, V_VALUES, V_FETCHERS, V_FINDERS, V_MODE = range(5)
WS_NAME, WS_MINE, WS_OWNER, WS_PERSISTENT, WS_NUMVARS, WS_VARLIST = range(6)

_MISSING = object()


_VALUE_AT = HEADER_SIZE + META.size


def _value_frames(head: bytes, extra: list) -> list:
    """A value reply's frames: the first rides in the head after META."""
    return [memoryview(head)[_VALUE_AT:], *extra]


def _decode_value(head: bytes, extra: list) -> Any:
    return decode_at(head, _VALUE_AT, extra)


def _decode_many(head: bytes, extra: list) -> list[tuple[Any, int]]:
    """A FETCH_MANY reply -> [(value, times its holder's session ended before)]."""
    return [(decode(frames), returns) for frames, returns in split_many(head, extra)]


def _decode_raw(head: bytes, extra: list) -> bytes:
    return raw_bytes(_value_frames(head, extra))


def _json(head: bytes) -> Any:
    return json.loads(head[HEADER_SIZE:])


def _flag(value: bool) -> bytes:
    return b"1" if value else b"0"


def _write(fobj: Any, data: bytes) -> int:
    if isinstance(fobj, io.TextIOBase):
        fobj.write(data.decode("utf-8"))
    else:
        fobj.write(data)
    return len(data)


class NwsServer:
    """A session with a broker. Closing it (or its process ending) purges the non-persistent
    workspaces it owns.

    With no ``host`` and ``port``, the broker comes from ``WORKBENCH_BROKER``, else the default
    address if a broker answers there, else a private broker started for this process.
    ``host`` may be a broker's connection file (``port`` is then ignored): its keys are used.

    ``host`` may also name several brokers that act as one (a list of addresses or connection
    files, or a cluster file; see ``client.cluster``): each workspace then lives whole on the
    broker its name is placed on, ``listWss`` and ``status`` cover them all, and a broker that
    is down makes what needs it raise NwsConnectException naming it.
    """

    def __init__(self, host: str | list | None = None, port: int | None = None,
                 timeout: float = CONNECT_TIMEOUT, connection: Connection | None = None) -> None:
        #: The brokers acting as one, when ``host`` named several (None: one broker).
        self.brokers: Brokers | None = None
        if connection is None and is_several(host):
            self.brokers = Brokers(host, timeout)
            self._connection = None
            self.serverHost, self.serverPort = host, None  # what a handle sent elsewhere uses
            return
        self._connection = connection or connect(host, port, timeout)
        parts = urlsplit(self._connection.address)
        self.serverHost = parts.hostname
        self.serverPort = parts.port

    @property
    def address(self) -> str:
        if self.brokers is not None:
            return f"a cluster of {self.brokers}"
        return self._connection.address

    def connection_for(self, wsName: str) -> Connection:
        """The session with the broker that holds workspace ``wsName``."""
        if self.brokers is None:
            return self._connection
        return self.brokers.connection_for(wsName)

    def _sessions(self) -> list[Connection]:
        """A session with each broker (one, unless this is a cluster's)."""
        if self.brokers is None:
            return [self._connection]
        return [connection for _, connection in self.brokers.each()]

    def __str__(self) -> str:
        return f"NwsServer {self.address}"

    def __repr__(self) -> str:
        closed = self.brokers is None and self._connection.closed
        return f"<NwsServer {self.address}{' closed' if closed else ''}>"

    def _repr_html_(self) -> str:
        """In a notebook: the broker's workspaces, owner and variables (yours in bold)."""
        from html import escape

        title = f"<b>NwsServer</b> {escape(self.address)}"
        try:
            rows = self._list_wss(REPR_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a repr shows what went wrong, never raises
            return f"<div>{title}: {escape(str(exc))}</div>"
        cells = "".join(
            f"<tr><td>{f'<b>{escape(name)}</b>' if mine else escape(name)}</td>"
            f"<td>{escape(str(owner or '-'))}</td><td>{'yes' if persistent else ''}</td>"
            f"<td>{nvars}</td></tr>" for name, mine, owner, persistent, nvars, _ in rows[:100])
        more = f"<div>… and {len(rows) - 100} more</div>" if len(rows) > 100 else ""
        return (f"<div>{title}: {len(rows)} workspaces</div><table><tr><th>workspace</th>"
                f"<th>owner</th><th>persistent</th><th>variables</th></tr>{cells}</table>{more}")

    def openWs(self, wsName: str, space: NetWorkSpace | None = None, **opt: Any) -> NetWorkSpace:
        """Open a workspace, taking ownership if nobody owns it; returns a NetWorkSpace.

        Keyword arguments: ``persistent`` (outlive the owner; only the claiming open sets it),
        ``create`` (create it if missing; default True)."""
        if space is None:
            return NetWorkSpace(wsName, server=self, **opt)
        self.connection_for(wsName).call(Op.OPEN_WS, [
            wsName.encode(), _flag(opt.get("persistent", False)), _flag(opt.get("create", True))])
        return space

    def useWs(self, wsName: str, space: NetWorkSpace | None = None, **opt: Any) -> NetWorkSpace:
        """Use a workspace without ever taking ownership; ``create`` as for openWs."""
        if space is None:
            return NetWorkSpace(wsName, server=self, useUse=True, **opt)
        self.connection_for(wsName).call(Op.USE_WS, [wsName.encode(),
                                                     _flag(opt.get("create", True))])
        return space

    def deleteWs(self, wsName: str) -> None:
        """Delete a workspace: its values are destroyed and blocked callers get an error."""
        self.connection_for(wsName).call(Op.DELETE_WS, [wsName.encode()])

    def mktempWs(self, wsName: str = "__pyws__%d") -> str:
        """Create an unowned workspace named from a template with one ``%d``; returns the name.
        On a cluster the number is random (64 bits), so that names made at once by different
        clients on different brokers never meet, and the workspace is made on the broker its
        name is placed on."""
        if self.brokers is None:
            head = self._connection.call(Op.MKTEMP_WS, [wsName.encode()])
            return head[HEADER_SIZE:].decode()
        if not valid_template(wsName):
            raise NwsBadRequestException(
                f"workspace template {wsName!r} must contain exactly one integer conversion "
                "such as %d (write %% for a literal percent sign)")
        while True:
            name = temp_name(wsName, self.brokers.members)
            connection = self.connection_for(name)
            try:
                connection.call(Op.LIST_VARS, [name.encode()])
            except NwsNoWorkSpaceException:
                connection.call(Op.USE_WS, [name.encode(), b"1"])
                return name

    def listWss(self, format: str = STRING) -> str | dict:
        """All workspaces: a printable string (``>`` marks the ones this session owns) or a
        dict name -> (name, mine, owner, persistent, nvars, [vars])."""
        rows = self._list_wss()
        if format == DICT:
            return {row[0]: tuple(row) for row in rows}
        _check_format(format)
        return "".join(
            f"{'>' if mine else ' '}{name}\t{owner}\t{persistent}\t{nvars}\t{','.join(names)}\n"
            for name, mine, owner, persistent, nvars, names in rows)

    def _list_wss(self, timeout: float | None = None) -> list:
        """Every broker's LIST_WSS rows, merged in name order."""
        if self.brokers is None:
            return _json(self._connection.call(Op.LIST_WSS, [], timeout=timeout))
        merged: dict[str, list] = {}
        for member, connection in self.brokers.each():
            for row in _json(connection.call(Op.LIST_WSS, [], timeout=timeout)):
                # a name on several brokers (each has a __default): the one it is placed on
                if row[0] not in merged or self.brokers.place(row[0]) == member:
                    merged[row[0]] = row
        return [merged[name] for name in sorted(merged)]

    @property
    def label(self) -> str:
        """This session's name at the broker, as ``status()`` lists it among the clients (the
        same at every broker of a cluster: it names the process)."""
        return self._sessions()[0].label

    def status(self, timeout: float | None = None) -> dict:
        """The broker's state, as ``workbench status`` prints it: ``version``, ``protocol``,
        ``uptime`` (s), ``memory`` and its limits (bytes), the heartbeat, counts of
        ``workspaces``, ``values``, blocked calls (``waiting``) and ``leases``, a record per
        client and per subscriber, and the request ``counters``. A cluster's sums those of its
        brokers (``cluster_status``), each one's whole under ``brokers``."""
        if self.brokers is None:
            return _json(self._connection.call(Op.STATUS, [], timeout=timeout))
        return cluster_status({str(member): _json(connection.call(Op.STATUS, [],
                                                                  timeout=timeout))
                               for member, connection in self.brokers.each()})

    def watch(self, callback: Callable[[list[dict]], None] | None = None) -> Watch:
        """Follow the changes of every workspace of the broker, as ``NetWorkSpace.watch``
        follows one's (events name their workspace in ``ws``). A cluster's watch follows
        every broker's and needs a ``callback``."""
        if self.brokers is None:
            return Watch(self._connection, "*", callback)
        if callback is None:
            raise NwsUnsupportedMethodException(
                "a cluster's watch of every workspace takes a callback: watch(callback), or "
                "watch one workspace (NetWorkSpace.watch), which lives on one broker")
        return ClusterWatch([Watch(connection, "*", callback)
                             for _, connection in self.brokers.each()])

    def close(self) -> None:
        """Close the session; the broker purges the non-persistent workspaces it owns."""
        if self.brokers is not None:
            self.brokers.close()
        else:
            self._connection.close()

    def __enter__(self) -> NwsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    open_ws = openWs
    use_ws = useWs
    delete_ws = deleteWs
    mktemp_ws = mktempWs
    list_wss = listWss


def _check_format(format: str) -> None:
    if format not in (STRING, DICT):
        raise ValueError(f"format must be {STRING!r} or {DICT!r}, not {format!r}")


class NetWorkSpace:
    """A workspace on a broker: a network dictionary whose variables hold lists of values.

    ``store`` adds a value; ``fetch`` removes and returns one, blocking until one exists;
    ``find`` returns one without removing it. Which value depends on the variable's mode
    (``declare``): fifo (the default), lifo, multi (random) or single (a store replaces).
    ``serverHost``/``serverPort`` name the broker as ``NwsServer``'s ``host``/``port`` do (a
    connection file too); ``server`` shares an open session instead.
    """

    def __init__(self, wsName: str = "__default", serverHost: str | None = None,
                 serverPort: int | None = None, useUse: bool = False,
                 server: NwsServer | None = None, **opt: Any) -> None:
        self._owns_server = server is None
        if server is None:
            server = NwsServer(serverHost, serverPort, timeout=opt.pop("timeout", CONNECT_TIMEOUT))
        self.server = server
        self._connection = server.connection_for(wsName)
        self._name = wsName
        self._wsb = wsName.encode()
        self._useUse = useUse
        self._persistent = opt.get("persistent", False)
        try:
            self._attach(create=opt.get("create", True))
        except BaseException:
            if self._owns_server:  # nothing else will ever close the session made for us
                server.close()
            raise
        self._connection.on_new_session(self._attach)

    def _attach(self, create: bool = True) -> None:
        """Open or use the workspace: at first, and in every new session after the broker
        came back (a workspace this session owned is gone unless it was persistent and the
        broker keeps a data directory: it is opened afresh)."""
        if self._useUse:
            self.server.useWs(self._name, self, create=create)
        else:
            self.server.openWs(self._name, self, persistent=self._persistent, create=create)

    def __str__(self) -> str:
        return f"NetWorkSpace '{self._name}' [{self._connection.address}]"

    def __repr__(self) -> str:
        return f"<NetWorkSpace {self._name!r} at {self._connection.address}>"

    def _repr_html_(self) -> str:
        """In a notebook: the variables, with their values, fetchers, finders and mode."""
        from html import escape

        title = f"<b>NetWorkSpace {escape(self._name)}</b> at {escape(self._connection.address)}"
        try:
            rows = _json(self._connection.call(Op.LIST_VARS, [self._wsb], timeout=REPR_TIMEOUT))
        except Exception as exc:  # noqa: BLE001 - a repr shows what went wrong, never raises
            return f"<div>{title}: {escape(str(exc))}</div>"
        head = "".join(f"<th>{h}</th>" for h in ("variable", "values", "fetchers", "finders",
                                                  "mode"))
        body = "".join("<tr>" + "".join(f"<td>{escape(str(field))}</td>" for field in row)
                       + "</tr>" for row in rows[:100])
        more = f"<div>… and {len(rows) - 100} more</div>" if len(rows) > 100 else ""
        return (f"<div>{title}: {len(rows)} variables</div><table><tr>{head}</tr>{body}"
                f"</table>{more}")

    def __reduce__(self):
        # A handle sent to another process re-attaches there without claiming ownership.
        server = self.server
        return (NetWorkSpace, (self._name, server.serverHost, server.serverPort, True))

    def __enter__(self) -> NetWorkSpace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the session this workspace created (a shared ``server=`` stays open)."""
        if self._owns_server:
            self.server.close()

    def currentWs(self) -> str:
        """The name of this workspace."""
        return self._name

    def watch(self, callback: Callable[[list[dict]], None] | None = None) -> Watch:
        """Follow this workspace's changes: a ``Watch`` whose ``snapshot`` is the variables
        now and whose batches of events (variable created, stored, fetched, deleted; workspace
        created, purged, deleted) arrive as they happen, coalesced while one is being handled.
        With ``callback``, each batch is passed to it (in a background thread); otherwise
        iterate the watch or call ``next_batch(timeout)``. ``close()`` it when done."""
        return Watch(self._connection, self._name, callback)

    # ------------------------------------------------------------------ variables

    def declare(self, varName: str, mode: str) -> None:
        """Declare a variable's mode: 'fifo', 'lifo', 'multi' or 'single'. A mode, once set
        (by declare or by a store, which means fifo), cannot change. Any other mode raises
        NwsIllegalModeException (a ValueError, as in NetWorkSpaces) without asking the broker."""
        if not isinstance(mode, str):
            raise TypeError("variable mode must be a string")
        if mode.lower() not in _MODES:
            raise NwsIllegalModeException(
                f"illegal mode: {mode} (an unknown mode: use one of {', '.join(_MODES)})")
        self._connection.call(Op.DECLARE, [self._wsb, varName.encode(), mode.encode()])

    def deleteVar(self, varName: str) -> None:
        """Delete a variable: its values are destroyed and blocked fetch/find calls raise."""
        self._connection.call(Op.DELETE_VAR, [self._wsb, varName.encode()])

    def listVars(self, wsName: str | None = None, format: str = STRING) -> str | dict:
        """The variables of this (or another) workspace: a printable string of tab-separated
        name, values, fetchers, finders, mode lines, or a dict name -> that tuple."""
        ws = self._wsb if wsName is None else wsName.encode()
        rows = _json(self._connection.call(Op.LIST_VARS, [ws]))
        if format == DICT:
            return {row[0]: tuple(row) for row in rows}
        _check_format(format)
        return "\n".join("\t".join(str(field) for field in row) for row in rows)

    # ------------------------------------------------------------------ values

    def store(self, varName: str, val: Any) -> None:
        """Store a value. ``str`` and ``bytes`` travel raw (readable by any client); other
        objects are pickled, large buffers out of band."""
        self._connection.call(Op.STORE, [self._wsb, varName.encode()], encode(val))

    def fetch(self, varName: str, timeout: float | None = None) -> Any:
        """Remove and return a value, blocking until one exists (or ``timeout`` seconds pass,
        raising NwsTimeoutException, a TimeoutError). Each value goes to exactly one fetcher."""
        return self._connection.read(Op.FETCH, [self._wsb, varName.encode()], (), timeout,
                                     _decode_value, leased=True)[1]

    def store_many(self, varName: str, values: Iterable) -> int:
        """Store several values in one request, in order (a work queue's batch of tasks);
        returns how many. Not in NetWorkSpaces: an extension."""
        frames = pack_many(map(encode, values))
        head = self._connection.read(Op.STORE_MANY, [self._wsb, varName.encode()], frames,
                                     spill=False)[1][0]
        return int(head[HEADER_SIZE:])

    def fetch_many(self, varName: str, most: int = 100, timeout: float | None = None) -> list:
        """Remove and return up to ``most`` values in one request, blocking until there is at
        least one. They are handed over under one lease, acknowledged with this client's
        next request. Not in NetWorkSpaces: an extension."""
        return [value for value, _ in self._fetch_many(varName, most, True, timeout)]

    def fetch_many_try(self, varName: str, most: int = 100) -> list:
        """Like fetch_many, but an empty list at once if there is no value."""
        return [value for value, _ in self._fetch_many(varName, most, False, None)]

    def _fetch_many(self, varName: str, most: int, block: bool,
                    timeout: float | None) -> list[tuple[Any, int]]:
        status, taken = self._connection.read(
            Op.FETCH_MANY, [self._wsb, varName.encode(), b"%d" % most, b"1" if block else b"0"],
            (), timeout, _decode_many, leased=True)
        return [] if status == Status.MISSING else taken

    def fetchTry(self, varName: str, missing: Any = None) -> Any:
        """Remove and return a value, or return ``missing`` at once if there is none."""
        return self._try(Op.FETCH_TRY, varName, missing, _decode_value, True)

    def find(self, varName: str, timeout: float | None = None) -> Any:
        """Return a value without removing it, blocking until one exists."""
        return self._connection.read(Op.FIND, [self._wsb, varName.encode()], (), timeout,
                                     _decode_value)[1]

    def findTry(self, varName: str, missing: Any = None) -> Any:
        """Return a value without removing it, or ``missing`` at once if there is none."""
        return self._try(Op.FIND_TRY, varName, missing, _decode_value, False)

    def _try(self, op: int, varName: str, missing: Any, decoder, leased: bool) -> Any:
        try:
            status, value = self._connection.read(op, [self._wsb, varName.encode()], (), None,
                                                  decoder, leased)
        except NwsOperationException:
            return missing  # as in NWS, the Try variants swallow operation errors
        return missing if status == Status.MISSING else value

    # ------------------------------------------------------------------ files

    def storeFile(self, varName: str, fobj: BinaryIO, n: int = 0) -> int:
        """Store up to ``n`` bytes (all if 0) read from a file as one raw value; returns the
        number of bytes read. Stores nothing and returns 0 at end of file."""
        data = fobj.read(n) if n else fobj.read()
        if not data:
            return 0
        self.store(varName, data)
        return len(data.encode("utf-8")) if isinstance(data, str) else len(data)

    def fetchFile(self, varName: str, fobj: BinaryIO, timeout: float | None = None) -> int:
        """Fetch a value and write its raw bytes to a file; returns the number written."""
        data = self._connection.read(Op.FETCH, [self._wsb, varName.encode()], (), timeout,
                                     _decode_raw, leased=True)[1]
        return _write(fobj, data)

    def fetchTryFile(self, varName: str, fobj: BinaryIO) -> int:
        """Like fetchFile without blocking; returns 0 if there is no value."""
        data = self._try(Op.FETCH_TRY, varName, _MISSING, _decode_raw, True)
        return 0 if data is _MISSING else _write(fobj, data)

    def findFile(self, varName: str, fobj: BinaryIO, timeout: float | None = None) -> int:
        """Find a value and write its raw bytes to a file; returns the number written."""
        data = self._connection.read(Op.FIND, [self._wsb, varName.encode()], (), timeout,
                                     _decode_raw)[1]
        return _write(fobj, data)

    def findTryFile(self, varName: str, fobj: BinaryIO) -> int:
        """Like findFile without blocking; returns 0 if there is no value."""
        data = self._try(Op.FIND_TRY, varName, _MISSING, _decode_raw, False)
        return 0 if data is _MISSING else _write(fobj, data)

    # ------------------------------------------------------------------ iterators

    def ifetch(self, varName: str, timeout: float | None = None,
               raise_on_delete: bool = False) -> NwsValueIterator:
        """An iterator that fetches values, blocking at the end (fifo and single only). It
        ends (StopIteration) when the variable is deleted, as in NetWorkSpaces;
        ``raise_on_delete=True`` raises NwsVariableDeletedException or
        NwsIteratorInvalidException instead."""
        return NwsValueIterator(self, varName, "fetch", timeout, raise_on_delete)

    def ifetchTry(self, varName: str, raise_on_delete: bool = False) -> NwsValueIterator:
        """An iterator that fetches values and stops at the end (fifo and single only)."""
        return NwsValueIterator(self, varName, "fetchTry", None, raise_on_delete)

    def ifind(self, varName: str, timeout: float | None = None,
              raise_on_delete: bool = False) -> NwsValueIterator:
        """An iterator over the values, never repeating one, blocking for new values at the
        end (fifo and single only). It ends when the variable is deleted, as ``ifetch``."""
        return NwsValueIterator(self, varName, "find", timeout, raise_on_delete)

    def ifindTry(self, varName: str, raise_on_delete: bool = False) -> NwsValueIterator:
        """An iterator over the values that stops at the end; ``restart()`` continues with
        values stored since (fifo and single only)."""
        return NwsValueIterator(self, varName, "findTry", None, raise_on_delete)

    def makefile(self, varName: str, mode: str = "r") -> NwsTextFile:
        """The variable as a text file, a line per value: 'w' deletes it first, 'a' appends,
        'r' reads its values (without consuming them) up to the last one stored. Binary modes
        raise ValueError, as in NetWorkSpaces."""
        if mode in ("r", "w", "a"):
            return NwsTextFile(self, varName, mode)
        if mode in ("rb", "wb", "ab"):
            raise ValueError(f"mode {mode!r} is not supported yet")
        raise ValueError(f"illegal mode specified: {mode!r}")

    def _iterate(self, op: int, varName: str, var_id: int, seq: int, timeout: float | None,
                 raw: bool) -> tuple[bool, Any, int, int]:
        """One iterator step after value ``seq`` -> (found, value, variable id, sequence)."""
        found: list = []

        def decoder(head: bytes, extra: list) -> Any:
            found.extend(META.unpack_from(head, HEADER_SIZE))
            return _decode_raw(head, extra) if raw else _decode_value(head, extra)

        status, value = self._connection.read(
            op, [self._wsb, varName.encode(), b"%d" % var_id, b"%d" % seq], (), timeout, decoder,
            leased=op in (Op.IFETCH, Op.IFETCH_TRY))
        if status == Status.MISSING:
            return False, None, 0, 0
        return True, value, found[0], found[1]

    current_ws = currentWs
    delete_var = deleteVar
    list_vars = listVars
    fetch_try = fetchTry
    find_try = findTry
    store_file = storeFile
    fetch_file = fetchFile
    fetch_try_file = fetchTryFile
    find_file = findFile
    find_try_file = findTryFile
    ifetch_try = ifetchTry
    ifind_try = ifindTry
