"""Workers as batch jobs through PSI/J (``launch.Batch``), with PSI/J's ``local`` executor:
real processes submitted, watched and cancelled as a scheduler's jobs would be. A map across
three jobs; a CURVE broker's keys on no job's command line; the jobs' states in ``state()``;
``stop()`` cancelling every job; a job that fails or is killed reported once, with its reason.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

pytest.importorskip("psij", reason="the batch launcher needs psij-python (the cluster extra)")

from workbench import Sleigh  # noqa: E402
from workbench.connection_file import read as read_connection_file  # noqa: E402
from workbench.sleigh import SleighError  # noqa: E402
from workbench.sleigh.launch import Batch  # noqa: E402
from workbench.sleigh.launchers import (  # noqa: E402
    EXITED, FAILED, RUNNING, launcher_for,
)
from workbench.sleigh.launchers.batch import parse_walltime  # noqa: E402
from workbench.zmtp import z85  # noqa: E402

from .support import start_broker, wait_for  # noqa: E402

TIMEOUT = 30.0


def processes_of(sleigh_name: str, broker: str) -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every process whose command line names the sleigh and its broker (the
    other tests' sleighs have the same names on other brokers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if sleigh_name.encode() in argv and broker.encode() in argv:
            found.append((int(entry), argv))
    return found


def no_process_left(sleigh_name: str, broker: str) -> None:
    """Cancelled jobs end soon after the scheduler says so (PSI/J's local executor kills
    their processes in its next round)."""
    wait_for(lambda: processes_of(sleigh_name, broker) == [], TIMEOUT,
             message=f"processes of cancelled jobs remain: {processes_of(sleigh_name, broker)}")


def test_a_map_across_three_jobs_then_stop_cancels_them(broker, tmp_path):
    launcher = Batch("local", directory=tmp_path / "jobs", wait=3)
    with Sleigh(3, launch=launcher, broker=broker.address, startTimeout=TIMEOUT) as sleigh:
        assert sleigh.eachElem(lambda x: x * x, list(range(300))) == [x * x for x in range(300)]
        assert sorted(sleigh.map(abs, range(-50, 50), timeout=TIMEOUT)) == sorted(
            abs(x) for x in range(-50, 50))
        launched = sleigh.state().launched
        assert [w.rank for w in launched] == [0, 1, 2]
        assert all(w.state == RUNNING and w.pid for w in launched), launched
        workers = processes_of(sleigh.wsName, broker.address)
        assert {info["pid"] for info in sleigh.workerInfo()} <= {pid for pid, _ in workers}
        for pid, argv in workers:
            if b"worker" in argv:  # the worker, not the job's launch script
                assert argv[argv.index(b"--broker") + 1] == broker.address.encode()
        name = sleigh.wsName
    assert [w.state for w in sleigh.state().launched] == [EXITED] * 3
    no_process_left(name, broker.address)
    assert list((tmp_path / "jobs").iterdir()) == []  # the sleigh's job directory is gone


def test_a_curve_broker_reaches_the_jobs_through_a_private_file(tmp_path):
    curve = start_broker(tmp_path, "--curve", "--no-local-socket")
    try:
        secret = z85.encode(read_connection_file(curve.connection_file).client_secret).encode()
        jobs = tmp_path / "jobs"
        with Sleigh(2, launch=Batch("local", directory=jobs, wait=2),
                    broker=curve.connection_file, startTimeout=TIMEOUT) as sleigh:
            assert sleigh.eachElem(lambda x: -x, list(range(200))) == [-x for x in range(200)]
            (directory,) = jobs.iterdir()
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            connection = directory / "connection.json"
            assert stat.S_IMODE(connection.stat().st_mode) == 0o600
            workers = processes_of(sleigh.wsName, str(connection))
            assert len(workers) >= 2
            for pid, argv in workers:
                assert secret not in b" ".join(argv)
                if b"worker" in argv:
                    assert argv[argv.index(b"--broker") + 1] == str(connection).encode()
            name = sleigh.wsName
        assert not directory.exists()
        no_process_left(name, str(connection))
    finally:
        curve.stop()


def test_stop_cancels_queued_and_running_jobs(broker, tmp_path):
    """A job whose worker never joins (its Python only sleeps, keeping the worker's
    arguments) is cancelled by stop()."""
    sleeper = tmp_path / "sleeper"
    sleeper.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(600)' "
                       '"$@"\n')
    sleeper.chmod(0o755)
    launcher = Batch("local", workers=2, python=str(sleeper), directory=tmp_path / "jobs",
                     wait=0)
    sleigh = Sleigh(launch=launcher, broker=broker.address, startTimeout=TIMEOUT)
    try:
        name = sleigh.wsName
        wait_for(lambda: len(processes_of(name, broker.address)) >= 2, TIMEOUT,
                 message="jobs did not start")
        assert [w.state for w in sleigh.state().launched] == ["starting"] * 2
    finally:
        sleigh.stop()
    assert [w.state for w in sleigh.state().launched] == [EXITED] * 2
    no_process_left(name, broker.address)


def test_a_job_that_fails_at_start_is_reported_with_its_reason(broker, tmp_path, caplog):
    launcher = Batch("local", python=str(tmp_path / "no-such-python"),
                     directory=tmp_path / "jobs")
    with caplog.at_level(logging.WARNING, logger="workbench.sleigh"):
        with pytest.raises(SleighError, match=r"batch job \d+ of worker \d failed: exit code"
                                              r"(.|\n)*no-such-python"):
            Sleigh(2, launch=launcher, broker=broker.address, startTimeout=TIMEOUT)
    states = launcher.running()
    assert [w.state for w in states] == [FAILED] * 2
    assert all("no-such-python" in w.failure for w in states)
    for rank in (0, 1):
        reports = [r for r in caplog.records
                   if r.getMessage().startswith(f"worker {rank} ") and " died " in r.getMessage()]
        assert len(reports) == 1, reports


def test_one_job_failing_at_start_leaves_the_others_to_start_the_pool(broker, tmp_path,
                                                                       caplog):
    """An elastic pool waiting for one worker starts on the job that runs, and reports the
    one that failed (as a node that cannot run the job would make it)."""
    python = tmp_path / "python-but-not-rank-0"
    python.write_text("#!/bin/sh\n"
                      'case " $* " in *" --rank 0 "*) echo "no python on this node" >&2; '
                      "exit 3;; esac\n"
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    launcher = Batch("local", workers=2, python=str(python), directory=tmp_path / "jobs")
    with caplog.at_level(logging.WARNING, logger="workbench.sleigh"):
        with Sleigh(launch=launcher, broker=broker.address, startTimeout=TIMEOUT) as sleigh:
            assert sleigh.eachElem(abs, [-1, -2, -3]) == [1, 2, 3]
            wait_for(lambda: sleigh.state().launched[0].state == FAILED, TIMEOUT)
            (rank0, rank1) = sleigh.state().launched
            assert "exit code 3" in rank0.failure
            assert "no python on this node" in rank0.failure
            assert rank1.state == RUNNING
    died = [r for r in caplog.records
            if r.getMessage().startswith("worker 0 ") and " died " in r.getMessage()]
    assert len(died) == 1, caplog.records


def test_a_job_killed_mid_map_is_reported_once_and_its_tasks_run_elsewhere(broker, tmp_path,
                                                                           caplog):
    launcher = Batch("local", directory=tmp_path / "jobs", wait=2)
    with Sleigh(2, launch=launcher, broker=broker.address, startTimeout=TIMEOUT) as sleigh:
        victim = next(info for info in sleigh.workerInfo() if info["rank"] == 1)

        def task(x):
            import time
            time.sleep(0.01)
            return x + 1

        with caplog.at_level(logging.WARNING, logger="workbench.sleigh"):
            pending = sleigh.eachElem(task, list(range(200)), blocking=False)
            os.kill(victim["pid"], signal.SIGKILL)  # as scancel would end it
            assert pending.wait(TIMEOUT) == [x + 1 for x in range(200)]
            wait_for(lambda: sleigh.state().launched[1].state == FAILED, TIMEOUT)
        (rank0, rank1) = sleigh.state().launched
        assert rank0.state == RUNNING
        assert "batch job" in rank1.failure and "failed" in rank1.failure
        died = [r for r in caplog.records if r.getMessage().startswith("worker 1 (pid")
                and " died " in r.getMessage()]
        assert len(died) == 1, caplog.records
        assert sleigh.eachElem(task, [1, 2, 3]) == [2, 3, 4]  # the survivor still works


def test_jobs_of_several_workers_share_out_the_ranks_and_replace_a_killed_worker(broker,
                                                                                  tmp_path):
    """workers=3, workers_per_job=2: a job of ranks 0-1 (one ``workbench worker --workers 2``)
    and a job of rank 2; a worker killed inside a job is started again with its rank, and
    the map it was part of loses and repeats nothing."""
    launcher = Batch("local", workers=3, workers_per_job=2, directory=tmp_path / "jobs",
                     wait=3)
    with Sleigh(launch=launcher, broker=broker.address, startTimeout=TIMEOUT) as sleigh:
        launched = sleigh.state().launched
        assert [w.rank for w in launched] == [0, 1, 2]
        assert all(w.state == RUNNING for w in launched), launched
        assert launched[0].pid == launched[1].pid != launched[2].pid  # two jobs
        groups = [argv for _, argv in processes_of(sleigh.wsName, broker.address)
                  if argv[1:4] == [b"-m", b"workbench", b"worker"] and b"--workers" in argv]
        assert [argv[argv.index(b"--workers") + 1] for argv in groups] == [b"2"]
        pids = {info["rank"]: info["pid"] for info in sleigh.workerInfo()}
        assert len(set(pids.values())) == 3

        def task(x):
            import time
            time.sleep(0.005)
            return x * 3

        pending = sleigh.eachElem(task, list(range(400)), blocking=False)
        os.kill(pids[1], signal.SIGKILL)
        assert pending.wait(TIMEOUT) == [x * 3 for x in range(400)]

        def rank_1_again() -> bool:
            now = {info["rank"]: info["pid"] for info in sleigh.workerInfo()}
            return now.get(1) not in (None, pids[1])

        wait_for(rank_1_again, TIMEOUT, message="rank 1 was not started again")
        assert [w.state for w in sleigh.state().launched] == [RUNNING] * 3
        assert sleigh.eachWorker(lambda: 1) == [1, 1, 1]
        name = sleigh.wsName
    no_process_left(name, broker.address)


def test_the_masters_death_cancels_its_queued_and_running_jobs(broker, tmp_path):
    """SIGKILL leaves the master no chance to cancel; the reaper beside it does. The jobs'
    Python only sleeps (keeping the worker's arguments), so only a cancel ends them."""
    sleeper = tmp_path / "sleeper"
    sleeper.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(600)' "
                       '"$@"\n')
    sleeper.chmod(0o755)
    master = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from workbench import Sleigh\n"
         "from workbench.sleigh.launch import Batch\n"
         f"s = Sleigh(launch=Batch('local', workers=2, python={str(sleeper)!r}, wait=0,"
         f" directory={str(tmp_path / 'jobs')!r}), broker={broker.address!r})\n"
         "print(s.wsName, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        name = master.stdout.readline().strip()
        assert name, "the master did not start its sleigh"
        wait_for(lambda: len(processes_of(name, broker.address)) >= 2, TIMEOUT,
                 message="jobs did not start")
        master.kill()
        master.wait(TIMEOUT)
        no_process_left(name, broker.address)
    finally:
        master.kill()
        master.wait(TIMEOUT)
        master.stdout.close()


def test_a_stopped_sleigh_leaves_no_reaper(broker, tmp_path):
    def reapers() -> list:
        return [child for child in psutil.Process().children()
                if any("launchers.reaper" in arg for arg in child.cmdline())]

    launcher = Batch("local", workers=1, directory=tmp_path / "jobs")
    with Sleigh(launch=launcher, broker=broker.address, startTimeout=TIMEOUT) as sleigh:
        assert len(reapers()) == 1
        assert sleigh.eachElem(abs, [-1]) == [1]
    assert reapers() == []  # stop() waits for it


def test_scheduler_names_mean_batch_launchers():
    assert not isinstance(launcher_for("local"), Batch)  # processes here, as before
    for name in ("slurm", "pbs", "lsf"):  # flux needs flux's own Python bindings
        launcher = launcher_for(name, python="/opt/python3", env={"A": "1"})
        assert isinstance(launcher, Batch) and launcher.scheduler == name
        assert launcher.python == "/opt/python3" and launcher.env["A"] == "1"
    with pytest.raises(ValueError, match="slurm"):
        launcher_for("nonsense")
    with pytest.raises(ValueError, match="PSI/J has no executor"):
        Batch("no-such-scheduler")
    with pytest.raises(ValueError, match="workers_per_job must be 1 or more"):
        Batch("local", workers_per_job=0)


def test_job_options_reach_the_job_spec():
    launcher = Batch("local", walltime="01:30:00", queue="debug", account="proj",
                     job_extra={"constraint": "haswell", "slurm.qos": "low"})
    assert launcher.duration == timedelta(hours=1, minutes=30)
    assert launcher.job_extra == {"local.constraint": "haswell", "slurm.qos": "low"}
    torque = Batch("pbs_classic", job_extra={"l": "nodes=1:ppn=4"})  # PSI/J reads "pbs.l"
    assert torque.job_extra == {"pbs.l": "nodes=1:ppn=4"}
    assert parse_walltime("2-00:00:10") == timedelta(days=2, seconds=10)
    assert parse_walltime("10:00") == timedelta(minutes=10)
    assert parse_walltime(5) == timedelta(seconds=5)
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime("half an hour")


def test_importing_the_sleigh_does_not_import_psij():
    code = "import sys, workbench.sleigh, workbench.sleigh.launch; print('psij' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert result.stdout.strip() == "False", result.stderr
