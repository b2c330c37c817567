"""Durability: a broker's data directory (``--data-dir``), where the change records of its
state are logged, so that a restart, planned or not, loses nothing it acknowledged.

``datadir`` owns the directory (lock, replay at start, fsync policy, compaction), ``log`` the
file format and its writing (through a shared mapping of the file), ``records`` the records'
binary form and the encoding of the state's changes as they come, ``compaction`` the swap of a
snapshot for the log. The broker's state stays pure: it returns records (``broker.state.changes``), and the
server's loop hands them here.
"""

from .datadir import DataDir, DataDirError, DataDirLocked
from .log import LogError, Replay

__all__ = ["DataDir", "DataDirError", "DataDirLocked", "LogError", "Replay"]
