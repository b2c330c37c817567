"""A Sleigh whose workers are Slurm jobs (``Batch("slurm")`` through PSI/J) on the private
single-node Slurm of ``tests/slurm_node.py``: a map across them, and ``stop()`` leaving no job
in ``squeue``. Root and Debian's slurm-wlm and munge only; skipped, saying why, otherwise."""

from __future__ import annotations

import pytest

from workbench import Sleigh
from workbench.sleigh.launch import Batch

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
