"""workbench: a Jupyter-first workbench for interactive distributed computing.

A broker holds *workspaces* whose variables hold lists of values; clients ``store`` values and
``fetch`` or ``find`` them, blocking until they exist (the NetWorkSpaces model)::

    from workbench import NetWorkSpace
    ws = NetWorkSpace("demo")      # a broker is found or started for you
    ws.store("x", 42)
    ws.fetch("x")                  # -> 42
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names
from ._version import __version__

if TYPE_CHECKING:  # what the names are, for type checkers and the API reference
    from .client.iterator import NwsValueIterator
    from .client.keyvalue import KeyValueStore
    from .client.workspace import (
        DICT, FIFO, LIFO, MULTI, SINGLE, STRING, V_FETCHERS, V_FINDERS, V_MODE, V_VALUES,
        V_VARIABLE, WS_MINE, WS_NAME, WS_NUMVARS, WS_OWNER, WS_PERSISTENT, WS_VARLIST,
        NetWorkSpace, NwsServer,
    )
    from .errors import (
        NwsBadRequestException, NwsConnectException, NwsConnectionDroppedException,
        NwsConnectionFileException, NwsDeclarationFailedException, NwsException,
        NwsIllegalModeException, NwsIteratorInvalidException, NwsLimitException,
        NwsMemoryException,
        NwsMessageTooLargeException,
        NwsNoWorkSpaceException, NwsOperationException, NwsPicklingException,
        NwsServerException, NwsTimeoutException, NwsUnpicklingException,
        NwsUnsupportedMethodException, NwsUnsupportedOperationException, NwsValueException,
        NwsVariableDeletedException,
    )
    from .sleigh import RemoteError, Sleigh

# Each public name and the module it comes from, imported on first touch (PEP 562): importing
# the package, or the broker under it, loads no client, worker pool, cloudpickle or IPython.
# tests/test_api.py checks that this table, the imports above and __all__ agree.
_SOURCES: dict[str, str] = {
    **dict.fromkeys((
        "DICT", "FIFO", "LIFO", "MULTI", "SINGLE", "STRING", "V_FETCHERS", "V_FINDERS", "V_MODE",
        "V_VALUES", "V_VARIABLE", "WS_MINE", "WS_NAME", "WS_NUMVARS", "WS_OWNER",
        "WS_PERSISTENT", "WS_VARLIST", "NetWorkSpace", "NwsServer"), ".client.workspace"),
    **dict.fromkeys((
        "NwsBadRequestException", "NwsConnectException", "NwsConnectionDroppedException",
        "NwsConnectionFileException", "NwsDeclarationFailedException", "NwsException",
        "NwsIllegalModeException", "NwsIteratorInvalidException", "NwsLimitException",
        "NwsMemoryException", "NwsMessageTooLargeException",
        "NwsNoWorkSpaceException", "NwsOperationException", "NwsPicklingException",
        "NwsServerException", "NwsTimeoutException", "NwsUnpicklingException",
        "NwsUnsupportedMethodException", "NwsUnsupportedOperationException",
        "NwsValueException", "NwsVariableDeletedException"), ".errors"),
    "NwsValueIterator": ".client.iterator",
    "KeyValueStore": ".client.keyvalue",
    "RemoteError": ".sleigh",
    "Sleigh": ".sleigh",
}


__getattr__, __dir__ = lazy_names(__name__, _SOURCES)


def load_ipython_extension(ipython) -> None:
    """``%load_ext workbench``: the ``%nws`` magics, see ``workbench.jupyter``."""
    from .jupyter import load_ipython_extension as load

    load(ipython)


__all__ = [
    "DICT",
    "FIFO",
    "KeyValueStore",
    "LIFO",
    "MULTI",
    "NetWorkSpace",
    "NwsBadRequestException",
    "NwsConnectException",
    "NwsConnectionDroppedException",
    "NwsConnectionFileException",
    "NwsDeclarationFailedException",
    "NwsException",
    "NwsIllegalModeException",
    "NwsIteratorInvalidException",
    "NwsLimitException",
    "NwsMemoryException",
    "NwsMessageTooLargeException",
    "NwsNoWorkSpaceException",
    "NwsOperationException",
    "NwsPicklingException",
    "NwsServer",
    "NwsServerException",
    "NwsTimeoutException",
    "NwsUnpicklingException",
    "NwsUnsupportedMethodException",
    "NwsUnsupportedOperationException",
    "NwsValueException",
    "NwsValueIterator",
    "NwsVariableDeletedException",
    "RemoteError",
    "SINGLE",
    "STRING",
    "Sleigh",
    "V_FETCHERS",
    "V_FINDERS",
    "V_MODE",
    "V_VALUES",
    "V_VARIABLE",
    "WS_MINE",
    "WS_NAME",
    "WS_NUMVARS",
    "WS_OWNER",
    "WS_PERSISTENT",
    "WS_VARLIST",
    "__version__",
]
