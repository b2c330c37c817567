"""A hundred workers on one broker: every worker takes some of 20,000 tiny tasks, ten of them
are SIGKILLed at once mid-map and every result still arrives exactly once, and ``stop()``
leaves no worker process behind."""

from __future__ import annotations

import os
import signal

import pytest

from workbench import Sleigh

from .support import wait_for
from .task_functions import tagged
from .test_sleigh import _alive

WORKERS = 100
TASKS = 20_000
KILLED = 10


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_hundred_workers_share_the_work_and_lose_nothing_when_ten_die(make_broker):
    # The default heartbeats: the test brokers' 0.6 s of silence is shorter than the stalls of
    # a hundred processes starting on two cores.
    broker = make_broker("--heartbeat-interval", "1", "--heartbeat-liveness", "3")
    with Sleigh(WORKERS, broker=broker.address, startTimeout=120) as sleigh:
        pids = [info["pid"] for info in sleigh.workerInfo()]
        assert len(pids) == WORKERS
        results = []
        victims: list[int] = []
        for result in sleigh.imap(tagged, range(TASKS), timeout=60):
            results.append(result)
            if len(results) == TASKS // 4:  # a quarter in: ten workers die at once
                victims = pids[:KILLED]
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
        assert [x for x, _ in results] == list(range(TASKS))  # each once, in order
        ranks = {rank for _, rank in results}
        assert ranks == set(range(WORKERS)), f"{WORKERS - len(ranks)} workers took nothing"
        assert sleigh.state().deaths >= KILLED
        everyone = [info["pid"] for info in sleigh.workerInfo()] + pids
    wait_for(lambda: not any(_alive(pid) for pid in everyone), timeout=30,
             message="a worker outlived stop()")
