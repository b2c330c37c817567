"""A failed task's traceback shows the lines its code was written with, wherever the code was
written: an importable module, a ``__main__`` script, a notebook cell. cloudpickle (3.1.3 and
later) names every code object it pickles by value ``<dynamic-code>``, and a cell's lines exist
only in the kernel that ran it, so the lines travel with the pickle (``workbench.sources``).
"""

from __future__ import annotations

import linecache
import pickle
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

from workbench import sources

TIMEOUT = 30.0

CELL = "<cell-in-another-process>"
CELL_SOURCE = textwrap.dedent("""\
    def helper(values, i):
        return values[i]  # the helper's own line

    def failing(i):
        try:
            return helper([1, 2], i)
        except IndexError as exc:
            raise ValueError("no such element") from exc  # the raising line
""")


def cell_function():
    """``failing`` as a notebook cell defines it: its lines are known to this process's
    ``linecache`` only (IPython registers cells the same way), not in any file."""
    lines = CELL_SOURCE.splitlines(keepends=True)
    linecache.cache[CELL] = (len(CELL_SOURCE), None, lines, CELL)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(CELL_SOURCE, CELL, "exec"), namespace)
    return namespace["failing"]


def traceback_elsewhere(payload: bytes) -> str:
    """Load ``payload`` in a fresh process, call what it holds with 5, and return the
    traceback text that process formats with ``sources.format_exception``."""
    code = textwrap.dedent("""\
        import pickle, sys
        from workbench import sources
        fn = pickle.loads(sys.stdin.buffer.read())
        try:
            fn(5)
        except Exception as exc:
            print(sources.format_exception(exc, exc.__traceback__))
    """)
    done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_a_cells_lines_reach_the_process_that_runs_it():
    text = traceback_elsewhere(sources.dumps(cell_function()))
    assert f'File "{CELL}", line 8, in failing' in text
    assert 'raise ValueError("no such element") from exc  # the raising line' in text
    # the chained exception's frames too
    assert f'File "{CELL}", line 2, in helper' in text
    assert "return values[i]  # the helper's own line" in text
    assert "<dynamic-code>" not in text


def test_without_the_shipped_lines_the_other_process_has_none():
    """The case the module exists for: plain cloudpickle loses the lines (this test fails,
    and the one above means nothing, if that ever stops being true)."""
    text = traceback_elsewhere(cloudpickle.dumps(cell_function(), protocol=5))
    assert "ValueError: no such element" in text
    assert "# the raising line" not in text


def test_a_payload_loads_to_the_value_itself():
    fn = pickle.loads(sources.dumps(cell_function()))
    with pytest.raises(ValueError, match="no such element"):
        fn(5)
    assert pickle.loads(sources.dumps({"plain": [1, 2]})) == {"plain": [1, 2]}


def test_frames_of_code_that_was_not_shipped_are_left_as_they_are():
    def local_failure():
        raise KeyError("here")

    try:
        local_failure()
    except KeyError as exc:
        text = sources.format_exception(exc, exc.__traceback__)
    assert 'raise KeyError("here")' in text and __file__ in text


def test_the_registry_keeps_the_newest_spans(monkeypatch):
    monkeypatch.setattr(sources, "REGISTRY_SIZE", 3)
    monkeypatch.setattr(sources, "_registry", {})
    for n in range(5):
        sources.register({("f", n, b""): sources.SourceSpan("<f>", n, (f"line {n}\n",))})
    assert sorted(key[1] for key in sources._registry) == [2, 3, 4]


# ---------------------------------------------------------------------------- real workers

SCRIPT = textwrap.dedent("""\
    from workbench import Sleigh


    def divide(x):
        return 1 / (x - 1)  # the failing line of the script


    if __name__ == "__main__":
        with Sleigh(workerCount=1) as sleigh:
            print(sleigh.eachElem(divide, [1], timeout=TIMEOUT)[0].remote_traceback)
""")


def test_a_main_scripts_lines_in_a_workers_traceback(broker, tmp_path):
    script = tmp_path / "old_script.py"
    script.write_text(SCRIPT.replace("TIMEOUT", str(TIMEOUT)))
    done = subprocess.run([sys.executable, str(script)], env=broker.env(), capture_output=True,
                          text=True, timeout=2 * TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert f'File "{script}", line 5, in divide' in done.stdout
    assert "return 1 / (x - 1)  # the failing line of the script" in done.stdout


def test_a_module_functions_lines_in_a_workers_traceback(broker):
    """Functions of an importable module travel by reference: the worker reads the file."""
    from workbench import Sleigh

    from . import task_functions

    with Sleigh(workerCount=1, nwsHost=broker.host, nwsPort=broker.port) as sleigh:
        error = sleigh.eachElem(task_functions.fails_on_zero, [0], timeout=TIMEOUT)[0]
    assert f'File "{task_functions.__file__}"' in error.remote_traceback
    assert "return 10 // x  # fails on zero" in error.remote_traceback


def test_a_notebook_cells_lines_in_a_workers_traceback(broker):
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=broker.env(), startup_timeout=TIMEOUT)
    try:
        out: list = []
        cells = [
            "from workbench import Sleigh\nsleigh = Sleigh(workerCount=1)",
            "def scale(x):\n    return {'a': 1}[x] * 2  # the failing line of the cell",
            f"error = sleigh.eachElem(scale, ['b'], timeout={TIMEOUT})[0]\n"
            "print(error.remote_traceback)\nsleigh.stop()",
        ]
        deadline = time.monotonic() + 2 * TIMEOUT
        for cell in cells:
            reply = kc.execute_interactive(cell, timeout=max(1, deadline - time.monotonic()),
                                           output_hook=out.append)
            assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
    assert "return {'a': 1}[x] * 2  # the failing line of the cell" in text, text
    assert ", line 2, in scale" in text and "KeyError: 'b'" in text
