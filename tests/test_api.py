"""The public API: what ``from workbench import ...`` offers, pinned, with the seed's names;
and what importing the package, or the broker, loads."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

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


def _type_checking_imports() -> dict[str, str]:
    """name -> module of the imports under ``if TYPE_CHECKING:`` in workbench/__init__.py."""
    tree = ast.parse(Path(workbench.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return {alias.name: "workbench." + node.module for node in block.body
            for alias in node.names}


def test_lazy_names_are_the_declared_ones_from_their_modules():
    """Each name of ``__all__`` is declared for type checkers and the API reference, and
    resolves on first touch to the very object of the module it is declared from."""
    declared = _type_checking_imports()
    assert set(declared) == set(workbench.__all__) - {"__version__"}
    for name, module in declared.items():
        assert getattr(workbench, name) is getattr(importlib.import_module(module), name), name
    assert set(workbench.__all__) <= set(dir(workbench))
    with pytest.raises(AttributeError):
        workbench.NoSuchName  # noqa: B018


def test_version_comes_from_the_version_module():
    from workbench._version import __version__

    assert workbench.__version__ == __version__


HEAVY = ("workbench.client", "workbench.sleigh", "workbench.jupyter", "workbench.codec",
         "cloudpickle", "IPython", "ipywidgets", "zmq", "numpy")


@pytest.mark.parametrize("statement", [
    "import workbench",
    "import workbench.broker.server",
    "from workbench import __version__",
])
def test_importing_the_package_or_the_broker_loads_no_client(statement):
    """The broker starts without the client, the worker pool, cloudpickle or IPython: a fresh
    interpreter's modules after the import."""
    code = (f"{statement}\nimport sys\n"
            f"print(sorted(m for m in sys.modules "
            f"if any(m == h or m.startswith(h + '.') for h in {HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_worker_loop_loads_neither_the_master_nor_its_launchers():
    """A worker imports ``workbench.sleigh.worker``; a hundred of them start at once, each
    paying every module it loads. The sleigh package's names resolve on first touch."""
    master = ("workbench.sleigh.master", "workbench.sleigh.launchers",
              "workbench.sleigh.dispatch", "workbench.sleigh.pending")
    code = ("import workbench.sleigh.worker, sys\n"
            f"print(sorted(m for m in sys.modules if m.startswith({master!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    import workbench.sleigh as sleigh

    assert sleigh.Sleigh is importlib.import_module("workbench.sleigh.master").Sleigh
    assert set(sleigh.__all__) <= set(dir(sleigh))
