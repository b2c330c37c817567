"""workbench: a Jupyter-first workbench for interactive distributed computing.

A broker holds *workspaces* whose variables hold lists of values; clients ``store`` values and
``fetch`` or ``find`` them, blocking until they exist (the NetWorkSpaces model)::

    from workbench import NetWorkSpace
    ws = NetWorkSpace("demo")      # a broker is found or started for you
    ws.store("x", 42)
    ws.fetch("x")                  # -> 42
"""

from ._version import __version__

from .client.iterator import NwsValueIterator  # noqa: E402
from .client.workspace import (  # noqa: E402
    DICT, FIFO, LIFO, MULTI, SINGLE, STRING, V_FETCHERS, V_FINDERS, V_MODE, V_VALUES, V_VARIABLE,
    WS_MINE, WS_NAME, WS_NUMVARS, WS_OWNER, WS_PERSISTENT, WS_VARLIST, NetWorkSpace, NwsServer,
)
from .errors import (  # noqa: E402
    NwsBadRequestException, NwsConnectException, NwsConnectionDroppedException,
    NwsDeclarationFailedException, NwsException, NwsIteratorInvalidException, NwsMemoryException,
    NwsMessageTooLargeException, NwsNoWorkSpaceException, NwsOperationException,
    NwsPicklingException, NwsServerException, NwsTimeoutException, NwsUnpicklingException,
    NwsUnsupportedMethodException, NwsUnsupportedOperationException, NwsValueException,
    NwsVariableDeletedException,
)
from .client.keyvalue import KeyValueStore  # noqa: E402
from .sleigh import RemoteError, Sleigh  # noqa: E402


def load_ipython_extension(ipython) -> None:
    """``%load_ext workbench`` (a kernel started with ``--ext workbench`` does it): the
    ``%nws`` magics, see ``workbench.jupyter``."""
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
    "NwsDeclarationFailedException",
    "NwsException",
    "NwsIteratorInvalidException",
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
