"""NetWorkSpaces' Sleigh options: ``defaultSleighOptions``, the launch functions ``sshcmd`` and
``rshcmd``, and ``WorkerSetup``, what the options that shape a worker (workingDir, modulePath,
logDir, redirectOutput) ask of a launcher.

As in NetWorkSpaces, ``Sleigh()`` reads ``defaultSleighOptions`` each time it is called, so a
script that changes an entry changes the default of every sleigh it makes afterwards. Options
that meant something only to NetWorkSpaces' worker scripts (``scriptExec``, ``scriptDir``,
``scriptName``, ``outfile``, ``passwd``) are accepted and have no effect: a worker here is
``python -m workbench worker``.
"""

from __future__ import annotations

import inspect
import logging
import os
import shlex
import shutil
import socket
from typing import Any, Callable, NamedTuple

from .errors import SleighIllegalValueException
from .worker import REDIRECT_ENV

#: The options ``nws.sleigh.Sleigh`` accepted, with the defaults that mean the same here (None:
#: the workbench's own default: the broker found as a NetWorkSpace finds it, one worker per
#: CPU, the master's working directory).
defaultSleighOptions: dict[str, Any] = {
    "nwsHost": None,
    "nwsHostRemote": None,
    "nwsPort": None,
    "nwsPortRemote": None,
    "outfile": None,
    "launch": "local",
    "workerCount": None,
    "nodeList": None,
    "scriptExec": None,
    "scriptDir": None,
    "scriptName": "PythonNWSSleighWorker.py",
    "modulePath": None,
    "workingDir": None,
    "logDir": None,
    "user": None,
    "passwd": None,
    "wsNameTemplate": "sleigh_ride_%04d",
    "userWsNameTemplate": "sleigh_user_%04d",
    "verbose": False,
    "redirectOutput": True,
}

#: Options accepted for NetWorkSpaces' sake that change nothing here.
NO_EFFECT = ("scriptExec", "scriptDir", "scriptName", "outfile", "passwd")


def sleigh_options(given: dict[str, Any]) -> dict[str, Any]:
    """``defaultSleighOptions`` as it is now, overridden by the options given (those not None)."""
    options = dict(defaultSleighOptions)
    options.update((name, value) for name, value in given.items() if value is not None)
    return options


def check_template(name: str, template: Any) -> str:
    """A workspace name template must format one integer, as NetWorkSpaces required."""
    try:
        if not isinstance(template, str) or template % 0 == template:
            raise TypeError
    except (TypeError, ValueError):
        raise SleighIllegalValueException(
            f"bad {name} value {template!r}: it must be a format string with one integer "
            "specifier, such as 'sleigh_ride_%04d'") from None
    return template


def worker_broker(options: dict[str, Any]) -> str | None:
    """The address workers use when ``nwsHostRemote``/``nwsPortRemote`` name another one
    (an ssh tunnel's end, a NAT's outside address) -> None: the master's own."""
    host, port = options["nwsHostRemote"], options["nwsPortRemote"]
    if host is None and port is None:
        return None
    host = host or options["nwsHost"] or "localhost"
    if port is None:
        raise SleighIllegalValueException("nwsHostRemote needs nwsPortRemote (or nwsPort)")
    return f"tcp://{host}:{int(port)}"


# ---------------------------------------------------------------------------- launch functions

def _param(name: str, options: dict[str, Any], machine: str) -> Any:
    """An option's value for one machine: NetWorkSpaces let any option be a dict keyed by host
    name, with a ``'default'`` entry."""
    value = options.get(name)
    if isinstance(value, dict):
        value = value.get(machine, value.get("default"))
    return value


def _remote_shell(machine: str, command: str, options: dict[str, Any]) -> list[str]:
    if not machine:
        raise SleighIllegalValueException("empty string specified in nodeList")
    socket.gethostbyname(machine)  # an unknown host fails here, as in NetWorkSpaces
    program = shutil.which(command) or f"/usr/bin/{command}"
    user = _param("user", options, machine)
    if command == "ssh":
        login = ["-l", str(user)] if user else []
        return [program, "-n", "-x", *login, machine]
    return [program, machine, *(["-l", str(user)] if user else []), "-n"]


def sshcmd(machine: str, **options: Any) -> list[str]:
    """``launch=sshcmd``: the command that starts a worker on ``machine`` with ssh (``user``:
    the login name there); the worker's command line is appended to it."""
    return _remote_shell(machine, "ssh", options)


def rshcmd(machine: str, **options: Any) -> list[str]:
    """``launch=rshcmd``: as sshcmd, with rsh."""
    return _remote_shell(machine, "rsh", options)


def is_command_function(launch: Any) -> bool:
    """Whether ``launch`` is a NetWorkSpaces launch function, ``fn(machine, **options)`` ->
    the command prefix (sshcmd, rshcmd, a script's own), rather than the workbench's
    ``fn(argv, rank)`` that starts the worker itself."""
    if launch in (sshcmd, rshcmd):
        return True
    if not callable(launch):
        return False
    try:
        parameters = inspect.signature(launch).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def command_prefix(launch: Callable[..., Any], machine: str, options: dict[str, Any]) -> list:
    """What a NetWorkSpaces launch function says for ``machine``, checked as it checked it."""
    argv = launch(machine, **options)
    if not isinstance(argv, list):
        raise SleighIllegalValueException("launch does not yield a list")
    if not all(isinstance(arg, str) for arg in argv):
        raise SleighIllegalValueException("launch does not yield a list of strings")
    return argv


# ---------------------------------------------------------------------------- worker setup

class WorkerSetup(NamedTuple):
    """What the options ask of each worker a launcher starts."""

    working_dir: str | None = None  # its current directory
    module_path: str | None = None  # added to its sys.path (os.pathsep-separated)
    log_dir: str | None = None  # where its own output is kept, one file per process
    redirect_output: bool = True  # what tasks print goes to the master

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> WorkerSetup:
        for name in ("workingDir", "modulePath", "logDir"):
            if options[name] is not None and not isinstance(options[name], (str, os.PathLike)):
                raise SleighIllegalValueException(f"{name} must be a path, not "
                                                  f"{options[name]!r}")
        log_dir = options["logDir"]
        if log_dir is not None and not os.path.isdir(log_dir):
            raise SleighIllegalValueException(f"logDir {log_dir!r} is not a directory")
        return cls(_path(options["workingDir"]), _path(options["modulePath"]),
                   _path(log_dir), bool(options["redirectOutput"]))

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with what a worker needs for this setup."""
        env = dict(env)
        if self.module_path:
            env["PYTHONPATH"] = os.pathsep.join(
                [self.module_path] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if not self.redirect_output:
            env[REDIRECT_ENV] = "0"
        return env

    def remote_command(self, argv: list[str]) -> str:
        """The shell command that runs ``argv`` on another host with this setup (logDir is
        this machine's: a remote worker's output goes where its remote shell sends it)."""
        command = shlex.join(argv)
        variables = []
        if self.module_path:
            variables.append(f"PYTHONPATH={shlex.quote(self.module_path)}"
                             '${PYTHONPATH:+:$PYTHONPATH}')
        if not self.redirect_output:
            variables.append(f"{REDIRECT_ENV}=0")
        if variables:
            command = f"env {' '.join(variables)} {command}"
        if self.working_dir:
            command = f"cd {shlex.quote(self.working_dir)} && {command}"
        return command


def _path(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


def verbose_logging() -> None:
    """``verbose=True``: the sleigh's log (workers starting, joining, dying) on stderr, as
    NetWorkSpaces printed its debug messages there."""
    log = logging.getLogger("workbench.sleigh")
    log.setLevel(logging.DEBUG)
    if not any(getattr(h, "_sleigh_verbose", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        handler._sleigh_verbose = True  # type: ignore[attr-defined]
        log.addHandler(handler)
