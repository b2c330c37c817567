"""The notebooks as Run All runs them, in the "Python 3 (workbench)" kernel.

nbval (``pytest notebooks/``) runs each notebook cell by cell: a cell is sent when the one before
it has finished. Run All in JupyterLab sends every cell at once, and the kernel runs them back
to back, so a cell that relies on something happening *between* cells (a widget's redraw, a
message arriving) only shows its race here. Each notebook runs in a fresh kernel with a private
broker, all its cells queued before the first ends, and then:

- every cell succeeds, and the cells nbval checks (``# NBVAL_CHECK_OUTPUT``) print what the
  saved notebook shows;
- the first cell prints nothing it should not (no "extension already loaded");
- the widgets the notebook showed are still open when Run All ends (the lesson stays on the
  page), and the notebook's optional ``tidy_up()`` closes them;
- a magic that fails stops Run All, as any failing cell does.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workbench.config import KERNEL_NAME
from workbench.jupyter.kernelspec import kernel_spec

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
START_TIMEOUT = 60.0
RUN_ALL_TIMEOUT = 240.0  # a whole notebook
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CHECKED = "# NBVAL_CHECK_OUTPUT"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.timeout(RUN_ALL_TIMEOUT + 2 * START_TIMEOUT)


@dataclass
class CellRun:
    """What one queued cell did: its reply's status and what it sent to the page."""

    source: str
    status: str | None = None
    text: list[str] = field(default_factory=list)  # stdout/stderr, in order
    errors: list[str] = field(default_factory=list)  # error outputs, as the page shows them
    widgets: list[str] = field(default_factory=list)  # model ids of widget views shown

    @property
    def stdout(self) -> str:
        return "".join(self.text)


class Kernel:
    """A workbench kernel started from its spec, as JupyterLab starts it."""

    def __init__(self, data_dir: Path) -> None:
        from jupyter_client.manager import start_new_kernel

        self.closed_comms: set[str] = set()
        os.environ["JUPYTER_DATA_DIR"] = str(data_dir)
        self.manager, self.client = start_new_kernel(kernel_name=KERNEL_NAME,
                                                     startup_timeout=START_TIMEOUT,
                                                     cwd=str(ROOT / "notebooks"))

    def run_all(self, sources: list[str], timeout: float = RUN_ALL_TIMEOUT) -> list[CellRun]:
        """Queue every cell at once, as Run All does (a failing cell aborts the rest), and
        collect what each did until every one has replied."""
        runs = {self.client.execute(source, stop_on_error=True): CellRun(source)
                for source in sources}
        pending = set(runs)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"Run All did not finish within {timeout:g} s; waiting "
                                     f"for: {[runs[m].source[:60] for m in pending]}")
            self._drain_iopub(runs)
            try:
                reply = self.client.get_shell_msg(timeout=min(left, 0.2))
            except Exception:  # queue.Empty: nothing yet
                continue
            parent = reply["parent_header"].get("msg_id")
            if parent in runs:
                runs[parent].status = reply["content"]["status"]
                pending.discard(parent)
        self._drain_iopub(runs, settle=0.5)
        return list(runs.values())

    def _drain_iopub(self, runs: dict[str, CellRun], settle: float = 0.0) -> None:
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=settle or 0.01)
            except Exception:  # queue.Empty
                return
            kind, content = message["msg_type"], message["content"]
            if kind == "comm_close":
                self.closed_comms.add(content["comm_id"])
            run = runs.get(message["parent_header"].get("msg_id"))
            if run is None:
                continue
            if kind == "stream":
                run.text.append(content["text"])
            elif kind == "error":
                run.errors.append(_ANSI.sub("", "\n".join(content["traceback"])))
            elif kind in ("display_data", "execute_result"):
                view = content["data"].get(WIDGET_VIEW)
                if view is not None:
                    run.widgets.append(view["model_id"])

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A Jupyter data directory with the workbench kernel of this Python, as installed."""
    path = tmp_path_factory.mktemp("jupyter-data")
    spec = path / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(kernel_spec(sys.executable)), encoding="utf-8")
    return path


@pytest.fixture
def kernel(data_dir, monkeypatch):
    monkeypatch.delenv("WORKBENCH_BROKER", raising=False)  # a private broker, as on Binder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data_dir))
    k = Kernel(data_dir)
    yield k
    k.close()


def _code_cells(path: Path) -> list[dict]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _saved_text(cell: dict) -> str:
    return "".join("".join(output["text"]) for output in cell.get("outputs", [])
                   if output["output_type"] == "stream" and output["name"] == "stdout")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_all(kernel, path) -> None:
    cells = _code_cells(path)
    runs = kernel.run_all(["".join(cell["source"]) for cell in cells])
    for number, (cell, run) in enumerate(zip(cells, runs), 1):
        where = f"{path.name}, code cell {number}:\n{run.source[:300]}"
        assert run.status == "ok" and not run.errors, f"{where}\nfailed: {run.errors}\n" \
                                                      f"{run.stdout}"
        if run.source.startswith(CHECKED):
            assert run.stdout == _saved_text(cell), f"{where}\nprinted:\n{run.stdout}"
    assert "already loaded" not in runs[0].stdout, runs[0].stdout
    shown = [model for run in runs for model in run.widgets]
    assert not set(shown) & kernel.closed_comms, "Run All closed widgets it had shown"
    if any(re.search(r"^def tidy_up\(", run.source, re.M) for run in runs):
        (tidy,) = kernel.run_all(["tidy_up()"])
        assert tidy.status == "ok" and not tidy.errors, tidy.errors
        assert set(shown) <= kernel.closed_comms, "tidy_up() left widgets open"


def test_a_failing_magic_stops_run_all(kernel) -> None:
    runs = kernel.run_all(["%load_ext workbench", "ran = []",
                           "r = %nws fetch nosuchvar --timeout 0.2", "ran.append('after')",
                           "print(ran)"])
    assert [run.status for run in runs] == ["ok", "ok", "error", "aborted", "aborted"]
    assert runs[0].stdout == ""  # the kernel has the magics already: nothing to say
    assert runs[2].errors == ["NwsTimeoutException: %nws fetch: no value of nosuchvar "
                              "within 0.2 s"]
    (check,) = kernel.run_all(["print(ran, 'r' in dir())"])
    assert check.stdout == "[] False\n"


def test_a_task_that_fails_shows_the_line_of_its_cell(kernel) -> None:
    """A function defined in a cell fails on a worker: the page shows the cell and its line,
    as IPython shows its own errors, and not the master's stack."""
    runs = kernel.run_all(["from workbench import Sleigh\ns = Sleigh(workerCount=1)",
                           "def invert(x):\n    y = x - 1\n    return 1 / y",
                           "s.submit(invert, 1).result()"])
    # how this IPython names the cell in its own tracebacks ("Cell In[2]" since IPython 8.13)
    (label,) = kernel.run_all([
        "named = getattr(get_ipython().compile, 'format_code_name', lambda name: None)\n"
        "file = invert.__code__.co_filename\n"
        "print(' '.join(named(file)) if named(file) else f'File \"{file}\"')"])
    try:
        assert [run.status for run in runs] == ["ok", "ok", "error"]
        (shown,) = runs[2].errors
        lines = shown.splitlines()
        assert lines[0] == "RemoteError (task 0 on worker 0): the task raised on its worker"
        assert f"  {label.stdout.strip()}, line 3, in invert" in lines
        assert "    return 1 / y" in lines and lines[-1] == "ZeroDivisionError: division by zero"
    finally:
        kernel.run_all(["s.stop()"])


def test_nws_status_names_the_kernels_private_broker(kernel) -> None:
    (run,) = kernel.run_all(["from workbench import NetWorkSpace\n"
                             "address = NetWorkSpace().server.address\n"
                             "print(address)\nsummary = %nws status\nprint(summary)"])
    assert run.status == "ok", run.errors
    address, *summary = run.stdout.splitlines()
    assert address in summary[0], run.stdout
    assert "embedded in Jupyter kernel" in run.stdout, run.stdout
