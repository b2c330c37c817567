"""NetWorkSpaces' Sleigh as old scripts use it, against a real broker and real workers: the
constructor's options and module-level names, ``status()``, eachElem's argument handling and
string tasks, and a sleigh whose broker is killed."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading

import pytest

from workbench import NwsServer
from workbench.sleigh import (
    GroupStatus, Sleigh, SleighError, SleighException, SleighIllegalValueException,
    SleighNotAllowedException, SleighStoppedException, SleighTaskException,
    defaultSleighOptions, rshcmd, sshcmd,
)

from .support import start_broker, wait_for

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def sleigh(broker):
    with Sleigh(2, broker=broker.address) as pool:
        yield pool


# ---------------------------------------------------------------------------- names

def test_the_module_level_names_of_nws_sleigh():
    import workbench.sleigh as module

    for name in ("Sleigh", "SleighPending", "SleighResultIterator", "SleighException",
                 "SleighNwsException", "SleighGatheredException", "SleighStoppedException",
                 "SleighOccupiedException", "SleighIllegalValueException",
                 "SleighScriptException", "SleighTaskException", "SleighJoinException",
                 "SleighNotAllowedException", "SleighUnsupportedMethodException",
                 "sshcmd", "rshcmd", "defaultSleighOptions"):
        assert name in module.__all__ and getattr(module, name) is not None
    assert SleighException is SleighError
    assert issubclass(SleighIllegalValueException, SleighError)
    assert issubclass(SleighIllegalValueException, ValueError)  # callers that caught it still do
    assert issubclass(SleighStoppedException, SleighError)
    assert {"launch", "workerCount", "nodeList", "nwsHost", "nwsPort", "scriptExec",
            "scriptDir", "scriptName", "modulePath", "workingDir", "logDir", "user", "passwd",
            "wsNameTemplate", "userWsNameTemplate", "verbose", "redirectOutput",
            "nwsHostRemote", "nwsPortRemote", "outfile"} == set(defaultSleighOptions)


def test_sshcmd_and_rshcmd_give_the_command_prefix():
    assert sshcmd("localhost")[1:] == ["-n", "-x", "localhost"]
    assert sshcmd("localhost", user="ann")[1:] == ["-n", "-x", "-l", "ann", "localhost"]
    assert sshcmd("localhost", user={"localhost": "bob", "default": "x"})[-3:] == \
        ["-l", "bob", "localhost"]
    assert rshcmd("localhost", user="ann")[1:] == ["localhost", "-l", "ann", "-n"]
    with pytest.raises(SleighIllegalValueException):
        sshcmd("")


# ---------------------------------------------------------------------------- constructor

def test_every_option_of_the_original_constructor_is_accepted(broker, tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "only_here.py").write_text("def where():\n    return 'only here'\n")
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    s = Sleigh(workerCount=2, launch="local", nodeList=["localhost"], nwsHost=broker.host,
               nwsPort=broker.port, wsNameTemplate="compat_ride_%04d",
               userWsNameTemplate="compat_user_%04d", verbose=True, user="nobody",
               redirectOutput=False, workingDir=str(work), modulePath=str(modules),
               logDir=str(logs), scriptExec=None, scriptDir="/nowhere",
               scriptName="PythonNWSSleighWorker.py", outfile=None, passwd="secret",
               nwsHostRemote=None, nwsPortRemote=None)
    try:
        assert s.wsName.startswith("compat_ride_") and s.workerCount == 2
        assert s.options["scriptDir"] == "/nowhere"
        assert s.eachWorker(os.getcwd, timeout=TIMEOUT) == [str(work)] * 2

        def imported():
            import only_here

            return only_here.where()

        assert s.eachWorker(imported, timeout=TIMEOUT) == ["only here"] * 2

        def shout(x):
            print(f"task output {x}")
            return x

        assert s.eachElem(shout, [1, 2], timeout=TIMEOUT) == [1, 2]
        names = sorted(os.listdir(logs))
        assert names == [f"{s.wsName}_0000.txt", f"{s.wsName}_0001.txt"]
        # redirectOutput=False: what tasks print stays in the workers' own output (the logs)
        wait_for(lambda: sum((logs / n).read_text().count("task output") for n in names) == 2,
                 TIMEOUT)
    finally:
        s.stop()


def test_default_sleigh_options_are_read_at_each_construction(broker, monkeypatch):
    monkeypatch.setitem(defaultSleighOptions, "wsNameTemplate", "changed_default_%03d")
    monkeypatch.setitem(defaultSleighOptions, "workerCount", 1)
    with Sleigh(broker=broker.address) as s:
        assert s.wsName.startswith("changed_default_") and s.workerCount == 1


def test_illegal_options_raise_sleigh_illegal_value_exception(broker):
    for options in ({"launch": "carrier-pigeon"}, {"launch": "service"},
                    {"workerCount": -1}, {"workerCount": "three"},
                    {"wsNameTemplate": "no_number"}, {"logDir": "/no/such/directory"}):
        with pytest.raises(SleighIllegalValueException):
            Sleigh(broker=broker.address, **options)
    with pytest.raises(ValueError):  # what callers of the pool's own API caught
        Sleigh(broker=broker.address, launch="carrier-pigeon")
    with pytest.raises(TypeError):  # a keyword NetWorkSpaces never had
        Sleigh(broker=broker.address, noSuchOption=1)


def test_a_launch_function_of_networkspaces_gives_the_command_prefix(broker):
    seen = []

    def here(machine, **options):
        seen.append((machine, options["user"]))
        return ["sh", "-c"]

    with Sleigh(launch=here, nodeList=["localhost", "localhost"], user="ann",
                broker=broker.address, python=sys.executable) as s:
        assert s.workerCount == 2  # one per entry of nodeList
        assert s.eachElem(abs, [-1, -2], timeout=TIMEOUT) == [1, 2]
    assert seen[:2] == [("localhost", "ann")] * 2

    def not_a_list(machine, **options):
        return "ssh " + machine

    with pytest.raises(SleighIllegalValueException):
        Sleigh(launch=not_a_list, nodeList=["localhost"], broker=broker.address)


def test_web_launch_waits_for_workers_started_by_hand(broker):
    """launch='web': the command is in ``runMe``; deleting ``deleteMeWhenAllWorkersStarted``
    says the workers have joined."""
    made: list = []
    maker = threading.Thread(target=lambda: made.append(
        Sleigh(launch="web", broker=broker.address, wsNameTemplate="web_ride_%04d")))
    maker.start()
    server = NwsServer(broker.address)
    worker = None
    try:
        def sleigh_name():
            names = [n for n in server.listWss(format="dict") if n.startswith("web_ride_")]
            return names[0] if names else None

        name = wait_for(sleigh_name, TIMEOUT)
        ws = server.useWs(name)
        command = shlex.split(wait_for(lambda: ws.findTry("runMe"), TIMEOUT))
        worker = subprocess.Popen([sys.executable, *command[1:]], env=broker.env())
        wait_for(lambda: "worker@0" in ws.listVars(format="dict"), TIMEOUT)
        ws.deleteVar("deleteMeWhenAllWorkersStarted")
        maker.join(TIMEOUT)
        [s] = made
        try:
            assert s.workerCount == 1 and s.status() == (1, 1)
            assert s.eachElem(abs, [-3], timeout=TIMEOUT) == [3]
        finally:
            s.stop()
        assert worker.wait(TIMEOUT) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        server.close()


def test_a_worker_may_not_start_a_sleigh(sleigh):
    def nested():
        try:
            Sleigh(1)
        except SleighNotAllowedException as exc:
            return type(exc).__name__

    assert sleigh.eachWorker(nested, timeout=TIMEOUT) == ["SleighNotAllowedException"] * 2


# ---------------------------------------------------------------------------- status

def test_status_answers_as_networkspaces(sleigh):
    workers, closed = sleigh.status()
    assert (workers, closed) == (2, 1) and isinstance(sleigh.status(), GroupStatus)
    assert sleigh.status(closeGroup=True, timeout=0.5) == (2, 1)
    assert sleigh.state().ranks == [0, 1]  # the richer picture
    with pytest.raises(SleighIllegalValueException):
        sleigh.status(timeout=-1)


def test_a_stopped_sleigh_raises_sleigh_stopped_exception(broker):
    s = Sleigh(1, broker=broker.address)
    s.stop()
    with pytest.raises(SleighStoppedException):
        s.eachElem(abs, [-1])
    assert SleighTaskException is not None


# ---------------------------------------------------------------------------- eachElem

def test_each_elem_reads_its_arguments_as_networkspaces(sleigh):
    pair = lambda a, b: (a, b)  # noqa: E731
    # a list whose first item is iterable holds one argument list per argument, zipped
    assert sleigh.eachElem(pair, [(1, 2), (3, 4)], timeout=TIMEOUT) == [(1, 3), (2, 4)]
    assert sleigh.eachElem(pair, [range(3), "abc"], timeout=TIMEOUT) == \
        [(0, "a"), (1, "b"), (2, "c")]
    assert sleigh.eachElem(lambda a, b: a + b, ["ab", "cde"], timeout=TIMEOUT) == ["ac", "bd"]
    # any other list, or anything else, is the one list of elements
    assert sleigh.eachElem(abs, [-1, -2], timeout=TIMEOUT) == [1, 2]
    assert sleigh.eachElem(abs, (-1, -2), timeout=TIMEOUT) == [1, 2]
    assert sleigh.eachElem(str.upper, "ab", timeout=TIMEOUT) == ["A", "B"]
    assert sleigh.eachElem(abs, (x for x in [-3]), timeout=TIMEOUT) == [3]
    # fixedArgs that is not a list is one argument
    assert sleigh.eachElem(pair, [1, 2], fixedArgs=5, timeout=TIMEOUT) == [(1, 5), (2, 5)]
    assert sleigh.eachElem(pair, [1], fixedArgs=(8, 9), timeout=TIMEOUT) == [(1, (8, 9))]
    assert sleigh.eachElem(pair, [[1], [2]], fixedArgs=[], timeout=TIMEOUT) == [(1, 2)]


def test_illegal_each_elem_arguments_raise_sleigh_illegal_value_exception(sleigh):
    for args, options in (((abs, []), {}), ((abs, 5), {}), ((abs, [[1], 5]), {}),
                          ((abs, [-1]), {"argPermute": (0,)}),
                          ((abs, [-1]), {"accumulator": object()}),
                          ((abs, [-1]), {"type": "bogus"}), ((abs, [-1]), {"type": 3}),
                          ((abs, [-1]), {"type": "eval"}), (("1", [1]), {"type": "invoke"}),
                          (("1", [1]), {"type": "define"}), ((5, [1]), {})):
        with pytest.raises(SleighIllegalValueException):
            sleigh.eachElem(*args, timeout=TIMEOUT, **options)
    with pytest.raises(SleighIllegalValueException):
        sleigh.eachWorker(abs, accumulator=object(), timeout=TIMEOUT)
    with pytest.raises(SyntaxError):  # a string task is compiled in the master
        sleigh.eachElem("1 +", [1], timeout=TIMEOUT)
    assert sleigh.eachElem(abs, [-4], type=" Invoke ", timeout=TIMEOUT) == [4]


def test_string_tasks_run_on_the_workers(sleigh):
    assert sleigh.eachElem("SleighArgs[0] * 2", [1, 2], timeout=TIMEOUT) == [2, 4]
    assert sleigh.eachElem("  SleighArgs", [[1, 2], [3, 4]], fixedArgs=9,
                           timeout=TIMEOUT) == [[1, 3, 9], [2, 4, 9]]
    statements = "y = SleighArgs[0] + 1\nSleighValue = y * 10"
    assert sleigh.eachElem(statements, [1, 2], timeout=TIMEOUT) == [20, 30]
    assert sleigh.eachElem("z = 1", [1], timeout=TIMEOUT) == [None]
    assert sorted(sleigh.eachWorker("SleighRank", timeout=TIMEOUT)) == [0, 1]
    results = sleigh.eachElem("1 // SleighArgs[0]", [1, 0], timeout=TIMEOUT)
    assert results[0] == 1 and isinstance(results[1], SleighTaskException)
    # the namespace persists: 'define' puts functions there, under their names
    assert sleigh.eachWorker(lambda x: x + 100, type="define", timeout=TIMEOUT) == [None] * 2
    assert sleigh.eachWorker(abs, type="define", timeout=TIMEOUT) == [None] * 2
    assert sleigh.eachElem("SleighFunction(abs(SleighArgs[0]))", [-1, -2], chunkSize=1,
                           timeout=TIMEOUT) == [101, 102]
    assert list(sleigh.imap("sum(SleighArgs)", [1, 2], [10, 20], timeout=TIMEOUT)) == [11, 22]
    assert list(sleigh.starmap("SleighArgs", [(1, 2)], timeout=TIMEOUT)) == [[1, 2]]
    with pytest.raises(SleighIllegalValueException):
        sleigh.imap(abs, [1], type="eval")


def test_the_accumulator_is_called_once_per_result(sleigh):
    calls = []
    assert sleigh.eachElem(abs, [-1, -2, -3, -4], accumulator=calls.append, chunkSize=4,
                           timeout=TIMEOUT) is None
    assert sorted(calls) == [[(0, 1)], [(1, 2)], [(2, 3)], [(3, 4)]]

    class ErrorsOnly:  # errors to ``error``, the rest to the accumulator itself
        def __init__(self):
            self.good, self.bad = [], []

        def __call__(self, pairs):
            self.good.append(pairs)

        def error(self, pairs):
            self.bad.append([(tag, type(value)) for tag, value in pairs])

    accumulator = ErrorsOnly()
    sleigh.eachElem(lambda x: 1 // x, [1, 0, 2], accumulator=accumulator, timeout=TIMEOUT)
    assert sorted(accumulator.good) == [[(0, 1)], [(2, 0)]]
    assert accumulator.bad == [[(1, SleighTaskException)]]


# ---------------------------------------------------------------------------- a lost broker

def test_a_sleigh_whose_broker_is_killed_stops_with_a_clear_error(tmp_path):
    doomed = start_broker(tmp_path)
    s = Sleigh(2, broker=doomed.address)
    try:
        pids = [w["pid"] for w in s.workerInfo()]
        running = s.eachElem(lambda x: __import__("time").sleep(x), [60, 60], blocking=False)
        doomed.process.kill()
        doomed.process.wait()
        # the workers leave (the broker is unreachable) and nothing starts them again
        wait_for(lambda: all(w.state == "exited" for w in s.state().launched), TIMEOUT,
                 message="the workers are still supervised")
        assert [w.restarts for w in s.state().launched] == [0, 0]
        for pid in pids:
            wait_for(lambda: not _alive(pid), TIMEOUT, message=f"worker {pid} still runs")
        with pytest.raises(SleighError, match=f"broker at {doomed.address}"):
            running.wait(timeout=TIMEOUT)
        with pytest.raises(SleighError, match=f"lost its broker at {doomed.address}"):
            s.eachElem(abs, [-1], timeout=TIMEOUT)
    finally:
        s.stop()
        doomed.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
