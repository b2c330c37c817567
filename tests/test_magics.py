"""The ``%nws`` and ``%%nws_each`` magics in a real IPython shell against a real broker: every
subcommand, values returned and displayed, help, short errors, Ctrl-C during a blocking fetch,
and cells run on the workers of a sleigh."""

from __future__ import annotations

import _thread
import os
import re
import sys
import threading
import time
import types
import uuid

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from workbench import NwsServer, Sleigh, mq
from workbench.config import WAIT_HINT_AFTER
from workbench.errors import NwsException, NwsTimeoutException
from workbench.jupyter.parsing import split_words
from workbench.jupyter.tables import Table

from .support import wait_for


@pytest.fixture(scope="module")
def shell(broker):
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "workbench")
    shell.run_line_magic("nws", f"connect {broker.address}")
    yield shell
    shell.magics_manager.registry["NwsMagics"].session.close()
    mq.close_connection()  # %nws twitter pointed mq at this module's broker
    InteractiveShell.clear_instance()


@pytest.fixture
def nws(shell, ws_name):
    """``nws("store x 1")`` runs ``%nws store x 1`` on a workspace of this test's own."""
    shell.run_line_magic("nws", f"open {ws_name}")
    return lambda line: shell.run_line_magic("nws", line)


@pytest.fixture
def peer(server, ws_name):
    """The test's workspace seen by another client."""
    return server.useWs(ws_name)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fails(shell, capsys, cell: str) -> tuple[type, str]:
    """Run ``cell``, which must fail as IPython's own magics fail: the cell's result is an
    error (Run All stops there) and what is shown is the error's text, without a traceback
    -> (the exception's type, the text shown)."""
    result = shell.run_cell(cell)
    assert not result.success
    captured = capsys.readouterr()
    shown = _ANSI.sub("", captured.out + captured.err).strip()
    assert "Traceback" not in shown and "magics.py" not in shown, shown
    return type(result.error_in_exec), shown


# ---------------------------------------------------------------------------- help, parsing

def test_help_of_the_magic_and_of_a_subcommand(shell, capsys):
    shell.run_line_magic("nws", "--help")
    out = capsys.readouterr().out
    assert out.startswith("usage: %nws")
    for sub in ("store", "fetch", "find", "fetchTry", "findTry", "declare", "delete", "vars",
                "wss", "use", "open", "connect", "twitter", "kv", "sleigh", "dashboard"):
        assert f"\n    {sub} " in out, sub
    shell.run_line_magic("nws", "store --help")
    out = capsys.readouterr().out
    assert out.startswith("usage: %nws store [-h] VAR") and "EXPR" in out
    shell.run_line_magic("nws", "kv set --help")
    assert "--ttl S" in capsys.readouterr().out
    shell.run_line_magic("nws", "")
    assert capsys.readouterr().out.startswith("usage: %nws")
    shell.run_cell_magic("nws_each", "--help", "pass")
    assert "SleighRank" in capsys.readouterr().out


def test_words_keep_expressions_whole():
    assert split_words('store x {"a b": [1, 2]} + f( 3 )') == [
        "store", "x", '{"a b": [1, 2]}', "+", "f( 3 )"]
    assert split_words(" fetch  'my var' ") == ["fetch", "'my var'"]


def test_usage_errors_fail_the_cell_as_usage_errors(shell, capsys):
    kind, shown = fails(shell, capsys, "%nws bogus")
    assert kind is UsageError
    assert shown.startswith("UsageError: %nws: argument SUBCOMMAND: invalid choice: 'bogus'")
    assert shown.splitlines()[1].startswith("usage: %nws") and len(shown.splitlines()) == 2
    assert "invalid choice: 'sideways'" in fails(shell, capsys, "%nws declare v sideways")[1]
    assert fails(shell, capsys, "%nws store x") == (UsageError,
                                                    "UsageError: %nws store: EXPR is missing")
    assert "unterminated string" in fails(shell, capsys, '%nws store x "unterminated')[1]
    assert "'later' is neither a number of workers nor 'stop'" in \
        fails(shell, capsys, "%nws sleigh later")[1]
    # Run All stops at the first failure: the cell after it does not run
    shell.user_ns["after"] = 0
    assert not shell.run_cell("%nws bogus\nafter = 1").success
    assert shell.user_ns["after"] == 0
    capsys.readouterr()


# ---------------------------------------------------------------------------- values

def test_store_then_fetch_find_and_the_try_forms(shell, nws, peer):
    shell.user_ns["a"] = 20
    assert nws("store x a * 2 + 2") is None
    assert peer.find("x") == 42
    assert nws("find x") == 42
    assert nws("fetch x") == 42
    assert nws("fetchTry x") is None
    assert nws("findTry x 'none left'") == "none left"
    nws('store x {"k": [1, 2]}')
    assert nws("findTry x") == {"k": [1, 2]}
    assert nws("fetch_try x -1") == {"k": [1, 2]}
    assert nws("fetchTry x -1") == -1
    nws("store 'odd name' 'spaced out'")
    assert peer.fetch("odd name") == "spaced out"


def test_a_fetch_assigns_and_a_bare_one_displays(shell, nws, peer, capsys):
    peer.store("x", 7)
    peer.store("x", 8)
    assert shell.run_cell("y = %nws fetch x").success
    assert shell.user_ns["y"] == 7
    capsys.readouterr()
    shell.run_cell("%nws find x")
    assert capsys.readouterr().out.strip().endswith(": 8")  # Out[n]: 8
    assert shell.user_ns["_"] == 8


def test_expressions_see_the_user_namespace_and_errors_are_short(shell, nws, capsys):
    assert fails(shell, capsys, "%nws store x no_such_name + 1") == (
        UsageError, "UsageError: %nws store: cannot evaluate 'no_such_name + 1': "
                    "NameError: name 'no_such_name' is not defined")
    kind, shown = fails(shell, capsys, "%nws store x 1 +")
    assert kind is UsageError and "invalid syntax" in shown and len(shown.splitlines()) == 1


def test_a_failed_operation_fails_the_cell_with_the_workbench_exception(shell, nws, capsys):
    shell.user_ns["r"] = "before"
    kind, shown = fails(shell, capsys, "r = %nws fetch nothing --timeout 0.5")
    assert kind is NwsTimeoutException
    assert shown.splitlines()[-1] == ("NwsTimeoutException: %nws fetch: no value of nothing "
                                      "within 0.5 s")
    assert shell.user_ns["r"] == "before"  # the assignment did not happen


def test_a_client_error_in_a_cell_shows_the_cells_frames_not_the_clients(shell, peer, capsys,
                                                                          monkeypatch):
    shell.user_ns["ws"] = peer
    cell = "def ask():\n    return ws.fetch('nothing', timeout=0.1)\n\nask()"
    result = shell.run_cell(cell)
    assert isinstance(result.error_in_exec, NwsTimeoutException)
    shown = _ANSI.sub("", capsys.readouterr().out)
    assert "ask()" in shown and "return ws.fetch('nothing', timeout=0.1)" in shown
    assert "workbench" + os.sep not in shown, shown  # no frame of the library's own
    assert shown.strip().splitlines()[-1].startswith("NwsTimeoutException: ")
    monkeypatch.setenv("WORKBENCH_TRACEBACK", "full")  # every frame, for a bug report
    shell.run_cell(cell)
    assert "workspace.py" in _ANSI.sub("", capsys.readouterr().out)


def test_ctrl_c_cancels_a_blocked_fetch_and_loses_nothing(shell, nws, peer, capsys):
    started = time.monotonic()
    sent = threading.Event()

    def interrupt_when_blocked():
        wait_for(lambda: time.monotonic() - started > WAIT_HINT_AFTER + 0.2
                 and peer.listVars(format="dict").get("z", (0, 0, 0))[2] == 1)
        sent.set()
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_blocked, daemon=True).start()
    result = shell.run_cell("%nws fetch z")
    assert sent.is_set()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # the cell fails, as Ctrl-C does
    captured = capsys.readouterr()
    assert "waiting for z in " in captured.out and "Ctrl-C cancels" in captured.out
    shown = _ANSI.sub("", captured.out).strip().splitlines()[-1]
    assert shown == "KeyboardInterrupt: %nws fetch: cancelled; nothing was taken"
    wait_for(lambda: peer.listVars(format="dict").get("z", (0, 0, 0))[2] == 0)
    peer.store("z", "after the cancel")
    assert peer.findTry("z") == "after the cancel"  # nobody took it
    assert nws("fetch z") == "after the cancel"


# ---------------------------------------------------------------------------- variables

def test_declare_delete_and_vars(shell, nws, peer, ws_name, capsys):
    nws("declare v single")
    nws("store v 1")
    nws("store v 2")
    assert peer.fetchTry("v") == 2
    nws("store w 'a'")
    table = nws("vars")
    assert isinstance(table, Table)
    assert [row[0] for row in table.rows] == ["v", "w"]
    assert table.rows[0][4] == "single"
    text = repr(table)
    assert text.splitlines()[0] == f"variables of {ws_name}" and "variable" in text
    assert "<table>" in table._repr_html_()
    kind, shown = fails(shell, capsys, "%nws declare v fifo")
    assert issubclass(kind, NwsException) and f"{kind.__name__}: %nws declare: " in shown
    nws("delete w")
    assert [row[0] for row in nws("vars").rows] == ["v"]


def test_wss_open_and_use(shell, nws, server, ws_name, capsys):
    table = nws("wss")
    mine = {row[1]: row[0] for row in table.rows}
    assert mine[ws_name] == ">"
    other = f"u_{uuid.uuid4().hex[:8]}"
    server.openWs(other).store("shared", 1)
    nws(f"use {other}")
    assert capsys.readouterr().out.startswith(f"%nws acts on workspace {other} at tcp://")
    assert nws("fetch shared") == 1
    assert {row[1]: row[0] for row in nws("wss").rows}[other] == ""  # used, not owned
    assert [row[0] for row in nws(f"vars {ws_name}").rows] == []
    kind, shown = fails(shell, capsys, "%nws use never_made --no-create")
    assert issubclass(kind, NwsException) and f"{kind.__name__}: %nws use: " in shown


def test_connect_keeps_the_workspace_name(shell, broker, nws, ws_name, peer, capsys):
    nws("store before 1")
    nws(f"connect {broker.host}:{broker.port}")
    assert capsys.readouterr().out == f"%nws connected to {broker.address}\n"
    # the old session ended and its workspace was purged; the name is opened afresh
    assert nws("vars").title == f"variables of {ws_name}"
    nws("store after 2")
    assert [row[0] for row in nws("vars").rows] == ["after"]


# ---------------------------------------------------------------------------- pub/sub, kv

def test_twitter_evaluates_its_arguments(shell, broker, nws):
    topic = f"n{uuid.uuid4().hex[:8]}"
    received = []
    mq.init_connection(broker.address)  # following, before any %nws twitter, connects mq

    @mq.following_function(f"{topic}:*")
    def follow(message):
        received.append((message.id, message.args, message.kwargs))

    shell.user_ns["reading"] = 21.5
    nws(f"twitter {topic}:reading reading+1 'two words' [1, 2] unit='C'")
    assert received == [(f"{topic}:reading", (22.5, "two words", [1, 2]), {"unit": "C"})]


def test_kv_get_set_incr_delete(shell, nws, broker, capsys):
    store = f"kv_{uuid.uuid4().hex[:8]}"
    nws(f"kv --store {store} set hits 10")
    assert nws(f"kv --store {store} get hits") == 10
    assert nws(f"kv --store {store} incr hits 5") == 15
    assert nws(f"kv --store {store} incr hits") == 16
    nws(f"kv --store {store} set brief [1, 2] --ttl 60")
    assert nws(f"kv --store {store} get brief") == [1, 2]
    nws("kv set greeting 'hello'")
    assert nws("kv get greeting") == "hello"
    kind, shown = fails(shell, capsys, "%nws kv incr greeting")
    assert issubclass(kind, ValueError) and f"{kind.__name__}: %nws kv: " in shown
    nws("kv delete greeting")
    assert nws("kv get greeting") is None
    assert one_error_line(capsys) == "%nws kv get: no entry 'greeting' in kv"
    nws(f"kv --store {store} set --ttl -1 gone 1")
    assert nws(f"kv --store {store} get gone") is None


def test_dashboard_calls_the_widgets_module(shell, nws, ws_name, monkeypatch, capsys):
    name = "workbench.jupyter.widgets"
    monkeypatch.setitem(sys.modules, name, None)
    kind, shown = fails(shell, capsys, "%nws dashboard")
    assert kind is UsageError and "not available" in shown
    fake = types.ModuleType(name)
    fake.dashboard = lambda workspace: ("dashboard of", workspace.currentWs())
    monkeypatch.setitem(sys.modules, name, fake)
    assert nws("dashboard") == ("dashboard of", ws_name)


# ---------------------------------------------------------------------------- sleigh

def test_nws_each_runs_the_cell_on_every_worker(shell, capsys):
    assert shell.run_line_magic("nws", "sleigh") is None
    assert "none started" in capsys.readouterr().out
    kind, shown = fails(shell, capsys, "%%nws_each\n1")
    assert kind is UsageError and "no sleigh" in shown
    sleigh = shell.run_line_magic("nws", "sleigh 2")
    try:
        assert isinstance(sleigh, Sleigh) and sleigh.workerCount == 2
        assert shell.run_line_magic("nws", "sleigh").workers == 2
        shell.run_cell_magic("nws_each", "",
                             "print('hello from', SleighRank)\nsquare = SleighRank ** 2\n"
                             "SleighRank * 10")
        out = capsys.readouterr().out
        assert out.splitlines() == ["[worker 0] hello from 0", "Out[worker 0]: 0",
                                    "[worker 1] hello from 1", "Out[worker 1]: 10"]
        shell.user_ns["s"] = sleigh
        shell.run_cell_magic("nws_each", "s --timeout 20", "square + 100")  # state is kept
        assert capsys.readouterr().out.splitlines() == ["Out[worker 0]: 100",
                                                        "Out[worker 1]: 101"]
        result = shell.run_cell("%%nws_each s\nx = 1\n1 / (x - 1)")
        assert not result.success  # the cell failed on the workers: Run All stops here
        captured = capsys.readouterr()
        shown = _ANSI.sub("", captured.out)
        assert "Traceback" in captured.err and "ZeroDivisionError" in captured.err
        assert "1 / (x - 1)" in captured.err and "magics.py" not in captured.err + shown
        assert all(line.startswith("[worker ") for line in captured.err.splitlines())
        assert shown.strip() == "MagicFailure: %%nws_each: the cell failed on worker 0, 1 " \
                                "(above)"
        shell.user_ns["not_a_sleigh"] = 3
        assert fails(shell, capsys, "%%nws_each not_a_sleigh\n1") == (
            UsageError, "UsageError: %%nws_each: not_a_sleigh is a int, not a Sleigh")
    finally:
        shell.run_line_magic("nws", "sleigh stop")
    assert capsys.readouterr().out == f"%nws sleigh: stopped {sleigh.wsName}\n"
    assert sleigh.state().stopped


def test_the_magics_belong_to_their_shell(shell):
    magics = shell.magics_manager.registry["NwsMagics"]
    assert magics.shell is shell
    assert isinstance(magics.session.server(), NwsServer)
