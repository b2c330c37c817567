"""The worker pool: ``Sleigh`` (NetWorkSpaces' eachElem/eachWorker/imap and a
``concurrent.futures`` Executor), its scheduler, worker loop and launchers. See ``master`` for
how the parts fit.

The names below are imported on first touch (PEP 562): a worker process, which imports
``workbench.sleigh.worker``, loads neither the master nor its launchers (a hundred workers
starting at once pay every module each of them imports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:  # what the names are, for type checkers and the API reference
    from .errors import (
        PoisonTaskError, RemoteError, SleighError, SleighException, SleighGatheredException,
        SleighIllegalValueException, SleighJoinException, SleighNotAllowedException,
        SleighNwsException, SleighOccupiedException, SleighScriptException,
        SleighStoppedException, SleighTaskException, SleighUnsupportedMethodException,
        TaskCancelledError,
    )
    from .events import (
        CallProgress, GroupStatus, SleighStatus, Subscription, WorkerJoined, WorkerLeft,
    )
    from .master import Sleigh
    from .options import defaultSleighOptions, rshcmd, sshcmd
    from .pending import SleighFuture, SleighPending, SleighResultIterator

# NetWorkSpaces' exception names (``nws.sleigh``), listed in ``errors.NWS_EXCEPTIONS``.
_NWS_EXCEPTIONS = (
    "SleighException", "SleighNwsException", "SleighGatheredException",
    "SleighStoppedException", "SleighOccupiedException", "SleighIllegalValueException",
    "SleighScriptException", "SleighTaskException", "SleighJoinException",
    "SleighNotAllowedException", "SleighUnsupportedMethodException",
)

_SOURCES: dict[str, str] = {
    **dict.fromkeys(("PoisonTaskError", "RemoteError", "SleighError", "TaskCancelledError",
                     *_NWS_EXCEPTIONS), ".errors"),
    **dict.fromkeys(("CallProgress", "GroupStatus", "SleighStatus", "Subscription",
                     "WorkerJoined", "WorkerLeft"), ".events"),
    "Sleigh": ".master",
    **dict.fromkeys(("defaultSleighOptions", "rshcmd", "sshcmd"), ".options"),
    **dict.fromkeys(("SleighFuture", "SleighPending", "SleighResultIterator"), ".pending"),
}


__getattr__, __dir__ = lazy_names(__name__, _SOURCES)


__all__ = [
    "CallProgress",
    "GroupStatus",
    "PoisonTaskError",
    "RemoteError",
    "Sleigh",
    "SleighError",
    "SleighFuture",
    "SleighPending",
    "SleighResultIterator",
    "SleighStatus",
    "Subscription",
    "TaskCancelledError",
    "WorkerJoined",
    "WorkerLeft",
    "defaultSleighOptions",
    "rshcmd",
    "sshcmd",
    *_NWS_EXCEPTIONS,
]
