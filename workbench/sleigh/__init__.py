"""The worker pool: ``Sleigh`` (NetWorkSpaces' eachElem/eachWorker/imap and a
``concurrent.futures`` Executor), its worker loop and launchers. See ``master`` for the design.
"""

from .errors import (
    PoisonTaskError, RemoteError, SleighError, SleighTaskException, TaskCancelledError,
)
from .master import Sleigh, SleighStatus
from .pending import SleighFuture, SleighPending, SleighResultIterator

__all__ = [
    "PoisonTaskError",
    "RemoteError",
    "Sleigh",
    "SleighError",
    "SleighFuture",
    "SleighPending",
    "SleighResultIterator",
    "SleighStatus",
    "SleighTaskException",
    "TaskCancelledError",
]
