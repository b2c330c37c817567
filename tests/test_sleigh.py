"""The worker pool against a real broker and real worker processes: the NetWorkSpaces API
(eachElem, eachWorker, imap, starmap, status, workerInfo), the Executor API, what travels
(closures, classes, numpy arrays, output) and what the workspace shows.

One sleigh of two workers serves the module; tests that kill or interrupt workers are in
``test_sleigh_processes.py``.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import time

import pytest

import workbench
from workbench import NwsServer, RemoteError, Sleigh
from workbench.sleigh import SleighPending, SleighResultIterator
from workbench.sleigh.errors import SleighError, SleighTaskException

from .support import run_client, wait_for

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def sleigh(broker):
    s = Sleigh(2, broker=broker.address)
    yield s
    s.stop()


def rank_by_import():
    """A module-level function (pickled by reference): the globals come from the module."""
    from workbench.sleigh.worker import SleighRank, SleighWorkerCount

    return SleighRank, SleighWorkerCount


def rank_by_builtin():
    return SleighRank  # noqa: F821 - a builtin on workers


def describe_base(array) -> list[str]:
    """The chain of objects whose memory an array uses (an mmap: it was never copied)."""
    chain, obj = [], array
    for _ in range(8):
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if obj is None:
            break
        chain.append(type(obj).__name__)
    return chain


# ---------------------------------------------------------------------------- the pool

def test_exports_and_names():
    assert workbench.Sleigh is Sleigh
    assert issubclass(Sleigh, concurrent.futures.Executor)
    assert SleighTaskException is RemoteError
    assert Sleigh.each_elem is Sleigh.eachElem
    assert Sleigh.each_worker is Sleigh.eachWorker
    assert Sleigh.worker_info is Sleigh.workerInfo


def test_workers_join_and_describe_themselves(sleigh):
    info = sleigh.workerInfo()
    assert [w["rank"] for w in info] == [0, 1]
    assert {w["workbench"] for w in info} == {workbench.__version__}
    assert all(w["python"] and w["host"] for w in info)
    for w in info:
        os.kill(w["pid"], 0)  # alive
    status = sleigh.state()
    assert status.workers == 2 and status.ranks == [0, 1] and not status.stopped
    assert sleigh.workerCount == 2


def test_everything_lives_in_the_workspace(sleigh):
    sleigh.eachElem(abs, [-1], timeout=TIMEOUT)
    expected = {"task", "result", "task@0", "task@1", "worker@0", "worker@1", "workerCount"}
    # task@<rank> appear once each worker waits on its own variable
    names = wait_for(lambda: (lambda names: names if expected <= set(names) else None)(
        sleigh.nws.listVars(format="dict")), timeout=10)
    assert any(name.startswith("__function:") for name in names)
    assert sleigh.nws.find("worker@1")["rank"] == 1
    mine = [row for row in NwsServer(sleigh.nws.server.serverHost,
                                     sleigh.nws.server.serverPort).listWss(format="dict")
            .values() if row[0] == sleigh.wsName]
    assert mine and not mine[0][3]  # there, and not persistent: purged with the master


# ---------------------------------------------------------------------------- eachElem

def test_each_elem_follows_networkspaces(sleigh):
    assert sleigh.eachElem(abs, [-1, -2, -3], timeout=TIMEOUT) == [1, 2, 3]
    # several lists are zipped, stopping at the shortest; fixed arguments are appended
    assert sleigh.eachElem(lambda a, b, c: (a, b, c), [[1, 2, 3], [4, 5]],
                           fixedArgs=[9], timeout=TIMEOUT) == [(1, 4, 9), (2, 5, 9)]
    # argPermute reorders and selects
    assert sleigh.eachElem(lambda a, b: a - b, [[10, 20], [1, 2]], argPermute=[1, 0],
                           timeout=TIMEOUT) == [-9, -18]
    assert sleigh.eachElem(lambda x: x, [[1, 2], [3, 4]], argPermute=[1], timeout=TIMEOUT) == [3, 4]
    # any iterable of elements; a list of tuples is a list of argument lists (see
    # test_sleigh_compat), so tuples as single elements go in an outer list
    assert sleigh.eachElem(len, [[(1, 2), (3,)]], timeout=TIMEOUT) == [2, 1]
    assert sleigh.eachElem(lambda x: x * x, range(5), timeout=TIMEOUT) == [0, 1, 4, 9, 16]
    assert sleigh.eachElem(abs, [[]], timeout=TIMEOUT) == []


def test_each_elem_chunks_many_tiny_tasks_and_keeps_them_per_element(sleigh):
    def odd_fails(x):
        if x % 1000 == 999:
            raise ValueError(f"bad {x}")
        return x + 1

    results = sleigh.eachElem(odd_fails, list(range(5000)), timeout=TIMEOUT)
    assert len(results) == 5000
    for x in (0, 1, 998, 1000, 4998):
        assert results[x] == x + 1
    failed = [x for x, r in enumerate(results) if isinstance(r, RemoteError)]
    assert failed == [999, 1999, 2999, 3999, 4999]
    assert results[1999].tag == 1999 and "bad 1999" in str(results[1999])


def test_a_chunk_keeps_each_elements_value_error_and_output(sleigh, capsys):
    import sys

    def picky(x, offset):
        print(f"out {x}")
        if x % 4 == 2:
            print(f"err {x}", file=sys.stderr)
            raise ValueError(f"bad {x}")
        return x + offset

    capsys.readouterr()
    results = sleigh.eachElem(picky, list(range(12)), fixedArgs=[100], chunkSize=6,
                              timeout=TIMEOUT)
    captured = capsys.readouterr()
    assert [x for x, r in enumerate(results) if isinstance(r, RemoteError)] == [2, 6, 10]
    assert all(results[x] == x + 100 for x in range(12) if x % 4 != 2)
    assert results[6].tag == 6 and "bad 6" in str(results[6])
    assert "in picky" in results[6].remote_traceback
    assert "_run_items" not in results[6].remote_traceback
    out = [line.split("] ", 1)[1] for line in captured.out.splitlines()]
    assert sorted(out, key=lambda line: int(line.split()[1])) == [f"out {x}" for x in range(12)]
    err = [line.split("] ", 1)[1] for line in captured.err.splitlines()]
    assert sorted(err) == sorted(f"err {x}" for x in (2, 6, 10))


def test_a_submits_keyword_arguments_reach_the_task(sleigh):
    assert sleigh.submit(sorted, [3, 1, 2], key=lambda x: -x).result(timeout=TIMEOUT) \
        == [3, 2, 1]


def test_failed_tasks_come_back_as_remote_errors(sleigh):
    def divide(x):
        return 1 / x

    results = sleigh.eachElem(divide, [1, 0, 4], timeout=TIMEOUT)
    assert results[0] == 1.0 and results[2] == 0.25
    error = results[1]
    assert isinstance(error, SleighTaskException) and isinstance(error, RemoteError)
    assert isinstance(error.exception, ZeroDivisionError)
    assert error.type_name == "ZeroDivisionError" and error.tag == 1 and error.worker in (0, 1)
    assert "return 1 / x" in error.remote_traceback
    assert "in divide" in error.remote_traceback
    assert "_run_items" not in error.remote_traceback  # the worker's own frames are left out
    rendered = error._render_traceback_()
    assert isinstance(rendered, list) and all(isinstance(line, str) for line in rendered)
    assert any("ZeroDivisionError" in line for line in rendered)
    assert any("return 1 / x" in line for line in rendered)


def test_an_exception_that_does_not_pickle_still_reports(sleigh):
    def raise_unpicklable():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("no")

        raise Local("local trouble")

    error = sleigh.eachWorker(raise_unpicklable, timeout=TIMEOUT)[0]
    assert isinstance(error, RemoteError) and error.exception is None
    assert "local trouble" in str(error) and "Local" in error.type_name


def test_closures_lambdas_and_local_classes_travel_by_value(sleigh):
    offset = 100

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm1(self):
            return abs(self.x) + abs(self.y)

    def shift(p):
        return Point(p.x + offset, p.y)

    moved = sleigh.eachElem(shift, [Point(1, 2), Point(-3, 4)], timeout=TIMEOUT)
    assert [(p.x, p.y) for p in moved] == [(101, 2), (97, 4)]
    assert isinstance(moved[0], Point)  # the class came back as itself
    assert sleigh.eachElem(lambda p: p.norm1(), [Point(-1, 2)], timeout=TIMEOUT) == [3]
    assert sleigh.eachElem(lambda x: x + offset, [1], timeout=TIMEOUT) == [101]


def test_what_a_notebook_defines_travels_by_value(broker):
    """In a notebook, functions and classes live in ``__main__``, which plain pickle names by
    reference and a worker cannot resolve."""
    done = run_client(broker, f"""
from workbench import Sleigh
from workbench.sleigh.worker import SleighRank   # None here: the worker's value must win

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

scale = 3

def norm1(p):
    return (abs(p.x) + abs(p.y)) * scale

def who():
    return SleighRank

with Sleigh(2, broker={broker.address!r}) as s:
    print(s.eachElem(norm1, [Point(1, -2), Point(0, 5)]))
    print(type(s.eachElem(lambda p: Point(p.x, -p.y), [Point(1, 2)])[0]) is Point)
    print(s.eachWorker(who))
    print(s.eachElem(lambda: s, [()]))
""", timeout=60)
    lines = done.stdout.splitlines()
    assert lines[:3] == ["[9, 15]", "True", "[0, 1]"], done.stderr
    assert "TypeError" in done.stderr and "cannot travel to its workers" in done.stderr


def test_worker_globals(sleigh):
    seen = sleigh.eachWorker(lambda: (SleighRank, SleighWorkerCount,  # noqa: F821
                                      SleighNws.currentWs(), SleighUserNws.currentWs()),  # noqa: F821
                             timeout=TIMEOUT)
    assert [s[0] for s in seen] == [0, 1]
    assert {s[1] for s in seen} == {2}
    assert {s[2] for s in seen} == {sleigh.nws.currentWs()}
    assert {s[3] for s in seen} == {sleigh.userNws.currentWs()}
    assert sleigh.eachWorker(rank_by_import, timeout=TIMEOUT) == [(0, 2), (1, 2)]
    assert sleigh.eachWorker(rank_by_builtin, timeout=TIMEOUT) == [0, 1]
    # the user workspace is for coordination between master and workers
    sleigh.eachWorker(lambda: SleighUserNws.store("hello", SleighRank), timeout=TIMEOUT)  # noqa: F821
    assert sorted(sleigh.userNws.fetch("hello", timeout=5) for _ in range(2)) == [0, 1]


def test_a_worker_cannot_start_a_sleigh(sleigh, broker):
    address = broker.address

    def nested():
        return Sleigh(1, broker=address)

    error = sleigh.eachWorker(nested, timeout=TIMEOUT)[0]
    # NetWorkSpaces' SleighNotAllowedException, a SleighError
    assert isinstance(error, RemoteError) and isinstance(error.exception, SleighError)
    assert error.type_name.endswith("SleighNotAllowedException")


def test_the_function_is_stored_once_per_map(sleigh):
    def count_function_stores(batch):
        return sum(e["count"] for e in batch
                   if e["event"] == "stored" and e.get("var", "").startswith("__function:"))

    def tasks_stored(batch):
        return sum(e["count"] for e in batch if e["event"] == "stored" and e.get("var") == "task")

    scale = 3

    def triple(x):
        return x * scale

    counts = {"functions": 0, "tasks": 0}
    with sleigh.nws.watch() as watch:
        assert sleigh.eachElem(triple, list(range(50)), chunkSize=1,
                               timeout=TIMEOUT) == [3 * x for x in range(50)]

        def drained():
            try:
                batch = watch.next_batch(timeout=0.2)
            except Exception:
                return counts["tasks"] >= 50
            counts["functions"] += count_function_stores(batch)
            counts["tasks"] += tasks_stored(batch)
            return False

        wait_for(drained, timeout=10)
    # 50 tasks (and any a worker gave back to share its hand), one function store
    assert counts["functions"] == 1 and counts["tasks"] >= 50


def test_numpy_arrays_travel_without_copies(sleigh):
    np = pytest.importorskip("numpy")
    array = np.arange(1_000_000, dtype=np.float64)  # 8 MB: through /dev/shm, out of band

    def double(a):
        return a * 2, describe_base(a), a.flags.writeable

    [(doubled, worker_chain, writable)] = sleigh.eachElem(double, [[array]], timeout=TIMEOUT)
    assert np.array_equal(doubled, array * 2)
    assert writable and doubled.flags.writeable
    assert "mmap" in worker_chain  # the worker's argument is the mapped file itself
    assert "mmap" in describe_base(doubled)  # so is the master's result
    assert doubled.dtype == np.float64 and doubled.shape == array.shape


def test_what_tasks_print_is_labelled_with_the_worker(sleigh, capsys):
    import sys

    def chatty(x):
        print(f"out {x}")
        print(f"err {x}", file=sys.stderr)
        return x

    capsys.readouterr()
    sleigh.eachElem(chatty, [1, 2, 3], timeout=TIMEOUT)
    captured = capsys.readouterr()
    out_lines = captured.out.splitlines()
    for x in (1, 2, 3):
        assert any(line.startswith("[worker ") and line.endswith(f"] out {x}")
                   for line in out_lines), captured.out
        assert any(line.endswith(f"] err {x}") for line in captured.err.splitlines())
    ranks = {int(line.split("]")[0][len("[worker "):]) for line in out_lines}
    assert ranks <= {0, 1}


def test_non_blocking_each_elem_and_accumulators(sleigh):
    pending = sleigh.eachElem(lambda x: (time.sleep(0.05), x)[1], list(range(6)), blocking=False)
    assert isinstance(pending, SleighPending)
    assert pending.total == 6 and 0 < pending.check() <= 6
    assert pending.wait(timeout=TIMEOUT) == list(range(6))
    assert pending.check() == 0 and pending.done == 6

    received = []
    assert sleigh.eachElem(abs, [-1, -2, -3], accumulator=received.extend, timeout=TIMEOUT) is None
    assert sorted(received) == [(0, 1), (1, 2), (2, 3)]

    class Summer:
        def __init__(self):
            self.total, self.errors = 0, []

        def result(self, pairs):
            self.total += sum(value for _, value in pairs)

        def error(self, pairs):
            self.errors.extend(tag for tag, _ in pairs)

        def value(self):
            return self.total

    summer = Summer()
    assert sleigh.eachElem(lambda x: 10 // x, [1, 2, 0, 5], accumulator=summer,
                           timeout=TIMEOUT) == 17
    assert summer.errors == [2]


def test_load_factor_caps_the_queue(sleigh):
    def slow(x):
        time.sleep(0.02)
        return x

    most = 0
    pending = sleigh.eachElem(slow, list(range(30)), loadFactor=1, blocking=False)
    while pending.check():
        queued = sleigh.nws.listVars(format="dict").get("task", (0, 0))[1]
        most = max(most, queued)
        time.sleep(0.003)
    assert pending.wait(timeout=TIMEOUT) == list(range(30))
    assert most <= 2  # loadFactor x workers: queued or running, never the whole batch


def test_progress_bar(sleigh, capsys):
    capsys.readouterr()
    assert sleigh.eachElem(abs, list(range(-20, 0)), progress=True,
                           timeout=TIMEOUT) == list(range(20, 0, -1))
    err = capsys.readouterr().err
    assert "20/20" in err and "abs" in err
    pending = sleigh.eachElem(abs, [-1, -2], blocking=False)
    assert pending.wait(timeout=TIMEOUT, progress=True) == [1, 2]
    assert (pending.done, pending.total) == (2, 2)


# ---------------------------------------------------------------------------- eachWorker, imap

def test_each_worker_runs_once_on_every_worker(sleigh):
    pids = sleigh.eachWorker(os.getpid, timeout=TIMEOUT)
    assert sorted(pids) == sorted(w["pid"] for w in sleigh.workerInfo())
    assert sleigh.eachWorker(lambda a, b: a + b, 1, 2, timeout=TIMEOUT) == [3, 3]
    # a broadcast task goes first even while shared tasks are queued
    pending = sleigh.eachElem(time.sleep, [0.05] * 10, blocking=False)
    assert sorted(sleigh.eachWorker(os.getpid, timeout=TIMEOUT)) == sorted(pids)
    pending.wait(timeout=TIMEOUT)


def test_imap_is_lazy_ordered_and_bounded(sleigh):
    produced = []

    def naturals():
        for n in itertools.count():
            produced.append(n)
            yield n

    results = sleigh.imap(lambda n: n * n, naturals(), loadFactor=2, timeout=TIMEOUT)
    assert isinstance(results, SleighResultIterator)
    assert list(itertools.islice(results, 25)) == [n * n for n in range(25)]
    window = 2 * 2
    assert results.returned == 25
    assert results.submitted <= 25 + window and len(produced) <= 25 + window + 1
    results.stop()
    assert results.stopped

    assert list(sleigh.starmap(pow, [(2, 3), (3, 2), (10, 0)], timeout=TIMEOUT)) == [8, 9, 1]
    assert list(sleigh.imap(lambda a, b: a - b, [5, 6, 7], [1, 1], timeout=TIMEOUT)) == [4, 5]
    mixed = list(sleigh.imap(lambda x: 1 // x, [1, 0, 1], timeout=TIMEOUT))
    assert mixed[0] == 1 and isinstance(mixed[1], RemoteError) and mixed[2] == 1


# ---------------------------------------------------------------------------- Executor

def test_submit_returns_futures(sleigh):
    future = sleigh.submit(pow, 2, 10)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=TIMEOUT) == 1024
    assert sleigh.submit(sorted, [3, 1, 2], reverse=True).result(timeout=TIMEOUT) == [3, 2, 1]
    futures = [sleigh.submit(lambda x: x * 2, i) for i in range(50)]
    done, _ = concurrent.futures.wait(futures, timeout=TIMEOUT)
    assert len(done) == 50
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == \
        [2 * i for i in range(50)]


def test_a_function_runs_with_what_it_captures_now_not_when_first_sent(sleigh):
    step = 1

    def add(x):
        return x + step

    assert sleigh.submit(add, 1).result(timeout=TIMEOUT) == 2
    step = 10
    assert sleigh.submit(add, 1).result(timeout=TIMEOUT) == 11
    box = [1]

    def read():
        return box[0]

    assert sleigh.submit(read).result(timeout=TIMEOUT) == 1
    box[0] = 5
    assert sleigh.submit(read).result(timeout=TIMEOUT) == 5
    namespace = {"__name__": "__main__", "k": 1}
    exec("def shifted(x):\n    return x + k\n", namespace)  # as a notebook defines it
    assert list(sleigh.map(namespace["shifted"], [1, 2], timeout=TIMEOUT)) == [2, 3]
    namespace["k"] = 100
    assert sleigh.submit(namespace["shifted"], 1).result(timeout=TIMEOUT) == 101


def test_a_failed_future_raises_remote_error(sleigh):
    def fails():
        raise KeyError("missing")

    future = sleigh.submit(fails)
    with pytest.raises(RemoteError) as info:
        future.result(timeout=TIMEOUT)
    assert isinstance(info.value.exception, KeyError)
    assert "raise KeyError" in info.value.remote_traceback
    assert isinstance(future.exception(), RemoteError)


def test_map(sleigh):
    assert list(sleigh.map(abs, [-1, -2, -3], timeout=TIMEOUT)) == [1, 2, 3]
    assert list(sleigh.map(pow, [2, 3], [5, 2], chunksize=2, timeout=TIMEOUT)) == [32, 9]
    # one iterable: each item is the one argument, a tuple too
    assert list(sleigh.map(len, [(1, 2), (3,), ()], chunksize=2, timeout=TIMEOUT)) == [2, 1, 0]
    assert list(sleigh.imap(len, iter([(1, 2), (3,)]), timeout=TIMEOUT)) == [2, 1]
    assert sleigh.eachElem(len, [[(1, 2), (3,)]], fixedArgs=[], timeout=TIMEOUT) == [2, 1]
    assert sleigh.eachElem(lambda a, b: (a, b), [[(1, 2), 3]], fixedArgs=[9],
                           argPermute=[1, 0], timeout=TIMEOUT) == [(9, (1, 2)), (9, 3)]
    results = sleigh.map(lambda x: 1 // x, [1, 0, 1], timeout=TIMEOUT)
    assert next(results) == 1
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        next(results)
    with pytest.raises(TimeoutError):
        list(sleigh.map(time.sleep, [2.0], timeout=0.2))


def test_map_hands_out_a_chunks_results_then_raises_at_its_failed_one(sleigh):
    def fails_at_15(x):
        if x == 15:
            raise ValueError("fifteen")
        return x

    results = sleigh.map(fails_at_15, range(30), chunksize=10, timeout=TIMEOUT)
    seen = []
    with pytest.raises(RemoteError, match="fifteen") as info:
        for value in results:
            seen.append(value)
    assert seen == list(range(15)) and info.value.tag == 15
    assert results.returned == 16


def test_next_and_loops_over_a_result_iterator_go_on_from_one_another(sleigh):
    results = sleigh.map(lambda x: x * 2, range(40), chunksize=10, timeout=TIMEOUT)
    assert [next(results), next(results)] == [0, 2]
    assert results.returned == 2
    assert list(itertools.islice(results, 3)) == [4, 6, 8]
    assert next(results) == 10 and results.returned == 6
    assert list(results) == [2 * x for x in range(6, 40)]
    assert results.returned == 40 and results.buffered == 0 and results.stopped
    assert list(results) == []
    with pytest.raises(StopIteration):
        next(results)


def test_a_caller_that_waits_at_once_takes_its_result_from_its_own_variable(broker,
                                                                           monkeypatch):
    """The record of a submit whose caller waits for it before the sender took it is stored
    by the caller, naming its thread's reply variable, where the worker stores the result
    and the caller takes it; a burst of submits goes through the sender and the collector."""
    from workbench.sleigh.scheduler import Scheduler

    filers = []
    file = Scheduler.file

    def recording(self, entry):
        filers.append(threading.current_thread().name)
        return file(self, entry)

    monkeypatch.setattr(Scheduler, "file", recording)
    with Sleigh(1, broker=broker.address) as s:
        for x in range(5):  # each waits for its result before the next
            assert s.submit(abs, -x).result(timeout=TIMEOUT) == x
        assert filers == ["MainThread"] * 5
        variables = s.nws.listVars(format="dict")
        reply = f"reply@{threading.get_ident()}"
        assert reply in variables and variables[reply][1] == 0  # taken, none left
        assert variables["result"][1] == 0
        futures = [s.submit(abs, -x) for x in range(50)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(50))


def test_a_result_given_up_by_a_timeout_still_reaches_the_future(broker):
    """A caller that stops waiting before its result is in hands its reply variable to the
    collector: the result still resolves the future, for ``wait`` and its callbacks."""
    with Sleigh(1, broker=broker.address) as s:
        future = s.submit(lambda: (time.sleep(0.5), "late")[1])
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.05)
        called = threading.Event()
        future.add_done_callback(lambda _: called.set())
        done, _ = concurrent.futures.wait([future], timeout=TIMEOUT)
        assert done == {future} and future.result() == "late"
        assert called.wait(TIMEOUT)
        # the variable stays watched: results waited for at once still come there
        assert [s.submit(abs, -x).result(timeout=TIMEOUT) for x in range(3)] == [0, 1, 2]


def test_a_submit_waited_for_in_another_thread(broker):
    with Sleigh(1, broker=broker.address) as s:
        future = s.submit(abs, -7)
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(future.result(timeout=TIMEOUT)))
        waiter.start()
        waiter.join(TIMEOUT)
        assert got == [7]


def test_with_statement_stops_every_worker(broker):
    with Sleigh(2, broker=broker.address) as s:
        pids = [w["pid"] for w in s.workerInfo()]
        name = s.wsName
        assert s.submit(abs, -5).result(timeout=TIMEOUT) == 5
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), timeout=5, message=f"worker {pid} still runs")
    with NwsServer(broker.host, broker.port) as server:
        assert name not in server.listWss(format="dict")
    with pytest.raises(RuntimeError):
        s.submit(abs, 1)
    with pytest.raises(SleighError):
        s.eachElem(abs, [1], timeout=TIMEOUT)


def test_leaving_the_with_block_waits_for_futures(broker):
    with Sleigh(1, broker=broker.address) as s:
        future = s.submit(lambda: (time.sleep(0.2), "late")[1])
    assert future.result(timeout=0) == "late"
    with pytest.raises(ZeroDivisionError):
        with Sleigh(1, broker=broker.address) as s:
            future = s.submit(time.sleep, 30)
            1 / 0
    assert future.cancelled()  # leaving by an exception gives up what is left


def test_shutdown_waits_for_futures(broker):
    s = Sleigh(1, broker=broker.address)
    futures = [s.submit(time.sleep, 0.05) for _ in range(3)]
    s.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in futures)
    assert s.state().stopped


def test_one_worker_per_cpu_by_default(broker, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with Sleigh(broker=broker.address) as s:
        assert s.workerCount == 1
        assert s.eachWorker(lambda: SleighWorkerCount, timeout=TIMEOUT) == [1]  # noqa: F821


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def test_a_worker_of_another_task_format_stops_the_sleigh_saying_why(broker):
    """A worker of another release reads no task record of this one: the sleigh stops with a
    message that says what to install, instead of losing every task it would take."""
    from workbench.sleigh.tasks import CONTROL, RESULT, TASK_FORMAT

    sleigh = Sleigh(1, broker=broker.address)
    try:
        assert sleigh.eachElem(abs, [-3]) == [3]
        info = {"rank": 9, "host": "elsewhere", "pid": 4242, "workbench": "0.0.1",
                "task_format": TASK_FORMAT - 1}
        sleigh.nws.store(RESULT, [(CONTROL, 9, info, "farewell@9.elsewhere")])

        def refused() -> str | None:
            try:
                sleigh.eachElem(abs, [-3])
            except SleighError as exc:
                return str(exc)
            return None

        reason = wait_for(refused, timeout=10, message="the sleigh ran on with the worker")
        assert f"task format {TASK_FORMAT - 1}" in reason
        assert "elsewhere" in reason and "install the same workbench release" in reason
    finally:
        sleigh.stop()


def test_a_task_the_broker_refuses_fails_its_future_and_the_pool_goes_on(make_broker):
    """The caller stores the task of a submit it waits for: what the broker refuses (its
    memory cap) fails that future with the broker's reason, as the sender's stores do."""
    from workbench import NwsMemoryException

    broker = make_broker("--max-memory", "256K")
    with Sleigh(1, broker=broker.address) as s:
        with pytest.raises(NwsMemoryException):
            s.submit(len, b"x" * (512 << 10)).result(timeout=TIMEOUT)
        assert s.submit(len, b"x" * 1000).result(timeout=TIMEOUT) == 1000
