"""The public API: what ``from workbench import ...`` offers, pinned, with the seed's names."""

from __future__ import annotations

import workbench
from workbench import errors

SEED_NAMES = [
    "NwsServer", "NetWorkSpace", "NwsValueIterator", "NwsException", "NwsServerException",
    "NwsConnectException", "NwsConnectionDroppedException", "NwsUnsupportedOperationException",
    "NwsOperationException", "NwsNoWorkSpaceException", "NwsDeclarationFailedException",
    "FIFO", "LIFO", "MULTI", "SINGLE", "STRING", "DICT", "WS_NAME", "WS_MINE", "WS_OWNER",
    "WS_PERSISTENT", "WS_NUMVARS", "WS_VARLIST", "V_VARIABLE", "V_VALUES", "V_FETCHERS",
    "V_FINDERS", "V_MODE",
]


def test_all_is_sorted_and_complete():
    assert workbench.__all__ == sorted(workbench.__all__)
    for name in workbench.__all__:
        assert hasattr(workbench, name), name
    assert set(SEED_NAMES) <= set(workbench.__all__)


def test_constants_have_the_seed_values():
    assert (workbench.FIFO, workbench.LIFO, workbench.MULTI, workbench.SINGLE) == (
        "fifo", "lifo", "multi", "single")
    assert (workbench.STRING, workbench.DICT) == ("string", "dict")
    assert [workbench.V_VARIABLE, workbench.V_VALUES, workbench.V_FETCHERS, workbench.V_FINDERS,
            workbench.V_MODE] == [0, 1, 2, 3, 4]
    assert [workbench.WS_NAME, workbench.WS_MINE, workbench.WS_OWNER, workbench.WS_PERSISTENT,
            workbench.WS_NUMVARS, workbench.WS_VARLIST] == [0, 1, 2, 3, 4, 5]


def test_exception_tree_matches_the_seed():
    e = errors
    assert issubclass(e.NwsServerException, e.NwsException)
    for cls in (e.NwsConnectException, e.NwsConnectionDroppedException,
                e.NwsUnsupportedOperationException):
        assert issubclass(cls, e.NwsServerException)
    for cls in (e.NwsNoWorkSpaceException, e.NwsDeclarationFailedException,
                e.NwsMemoryException, e.NwsVariableDeletedException):
        assert issubclass(cls, e.NwsOperationException)
    assert issubclass(e.NwsTimeoutException, TimeoutError)
    assert issubclass(e.NwsTimeoutException, e.NwsException)
    assert e.NwsUnpicklingException("bad", b"raw").raw == b"raw"
