"""The brokers running on this machine for this user: each broker the workbench starts records
itself here (``workbench list`` reads them, ``workbench status`` with no address picks one), the
way Jupyter servers record themselves for ``jupyter server list``.

A record is a JSON file per broker (mode 0600, written whole or not at all) in a ``brokers``
folder (mode 0700) of the user's runtime directory: ``$WORKBENCH_RUNTIME_DIR``, else
``$XDG_RUNTIME_DIR/workbench``, else ``~/.workbench/runtime-HOST`` (a home directory may be
shared by several machines, whose process ids mean nothing here). A record names a connection
file by its path, never a key. A broker removes its record when it stops; one that could not
(SIGKILL, a crash) leaves a stale record, swept by the next listing: its pid is gone, or is now
another process's (its start time differs).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from ._version import __version__
from .certificates import write_private
from .config import RUNTIME_DIR_ENV

_RECORDS = "brokers"
_PREFIX, _SUFFIX = "broker-", ".json"
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1", "": "127.0.0.1"}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class BrokerRecord:
    """One running broker, as it recorded itself."""

    address: str  # where it listens: tcp://host:port
    pid: int
    started: str  # ISO 8601, UTC
    started_by: str  # "workbench broker, from bash (pid 812)", "embedded in Jupyter kernel ..."
    curve: bool
    connection_file: str | None  # a CURVE broker's: the path, never its keys
    version: str
    #: The process's start in clock ticks after boot (/proc), which tells a reused pid apart;
    #: None where the system does not say.
    process_start: int | None = None

    @property
    def target(self) -> str:
        """What a client is given to reach it: the connection file (a CURVE broker needs its
        keys), else the address, with a wildcard host made loopback."""
        if self.connection_file:
            return self.connection_file
        parts = urlsplit(self.address)
        host = parts.hostname or ""
        if host not in _WILDCARDS:
            return self.address
        local = _WILDCARDS[host]
        return f"tcp://{f'[{local}]' if ':' in local else local}:{parts.port}"

    def serves(self, address: str) -> bool:
        """Whether a client connected to ``address`` talks to this broker: the same port, and
        the same host, or a host this broker listens on (loopback, or any on a wildcard)."""
        mine, theirs = urlsplit(self.address), urlsplit(address)
        if mine.port != theirs.port:
            return False
        host = mine.hostname or ""
        return (host == theirs.hostname or host in _WILDCARDS
                or (host in _LOOPBACK and theirs.hostname in _LOOPBACK))

    def started_local(self) -> str:
        """When it started, in this machine's local time, to the second."""
        started = datetime.datetime.fromisoformat(self.started)
        return started.astimezone().strftime("%Y-%m-%d %H:%M:%S")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> BrokerRecord:
        """ValueError for text that is not a record (a newer version's extra fields are
        ignored)."""
        found = json.loads(text)
        if not isinstance(found, dict):
            raise ValueError("not a broker record")
        try:
            return cls(address=str(found["address"]), pid=int(found["pid"]),
                       started=str(found["started"]), started_by=str(found["started_by"]),
                       curve=bool(found["curve"]), connection_file=found.get("connection_file"),
                       version=str(found["version"]),
                       process_start=found.get("process_start"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a broker record: {exc}") from None


def runtime_directory() -> str:
    """The user's runtime directory for the workbench (see the module's docstring)."""
    chosen = os.environ.get(RUNTIME_DIR_ENV)
    if chosen:
        return chosen
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and _usable(base):
        return os.path.join(base, "workbench")
    return os.path.join(os.path.expanduser("~"), ".workbench",
                        f"runtime-{socket.gethostname() or 'localhost'}")


def _usable(directory: str) -> bool:
    """A directory of this user's that this user may write into (an XDG_RUNTIME_DIR left
    over from another login may be neither)."""
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and os.access(directory, os.W_OK | os.X_OK))


def records_directory() -> str:
    return os.path.join(runtime_directory(), _RECORDS)


def _private_directory(path: str) -> str:
    """``path``, made if missing, mode 0700; OSError if it is not a directory of this user's."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{path} is not a directory of this user's")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def record_path(pid: int) -> str:
    return os.path.join(records_directory(), f"{_PREFIX}{pid}{_SUFFIX}")


def record_this_broker(address: str, started_by: str, connection_file: str | None = None,
                       curve: bool = False) -> str:
    """Record the broker this process runs -> the record's path, for ``remove_record``.
    OSError if it cannot be written (the broker serves anyway)."""
    pid = os.getpid()
    record = BrokerRecord(
        address=address, pid=pid,
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        started_by=started_by, curve=curve,
        connection_file=os.path.abspath(connection_file) if connection_file else None,
        version=__version__, process_start=process_start(pid))
    _private_directory(runtime_directory())
    path = os.path.join(_private_directory(records_directory()), f"{_PREFIX}{pid}{_SUFFIX}")
    write_private(path, record.to_json() + "\n")
    return path


def remove_record(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # swept already, or the directory went with the login session


def running_brokers() -> list[BrokerRecord]:
    """The brokers recorded as running, oldest first; stale records are removed on the way."""
    directory = records_directory()
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue  # a record being written (".broker-N.json.PID.tmp"), or not ours
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as file:
                record = BrokerRecord.from_json(file.read())
        except FileNotFoundError:
            continue  # removed meanwhile
        except (OSError, ValueError):
            remove_record(path)  # records are written whole: this one was never ours
            continue
        if is_running(record):
            found.append(record)
        else:
            remove_record(path)
    return sorted(found, key=lambda r: (r.started, r.pid))


def find_broker(address: str) -> BrokerRecord | None:
    """The running broker a client connected to ``address`` talks to, if it is recorded here."""
    return next((r for r in running_brokers() if r.serves(address)), None)


def is_running(record: BrokerRecord) -> bool:
    """Whether the record's process still runs and is the one that wrote it."""
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process holds the pid now: its start time tells
    fields = _stat_fields(record.pid)
    if fields is None:  # no /proc here: the pid is all there is; else it ended meanwhile
        return not os.path.isdir("/proc")
    if fields[0] == "Z":  # killed, not yet reaped by its parent
        return False
    return record.process_start is None or _start_of(fields) == record.process_start


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            return file.read().rpartition(")")[2].split()
    except OSError:
        return None


def _start_of(fields: list[str]) -> int | None:
    try:
        return int(fields[19])  # field 22 of proc(5), the 20th after the command name
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None without /proc."""
    fields = _stat_fields(pid)
    return _start_of(fields) if fields else None


def describe_process(pid: int) -> str:
    """A process in a few words, for "who started it": "Jupyter kernel 1f2e3d4c (pid 88)",
    "python -m pytest (pid 88)", "bash (pid 88)"."""
    argv = _command_line(pid)
    if pid == os.getpid() and not argv:
        argv = [sys.executable, *sys.argv]
    return f"{_program(argv) if argv else 'process'} (pid {pid})"


def _command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _program(argv: list[str]) -> str:
    name = os.path.basename(argv[0])
    if any(os.path.basename(a).split(".")[0] in ("ipykernel_launcher", "ipykernel")
           for a in argv[1:3]):
        return "Jupyter kernel" + _kernel_id(argv)
    if not name.startswith("python") or len(argv) < 2:
        return name
    if argv[1] in ("-m", "-c") and len(argv) > 2:
        return f"{name} {argv[1]} {argv[2] if argv[1] == '-m' else '...'}"
    return f"{name} {os.path.basename(argv[1])}"


def _kernel_id(argv: list[str]) -> str:
    """The first characters of a kernel's id, from its connection file's name
    (``kernel-<id>.json``): enough to tell which notebook in Jupyter's list of sessions."""
    if "-f" not in argv[:-1]:
        return ""
    name = os.path.basename(argv[argv.index("-f") + 1])
    kernel_id = name.removeprefix("kernel-").removesuffix(".json")
    return f" {kernel_id[:8]}" if kernel_id and kernel_id != name else ""


def started_by_embedding() -> str:
    """What an embedded broker records as who started it: this process."""
    return f"embedded in {describe_process(os.getpid())}"


def as_json(records: list[BrokerRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
