"""A Sleigh whose workers are Slurm jobs (``Batch("slurm")`` through PSI/J) on the private
single-node Slurm of ``tests/slurm_node.py``: a map across them, a job ``scancel``ed mid-map,
a job of two workers, and no job left in ``squeue`` after ``stop()`` or the master's death. Root and Debian's slurm-wlm and munge only; skipped, saying why, otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench import Sleigh
from workbench.sleigh.launch import Batch
from workbench.sleigh.launchers import FAILED, QUEUED, RUNNING

from .support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_a_map_across_slurm_jobs_and_stop_leaves_no_job(slurm, broker, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf_path))  # PSI/J runs sbatch from here
    with Sleigh(2, launch=Batch("slurm", directory=str(tmp_path)), broker=broker.address,
                startTimeout=60) as sleigh:
        assert slurm.squeue(), "no job was submitted"
        assert sleigh.eachElem(abs, [-x for x in range(200)]) == list(range(200))
        jobs = dict(slurm.squeue())
    assert jobs
    wait_for(lambda: not any(slurm.squeue().get(job) in ("RUNNING", "PENDING")
                             for job in jobs), timeout=30,
             message=f"jobs left after stop(): {slurm.squeue()}")


def test_a_job_scancelled_mid_map_is_reported_and_its_tasks_run_elsewhere(slurm, broker,
                                                                           monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf_path))
    launcher = Batch("slurm", workers=2, wait=2, directory=str(tmp_path), poll_interval=1)
    with Sleigh(launch=launcher, broker=broker.address, startTimeout=60) as sleigh:
        job = sleigh.state().launched[1].pid

        def task(x):
            import time
            time.sleep(0.01)
            return x * 2

        pending = sleigh.eachElem(task, list(range(300)), blocking=False)
        slurm.run("scancel", str(job))
        assert pending.wait(60) == [x * 2 for x in range(300)]  # every result, once
        wait_for(lambda: sleigh.state().launched[1].state == FAILED, 30,
                 message=f"the cancel was not seen: {sleigh.state().launched}")
        survivor, cancelled = sleigh.state().launched
        assert f"batch job {job} of worker 1 canceled" in cancelled.failure
        assert survivor.state == RUNNING
        assert sleigh.eachElem(abs, [-1, -2]) == [1, 2]
        assert [info["rank"] for info in sleigh.workerInfo()] == [0]


def test_a_job_of_two_workers_asks_for_two_cores(slurm, broker, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf_path))
    launcher = Batch("slurm", workers=2, workers_per_job=2, wait=2, directory=str(tmp_path),
                     poll_interval=1)
    with Sleigh(launch=launcher, broker=broker.address, startTimeout=60) as sleigh:
        (job,) = slurm.squeue()
        shown = slurm.run("scontrol", "show", "job", job).stdout
        assert "NumCPUs=2" in shown and "NumTasks=1" in shown, shown
        assert f"JobName={sleigh.wsName}-0-1" in shown
        assert sorted(info["rank"] for info in sleigh.workerInfo()) == [0, 1]
        assert sleigh.eachWorker(lambda: 1) == [1, 1]
    wait_for(lambda: job not in slurm.squeue(), 30, message="the job outlived stop()")


def test_the_masters_death_cancels_its_queued_jobs(slurm, broker, tmp_path):
    """Jobs that may not start for an hour (``--begin``) are cancelled at once when the
    master is SIGKILLed."""
    master = subprocess.Popen(
        [sys.executable, "-c",
         "import time\n"
         "from workbench import Sleigh\n"
         "from workbench.sleigh.launch import Batch\n"
         "s = Sleigh(launch=Batch('slurm', workers=2, wait=0, job_extra={'begin': 'now+1hour'},"
         f" directory={str(tmp_path)!r}), broker={broker.address!r})\n"
         "print(s.wsName, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "SLURM_CONF": str(slurm.conf_path), "PYTHONPATH": str(Path.cwd())})
    try:
        assert master.stdout.readline().strip(), "the master did not start its sleigh"
        wait_for(lambda: list(slurm.squeue().values()) == ["PENDING"] * 2, 30,
                 message=f"the jobs are not pending: {slurm.squeue()}")
        master.kill()
        wait_for(lambda: slurm.squeue() == {}, 30,
                 message=f"jobs outlived their master: {slurm.squeue()}")
    finally:
        master.kill()
        master.wait(30)
        master.stdout.close()


def test_queued_jobs_are_shown_and_stop_cancels_them(slurm, broker, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf_path))
    launcher = Batch("slurm", workers=2, wait=0, job_extra={"begin": "now+1hour"},
                     directory=str(tmp_path), poll_interval=1)
    with Sleigh(launch=launcher, broker=broker.address) as sleigh:
        jobs = slurm.squeue()
        assert list(jobs.values()) == ["PENDING"] * 2
        wait_for(lambda: [w.state for w in sleigh.state().launched] == [QUEUED] * 2, 30)
        info = sleigh.workerInfo()
        assert [(w["rank"], w["state"], str(w["job"])) for w in info] == [
            (rank, "queued", job) for rank, job in enumerate(sorted(jobs, key=int))]
    wait_for(lambda: slurm.squeue() == {}, 30, message=f"jobs left: {slurm.squeue()}")
