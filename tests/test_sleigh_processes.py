"""The worker pool when processes die, are interrupted or come from elsewhere: SIGKILL of a
worker mid-task, a task that kills every worker it runs on, a master killed by SIGKILL, Ctrl-C
and Future.cancel, the ssh and callable launchers, and ``workbench worker`` joining by hand.

Each test has a sleigh of its own; the tasks report to a side workspace (``ran``) so a test
sees what ran where, and when.
"""

from __future__ import annotations

import _thread
import logging
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from workbench import NwsServer, RemoteError, Sleigh
from workbench.sleigh import PoisonTaskError, SleighError
from workbench.sleigh.launchers import (
    UNWATCHED, Launcher, SleighInfo, SshLauncher, WorkerState, worker_argv,
)

from .support import spawn_client, wait_for
from .test_sleigh import _alive

TIMEOUT = 20.0


@pytest.fixture
def side(broker, ws_name):
    """A workspace where tasks report, and the address they reach it by."""
    server = NwsServer(broker.host, broker.port)
    ws = server.openWs(ws_name)
    yield ws
    server.close()


def reporter(ws_name: str, address: str):
    """A function that stores (tag, pid) into ``ran`` of the side workspace, by value."""
    def report(tag):
        from workbench import NetWorkSpace

        space = NetWorkSpace(ws_name, serverHost=address.split("//")[1].split(":")[0],
                             serverPort=int(address.rsplit(":", 1)[1]), useUse=True)
        space.store("ran", (tag, os.getpid()))
        space.close()
    return report


def ran(ws) -> list:
    return list(ws.ifindTry("ran"))


def slow_reporter(side, broker):
    """A task that reports it started, then sleeps 30 s (unless interrupted)."""
    report = reporter(side.currentWs(), broker.address)

    def slow(x):
        report(x)
        time.sleep(30)
        return x
    return slow


def control_c() -> None:
    """What Ctrl-C in a terminal does: SIGINT to the main thread."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


# ---------------------------------------------------------------------------- dying workers

def test_a_worker_killed_mid_task_is_replaced_and_its_task_runs_again(make_broker, side,
                                                                     caplog):
    # Heartbeats slow enough that the broker alone would notice the death only after 10 s:
    # the result within a few seconds shows the master's report of the death.
    broker = make_broker("--heartbeat-interval", "1", "--heartbeat-liveness", "10")
    server = NwsServer(broker.host, broker.port)
    report_ws = server.openWs("side")
    report = reporter("side", broker.address)

    def task(x):
        report(x)
        time.sleep(0.6 if x == 0 else 0.05)
        return x * 10

    caplog.set_level(logging.WARNING, logger="workbench.sleigh")
    s = Sleigh(2, broker=broker.address)
    try:
        pending = s.eachElem(task, list(range(6)), blocking=False, chunkSize=1)
        [pid] = wait_for(lambda: [pid for tag, pid in ran(report_ws) if tag == 0],
                         timeout=TIMEOUT)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert pending.wait(timeout=TIMEOUT) == [x * 10 for x in range(6)]
        assert time.monotonic() - killed_at < 5.0  # not the broker's 10 s: reported at once
        runs = [tag for tag, _ in ran(report_ws)]
        assert runs.count(0) == 2  # task 0 ran twice: killed, then again
        assert all(runs.count(x) == 1 for x in range(1, 6))
        message = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
        assert message and f"(pid {pid}) died with signal 9; started a replacement" in message[0]
        wait_for(lambda: pid not in [w["pid"] for w in s.workerInfo()], timeout=10)
        assert s.state().workers == 2 and s.state().deaths == 1
        assert sorted(s.eachWorker(lambda: SleighRank, timeout=TIMEOUT)) == [0, 1]  # noqa: F821 - same rank back
    finally:
        s.stop()
        server.close()


def test_a_submit_whose_worker_is_killed_while_its_caller_waits_runs_again(broker, side):
    """The caller waits on its own reply variable; the record goes back with the death of its
    worker, still naming that variable, and the next worker answers there."""
    report = reporter(side.currentWs(), broker.address)

    def task(x):
        report(x)
        time.sleep(0.5)
        return x * 10

    s = Sleigh(2, broker=broker.address)
    try:
        def kill_the_first_runner() -> None:
            [pid] = wait_for(lambda: [pid for _, pid in ran(side)], timeout=TIMEOUT)
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_the_first_runner)
        killer.start()
        assert s.submit(task, 4).result(timeout=TIMEOUT) == 40
        killer.join(TIMEOUT)
        assert [tag for tag, _ in ran(side)] == [4, 4]  # killed, then again
    finally:
        s.stop()


def test_results_arrive_exactly_once(broker, side):
    """Every element's result is counted once although workers are killed while they hold
    tasks (some of whose results were already sent)."""
    report = reporter(side.currentWs(), broker.address)

    def task(x):
        report(x)
        time.sleep(0.01)
        return x

    s = Sleigh(2, broker=broker.address)
    try:
        pending = s.eachElem(task, list(range(200)), blocking=False, chunkSize=1)
        killed: set[int] = set()

        def rank0():
            return next((w["pid"] for w in s.workerInfo()
                         if w["rank"] == 0 and w["pid"] not in killed), None)

        for round in (1, 2):
            wait_for(lambda least=40 * round: len(ran(side)) > least, timeout=TIMEOUT)
            pid = wait_for(rank0, timeout=TIMEOUT)  # the replacement, the second time
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        results = pending.wait(timeout=TIMEOUT)
        assert results == list(range(200)) and pending.done == 200
        runs = [tag for tag, _ in ran(side)]
        assert set(runs) == set(range(200))
        reruns = len(runs) - 200  # tasks whose worker died holding them
        status = s.state()
        assert status.deaths == 2 and 0 <= status.duplicates <= reruns
    finally:
        s.stop()


def test_a_hand_that_turns_out_slow_is_given_back_and_runs_once_everywhere(broker, side):
    """After tiny tasks, a worker takes a big hand; when the next call's tasks are slow, what
    it has not started goes back to the queue for the idle worker, each element running
    exactly once."""
    report = reporter(side.currentWs(), broker.address)

    def slow(x):
        report(x)
        time.sleep(0.05)
        return x, SleighRank  # noqa: F821 - set in every worker

    s = Sleigh(2, broker=broker.address)
    try:
        for _ in range(3):  # tiny tasks: the workers learn to take many records at once
            assert s.eachElem(abs, list(range(-2000, 0)), timeout=TIMEOUT)[0] == 2000
        # one record of all 16 elements: only a give-back lets the other worker help
        results = s.eachElem(slow, list(range(16)), chunkSize=16, timeout=TIMEOUT)
        assert [x for x, _ in results] == list(range(16))
        assert {rank for _, rank in results} == {0, 1}
        assert sorted(tag for tag, _ in ran(side)) == list(range(16))  # each ran once
        assert s.state().duplicates == 0
    finally:
        s.stop()


def nap(x):
    time.sleep(0.0005)
    return x, SleighRank  # noqa: F821 - set in every worker


def test_the_records_of_a_new_call_are_dealt_to_the_idle_workers(broker):
    """Workers that learnt to take several records of about half a millisecond at once, both
    idle when a call of four comes: each takes a share (the broker deals them), rather than
    the first to ask taking them all while the other idles."""
    s = Sleigh(2, broker=broker.address)
    try:
        for _ in range(3):  # the workers learn the pace: a hand of several records
            s.eachElem(nap, list(range(40)), chunkSize=1, timeout=TIMEOUT)
        for _ in range(3):
            results = s.eachElem(nap, list(range(4)), chunkSize=1, timeout=TIMEOUT)
            assert [x for x, _ in results] == list(range(4))
            assert {rank for _, rank in results} == {0, 1}
            assert s.state().duplicates == 0
    finally:
        s.stop()


def test_a_dealt_hand_runs_whole(broker):
    """Both workers idle as a call of eight half-millisecond records comes: the broker deals
    them four and four, and neither gives any back. (At the pace they learnt, four such
    records would be worth sharing had one worker taken every record queued.) Each record is
    stored once: by the master."""
    s = Sleigh(2, broker=broker.address)
    try:
        for _ in range(3):  # the workers learn a pace of 0.5 ms: hands of ten records
            s.eachElem(nap, list(range(40)), chunkSize=1, timeout=TIMEOUT)
        wait_for(lambda: s.nws.listVars(format="dict")["task"][2] == 2, 10.0,
                 message="both workers waiting for tasks")
        stored = 0
        with s.nws.watch() as watch:
            results = s.eachElem(nap, list(range(8)), chunkSize=1, timeout=TIMEOUT)
            while True:  # what the call stored is in before its results: drain until quiet
                try:
                    batch = watch.next_batch(timeout=0.5)
                except queue.Empty:
                    break
                stored += sum(event["count"] for event in batch
                              if event["event"] == "stored" and event.get("var") == "task")
        assert [x for x, _ in results] == list(range(8))
        assert {rank for _, rank in results} == {0, 1}
        assert stored == 8
    finally:
        s.stop()


def test_a_hand_that_took_every_queued_record_is_shared_with_a_worker_that_comes_free(broker):
    """The other worker is busy (5 ms) when a call's six records come, so one worker takes
    them all (nothing to deal). At the pace it learnt they are worth sharing: it gives the
    second half back before it starts, and the other runs it once free. Kept, they would all
    run on the first worker (6 x 3 ms, short of a give-back's deadline)."""
    def stretch(x):
        time.sleep(0.003 if x >= 0 else 0.005)
        return x, SleighRank  # noqa: F821 - set in every worker

    s = Sleigh(2, broker=broker.address)
    try:
        for _ in range(3):
            for _ in range(3):  # the workers learn a pace of 0.5 ms: hands of ten records
                s.eachElem(nap, list(range(40)), chunkSize=1, timeout=TIMEOUT)
            busy = s.eachElem(stretch, [-1], blocking=False)  # one record: one worker
            results = s.eachElem(stretch, list(range(6)), chunkSize=1, timeout=TIMEOUT)
            assert [x for x, _ in results] == list(range(6))
            assert {rank for _, rank in results} == {0, 1}
            assert busy.wait(timeout=TIMEOUT)[0][0] == -1
            assert s.state().duplicates == 0
    finally:
        s.stop()


def test_a_task_that_kills_its_worker_three_times_is_not_run_again(broker, side, caplog):
    report = reporter(side.currentWs(), broker.address)

    def fragile(x):
        if x == 2:
            report(x)
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    caplog.set_level(logging.WARNING, logger="workbench.sleigh")
    s = Sleigh(2, broker=broker.address)
    try:
        results = s.eachElem(fragile, list(range(5)), timeout=TIMEOUT)
        assert results[:2] == [0, 1] and results[3:] == [3, 4]
        error = results[2]
        assert isinstance(error, PoisonTaskError) and isinstance(error, RemoteError)
        assert "task 2 of" in str(error) and "fragile(2) killed its worker 3 times" in str(error)
        assert len(ran(side)) == 3
        assert s.state().deaths == 3
        assert len([r for r in caplog.records if "died with signal 9" in r.getMessage()]) == 3
        assert s.eachElem(abs, [-1, -2], timeout=TIMEOUT) == [1, 2]  # and the pool still works
    finally:
        s.stop()


def test_a_chunk_with_a_deadly_element_is_split_so_the_others_survive(broker):
    def fragile(x):
        if x == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        return -x

    s = Sleigh(2, broker=broker.address)
    try:
        results = s.eachElem(fragile, list(range(12)), chunkSize=6, timeout=TIMEOUT)
        assert [r for i, r in enumerate(results) if i != 7] == [-x for x in range(12) if x != 7]
        assert isinstance(results[7], PoisonTaskError)
    finally:
        s.stop()


def test_a_killed_master_leaves_no_worker(broker):
    """Its own workers die with it (the kernel kills them); a worker that joined by hand
    leaves when the broker purges the master's workspace."""
    master = spawn_client(broker, (
        "import os, sys, time\n"
        "from workbench import Sleigh\n"
        f"s = Sleigh(2, broker={broker.address!r})\n"
        "print(s.wsName, *(w['pid'] for w in s.workerInfo()), flush=True)\n"
        "time.sleep(60)\n"))
    joined = None
    try:
        name, *pids = master.stdout.readline().split()
        pids = [int(pid) for pid in pids]
        assert len(pids) == 2, master.stderr.read()
        joined = subprocess.Popen([sys.executable, "-m", "workbench", "worker", "--broker",
                                   broker.address, "--sleigh", name], env=broker.env(),
                                  stdin=subprocess.DEVNULL)
        with NwsServer(broker.host, broker.port) as server:
            space = server.useWs(name)
            assert space.find("worker@2", timeout=TIMEOUT)["pid"] == joined.pid
        assert all(_alive(pid) for pid in pids)
        master.kill()
        master.wait(5)
        for pid in pids:
            wait_for(lambda pid=pid: not _alive(pid), timeout=5,
                     message=f"worker {pid} outlived")
        assert joined.wait(10) == 0
    finally:
        for process in (master, joined):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        master.stdout.close()
        master.stderr.close()


# ---------------------------------------------------------------------------- interrupting

def test_ctrl_c_cancels_queued_tasks_and_interrupts_running_ones(broker, side):
    slow = slow_reporter(side, broker)
    s = Sleigh(2, broker=broker.address)
    try:
        timer = threading.Thread(
            target=lambda: (wait_for(lambda: len(ran(side)) >= 2, timeout=TIMEOUT),
                            _thread.interrupt_main()), daemon=True)  # as IPython's interrupt
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            s.eachElem(slow, list(range(6)), chunkSize=1, timeout=TIMEOUT)
        assert time.monotonic() - started < 10
        # both workers were interrupted: quick work gets through at once
        assert s.eachElem(abs, [-1, -2, -3], timeout=5) == [1, 2, 3]
        time.sleep(0.2)  # nothing may start in this time: the queued four were cancelled
        assert len(ran(side)) == 2  # the queued four never ran
        # Ctrl-C while waiting on a future cancels its task too
        future = s.submit(slow, 10)
        wait_for(lambda: len(ran(side)) == 3, timeout=TIMEOUT)
        threading.Timer(0.2, control_c).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=TIMEOUT)
        assert time.monotonic() - started < 5
        assert future.cancelled()
        assert s.submit(abs, -4).result(timeout=5) == 4
    finally:
        s.stop()


def test_ctrl_c_while_the_caller_waits_on_its_own_variable_cancels_and_loses_nothing(
        broker, side):
    """A caller that waits at once stores its task and waits on its reply variable: Ctrl-C
    (as a flag, IPython's way) is seen within a slice, cancels the future and interrupts the
    task, and the next round trip gets its own result, not a leftover."""
    slow = slow_reporter(side, broker)
    s = Sleigh(1, broker=broker.address)
    try:
        interrupter = threading.Thread(
            target=lambda: (wait_for(lambda: len(ran(side)) >= 1, timeout=TIMEOUT),
                            _thread.interrupt_main()), daemon=True)
        interrupter.start()
        future = s.submit(slow, 1)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=TIMEOUT)
        assert time.monotonic() - started < 5
        assert future.cancelled()
        assert f"reply@{threading.get_ident()}" in s.nws.listVars(format="dict")
        assert [s.submit(abs, -x).result(timeout=5) for x in range(3)] == [0, 1, 2]
    finally:
        s.stop()


def test_future_cancel_skips_queued_work_and_interrupts_running_work(broker, side):
    slow = slow_reporter(side, broker)
    s = Sleigh(2, broker=broker.address)
    try:
        running = [s.submit(slow, 0), s.submit(slow, 1)]
        wait_for(lambda: len(ran(side)) == 2, timeout=TIMEOUT)
        queued = s.submit(slow, 2)
        assert queued.cancel() and queued.cancelled()
        assert all(f.cancel() for f in running)
        started = time.monotonic()
        assert s.submit(abs, -7).result(timeout=5) == 7
        assert time.monotonic() - started < 5
        time.sleep(0.2)  # nothing may start in this time: task 2 was cancelled
        assert sorted(tag for tag, _ in ran(side)) == [0, 1]  # task 2 never started
    finally:
        s.stop()


def test_stop_ends_workers_busy_with_long_tasks(broker):
    s = Sleigh(2, broker=broker.address)
    pids = [w["pid"] for w in s.workerInfo()]
    s.eachElem(time.sleep, [30, 30], blocking=False)
    # both workers busy: both tasks sent, and neither left in the queue
    wait_for(lambda: s.state().outstanding == 2
             and s.nws.listVars(format="dict").get("task", (0, 0))[1] == 0, timeout=TIMEOUT)
    waiting = s.eachElem(time.sleep, [30], blocking=False)
    started = time.monotonic()
    s.stop()
    assert time.monotonic() - started < 1.5  # interrupted, they left without being killed
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(SleighError):
        waiting.wait(timeout=1)


# ---------------------------------------------------------------------------- launchers

def test_ssh_launcher_builds_the_command():
    launcher = SshLauncher(["n1", "n2"])
    sleigh = SleighInfo("sleigh_ride_0001", "tcp://head:8765")
    assert launcher.argv(sleigh, 0) == ["ssh", "n1", ("python -m workbench worker --broker "
                                                      "tcp://head:8765 --sleigh "
                                                      "sleigh_ride_0001 --rank 0")]
    assert launcher.argv(sleigh, 3)[1] == "n2"
    with pytest.raises(ValueError):
        SshLauncher([])


def test_ssh_launch_with_a_fake_ssh(broker, tmp_path, monkeypatch):
    log = tmp_path / "ssh.log"
    fake = tmp_path / "ssh"
    fake.write_text('#!/bin/sh\nhost="$1"; shift\necho "$host $*" >> "$FAKE_SSH_LOG"\n'
                    'exec /bin/sh -c "$*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    with Sleigh(launch="ssh", nodeList=["nodeA", "nodeB"], broker=broker.address,
                python=sys.executable) as s:
        assert s.workerCount == 2
        assert s.eachWorker(lambda: SleighRank, timeout=TIMEOUT) == [0, 1]  # noqa: F821
        name = s.wsName
    lines = sorted(log.read_text().splitlines())
    assert lines == [f"node{host} {sys.executable} -m workbench worker --broker {broker.address} "
                     f"--sleigh {name} --rank {rank}" for rank, host in enumerate("AB")]


def test_a_callable_launcher(broker):
    calls = []

    def launch(argv, rank):
        calls.append((argv, rank))
        return subprocess.Popen(argv, env=broker.env(), stdin=subprocess.DEVNULL)

    with Sleigh(2, launch=launch, broker=broker.address) as s:
        assert s.eachElem(abs, [-1, -2], timeout=TIMEOUT) == [1, 2]
        name = s.wsName
    assert [rank for _, rank in calls] == [0, 1]
    argv = calls[0][0]
    assert argv[1:4] == ["-m", "workbench", "worker"]
    assert argv[argv.index("--sleigh") + 1] == name and argv[argv.index("--rank") + 1] == "0"


class JobLauncher:
    """A launcher in a module of its own, as a cluster scheduler's would be: it submits each
    worker as a job, reports what it runs, and replaces nothing."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.jobs: list[subprocess.Popen] = []
        self.stopped = False

    def start(self, sleigh, count):
        self.jobs = [subprocess.Popen(worker_argv(sleigh.broker, sleigh.name, rank),
                                      env=self.env, stdin=subprocess.DEVNULL)
                     for rank in range(count)]
        return self.running()

    def running(self):
        return [WorkerState(rank, UNWATCHED, job.pid, 0) for rank, job in enumerate(self.jobs)]

    def stop(self):
        for job in self.jobs:
            job.wait(10)  # they leave by themselves once the sleigh's workspace is gone
        self.stopped = True


def test_a_launcher_object_starts_the_workers_and_an_unwatched_one_leaves(make_broker):
    broker = make_broker("--heartbeat-interval", "0.2", "--heartbeat-liveness", "3")
    launcher = JobLauncher(broker.env())
    assert isinstance(launcher, Launcher)
    with Sleigh(2, launch=launcher, broker=broker.address) as s:
        assert s.eachWorker(os.getpid, timeout=TIMEOUT) == [job.pid for job in launcher.jobs]
        launcher.jobs[1].kill()
        wait_for(lambda: s.state().ranks == [0], timeout=TIMEOUT)  # nobody replaces it
        assert s.state().deaths == 0
        assert s.eachWorker(os.getpid, timeout=TIMEOUT) == [launcher.jobs[0].pid]
    assert launcher.stopped
    assert launcher.jobs[0].returncode == 0 and launcher.jobs[1].returncode == -signal.SIGKILL


def test_workers_that_never_join_give_a_clear_error(broker):
    started = time.monotonic()
    with pytest.raises(SleighError, match="only 0 of 1 workers joined"):
        Sleigh(1, launch=lambda argv, rank: None, broker=broker.address, startTimeout=0.5)
    assert time.monotonic() - started < 5

    def broken(argv, rank):
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                                stdout=subprocess.DEVNULL)

    with pytest.raises(SleighError, match="exited with status 3 3 times before joining"):
        Sleigh(1, launch=broken, broker=broker.address, startTimeout=TIMEOUT)


def test_workbench_worker_joins_a_running_sleigh(broker):
    s = Sleigh(workerCount=0, broker=broker.address)
    worker = subprocess.Popen([sys.executable, "-m", "workbench", "worker", "--broker",
                               broker.address, "--sleigh", s.wsName], env=broker.env(),
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert s.eachElem(lambda x: (x, SleighRank), [5, 6], timeout=TIMEOUT) == \
            [(5, 0), (6, 0)]  # noqa: F821
        assert [w["rank"] for w in s.workerInfo()] == [0]
        assert s.workerInfo()[0]["pid"] == worker.pid
        assert s.nws.find("workerCount") == 1
    finally:
        s.stop()
    assert worker.wait(10) == 0  # it left by itself when the sleigh ended
    worker.stderr.close()


def test_a_joined_worker_that_dies_leaves_the_roster(make_broker):
    """Nobody watches a worker that joined by hand: when it is killed, the broker ends its
    session once its heartbeats stop, and the sleigh takes it off the roster. An eachWorker
    waiting for it returns the live workers' results then, not at its timeout."""
    broker = make_broker("--heartbeat-interval", "0.2", "--heartbeat-liveness", "3")
    s = Sleigh(1, broker=broker.address)
    joined = subprocess.Popen([sys.executable, "-m", "workbench", "worker", "--broker",
                               broker.address, "--sleigh", s.wsName], env=broker.env(),
                              stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: s.state().ranks == [0, 1], timeout=TIMEOUT)
        assert s.eachWorker(lambda: SleighRank, timeout=TIMEOUT) == [0, 1]  # noqa: F821
        launched = s.workerInfo()[0]["pid"]
        joined.kill()
        joined.wait(5)
        started = time.monotonic()
        assert s.eachWorker(os.getpid, timeout=60) == [launched]  # rank 1 is left out
        assert time.monotonic() - started < 10  # the broker's 0.6 s, not the call's 60 s
        assert s.state().ranks == [0] and [w["rank"] for w in s.workerInfo()] == [0]
        assert s.state().deaths == 0  # a departure, not a launched worker's death
        assert s.eachWorker(os.getpid, timeout=TIMEOUT) == [launched]
        assert s.nws.find("workerCount") == 1
    finally:
        s.stop()
        if joined.poll() is None:
            joined.kill()
            joined.wait()


def test_workbench_worker_on_a_missing_sleigh(broker):
    done = subprocess.run([sys.executable, "-m", "workbench", "worker", "--broker",
                           broker.address, "--sleigh", "no_such_sleigh"], env=broker.env(),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "no sleigh 'no_such_sleigh'" in done.stderr


def test_workers_on_the_brokers_machine_run_a_step_nicer(broker, monkeypatch):
    """With as many busy workers as cores, the broker and the master get the CPU first: the
    workers that reach the broker through its Unix socket add a step of niceness to what they
    started with (``WORKBENCH_WORKER_NICE``; 0 adds none)."""
    mine = os.nice(0)
    s = Sleigh(2, broker=broker.address)
    try:
        assert s.eachWorker(os.nice, 0, timeout=TIMEOUT) == [min(19, mine + 1)] * 2
    finally:
        s.stop()
    monkeypatch.setenv("WORKBENCH_WORKER_NICE", "0")
    s = Sleigh(1, broker=broker.address)
    try:
        assert s.eachWorker(os.nice, 0, timeout=TIMEOUT) == [mine]
    finally:
        s.stop()
