"""The worker pool: ``Sleigh`` (NetWorkSpaces' eachElem/eachWorker/imap and a
``concurrent.futures`` Executor), its scheduler, worker loop and launchers. See ``master`` for
how the parts fit.
"""

from .errors import (
    PoisonTaskError, RemoteError, SleighError, SleighTaskException, TaskCancelledError,
)
from .events import CallProgress, SleighStatus, Subscription, WorkerJoined, WorkerLeft
from .master import Sleigh
from .pending import SleighFuture, SleighPending, SleighResultIterator

__all__ = [
    "CallProgress",
    "PoisonTaskError",
    "RemoteError",
    "Sleigh",
    "SleighError",
    "SleighFuture",
    "SleighPending",
    "SleighResultIterator",
    "SleighStatus",
    "SleighTaskException",
    "Subscription",
    "TaskCancelledError",
    "WorkerJoined",
    "WorkerLeft",
]
