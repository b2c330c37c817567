"""The private single-node Slurm the batch-launcher tests run on (``tests/slurm_node.py``): jobs
run to completion, ``scancel`` ends a running job and its processes, and ``stop()`` leaves no
daemon, slurmstepd or job process behind. Root and Debian's slurm-wlm and munge only; skipped,
saying which is missing, otherwise.
"""

from __future__ import annotations

import os
import shutil

import pytest

from .slurm_node import SlurmNode, is_running, slurm_conf, unavailable_reason
from .support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TIMEOUT = 20.0
HARDWARE = ("NodeName=node1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 "
            "RealMemory=4000")


def test_the_configuration_names_this_node_and_its_private_files(tmp_path):
    conf = slurm_conf(tmp_path, "/tmp/munge-x/socket", HARDWARE, 6817, 6818)
    assert "SlurmctldHost=node1(127.0.0.1)" in conf
    assert "SlurmctldPort=6817" in conf and "SlurmdPort=6818" in conf
    assert "AuthInfo=socket=/tmp/munge-x/socket" in conf
    assert f"StateSaveLocation={tmp_path}/state" in conf
    assert ("NodeName=node1 NodeAddr=127.0.0.1 CPUs=2 Boards=1 SocketsPerBoard=1 "
            "CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN") in conf
    assert "config_overrides" not in conf


def test_more_cpus_than_the_machine_has_keep_the_node_in_service(tmp_path):
    conf = slurm_conf(tmp_path, "/tmp/munge-x/socket", HARDWARE, 6817, 6818, cpus=8)
    assert "NodeName=node1 NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN" in conf
    assert "SlurmdParameters=config_overrides" in conf


def test_without_root_the_reason_says_so(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in unavailable_reason()


def test_without_the_programs_the_reason_names_them_and_the_packages(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    reason = unavailable_reason()
    assert "munged, slurmctld, slurmd, sbatch" in reason
    assert "slurm-wlm and munge" in reason


def test_a_batch_job_runs_to_completion(slurm, tmp_path):
    output = tmp_path / "hi.out"
    job = slurm.sbatch(f"--output={output}", "--wrap", "echo hi")
    wait_for(lambda: job not in slurm.squeue() and output.exists(), TIMEOUT,
             message=f"job {job} did not finish:\n{slurm.logs()}")
    assert output.read_text() == "hi\n"


def test_scancel_ends_a_running_job_and_its_processes(slurm):
    daemons = set(slurm.processes())
    job = slurm.sbatch("--wrap", "sleep 300")
    wait_for(lambda: slurm.squeue().get(job) == "RUNNING", TIMEOUT,
             message=f"job {job} did not start:\n{slurm.logs()}")
    slurm.run("scancel", job)
    wait_for(lambda: job not in slurm.squeue(), TIMEOUT, message=f"job {job} still queued")
    wait_for(lambda: set(slurm.processes()) == daemons, TIMEOUT,
             message="the cancelled job's processes are still running")


def test_stop_leaves_no_process_of_the_node(tmp_path):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    node = SlurmNode.start(tmp_path)
    try:
        job = node.sbatch("--wrap", "sleep 300")
        wait_for(lambda: node.squeue().get(job) == "RUNNING", TIMEOUT,
                 message=f"job {job} did not start:\n{node.logs()}")
        # munged, slurmctld, slurmd, the job's slurmstepd and sleep: squeue says RUNNING a
        # moment before slurmstepd has started the job's own process
        started = wait_for(lambda: found if len(found := node.processes()) >= 5 else None,
                           TIMEOUT, message=f"the job's processes did not show:\n{node.logs()}")
    finally:
        killed = node.stop()
    assert killed == []  # all ended through scancel and the daemons' SIGTERM
    assert [pid for pid in started if is_running(pid)] == []
    assert node.processes() == []
    assert not node.munge_dir.exists()
