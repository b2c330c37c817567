"""The broker's pure state: workspaces, variables, sessions, leases. No sockets, no clock, no
files: every call returns its ``Effects``, whose ``changes`` are the records of ``changes``."""

from . import changes
from .core import DEFAULT_WORKSPACE, BrokerState, Limits
from .effects import Comparison, Effects, FileFrames, Release
from .memory import SharedMemory
from .requests import OpError

__all__ = ["DEFAULT_WORKSPACE", "BrokerState", "Comparison", "Effects", "FileFrames", "Limits",
           "OpError", "Release", "SharedMemory", "changes"]
