"""The broker's pure state: workspaces, variables, sessions, leases. No sockets, no clock."""

from .core import DEFAULT_WORKSPACE, BrokerState, Limits
from .requests import OpError

__all__ = ["DEFAULT_WORKSPACE", "BrokerState", "Limits", "OpError"]
