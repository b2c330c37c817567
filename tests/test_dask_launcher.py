"""``Sleigh(launch=client)`` on a Dask cluster: a ``LocalCluster`` of worker processes, one
workbench worker per Dask worker, run as long-running Dask tasks (``launchers.dask``)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from workbench import Sleigh
from workbench.connection_file import read as read_connection_file
from workbench.sleigh.launchers import DaskLauncher, launcher_for
from workbench.zmtp import z85

from .support import start_broker, wait_for

distributed = pytest.importorskip("distributed")

DASK_WORKERS = 3
TIMEOUT = 30.0


def new_cluster():
    cluster = distributed.LocalCluster(n_workers=DASK_WORKERS, processes=True,
                                       threads_per_worker=1, dashboard_address=":0")
    return cluster, distributed.Client(cluster)


@pytest.fixture(scope="module")
def client():
    cluster, client = new_cluster()
    yield client
    client.close()
    cluster.close()


def ranked(x):
    time.sleep(0.005)  # long enough for every worker to take some
    return x * x, SleighRank  # noqa: F821 - set by the worker


def dask_worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def assert_cluster_healthy(client) -> None:
    """Every Dask worker is still there, none runs a task, and it computes."""
    wait_for(lambda: not any(client.processing().values()), TIMEOUT,
             message=f"Dask tasks left running: {client.processing()}")
    assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=TIMEOUT) == 6


def test_a_dask_client_picks_the_dask_launcher(client):
    launcher = launcher_for(client)
    assert isinstance(launcher, DaskLauncher)
    assert launcher.worker_count(None) == DASK_WORKERS
    assert launcher.worker_count(5) == 5
    with pytest.raises(ValueError, match="distributed.Client"):
        launcher_for(object())


def test_one_worker_per_dask_worker_maps_and_stops(broker, client):
    dask_pids = set(dask_worker_pids(client).values())
    launcher = DaskLauncher(client)
    with Sleigh(launch=launcher, broker=broker.address) as sleigh:
        assert sleigh.workerCount == DASK_WORKERS
        pids = [info["pid"] for info in sleigh.workerInfo()]
        assert {parent_pid(pid) for pid in pids} == dask_pids  # one on each Dask worker
        results = sleigh.eachElem(ranked, list(range(300)))
        assert [value for value, _ in results] == [x * x for x in range(300)]
        assert {rank for _, rank in results} == set(range(DASK_WORKERS))
        states = launcher.running()
        assert [(s.rank, s.state) for s in states] == [(r, "running") for r in range(3)]
        assert {s.pid for s in states} == set(pids)
    assert all(gone(pid) for pid in pids), "a workbench worker outlived stop()"
    assert {s.state for s in launcher.running()} == {"exited"}
    assert_cluster_healthy(client)


def test_curve_connection_never_on_a_command_line(tmp_path, client):
    curve = start_broker(tmp_path, "--curve")
    try:
        secret = z85.encode(read_connection_file(curve.connection_file).client_secret).encode()
        with Sleigh(launch=client, broker=curve.connection_file) as sleigh:
            assert sleigh.eachElem(abs, [-1, -2, -3] * 50) == [1, 2, 3] * 50
            pids = [info["pid"] for info in sleigh.workerInfo()]
            assert len(pids) == DASK_WORKERS
            watched = set(pids) | set(dask_worker_pids(client).values())
            for pid in watched:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    argv = cmdline.read().split(b"\0")
                assert secret not in b" ".join(argv)
                if pid in pids:
                    assert argv[argv.index(b"--broker") + 1] == b"-"
                    with open(f"/proc/{pid}/environ", "rb") as environ:
                        assert secret not in environ.read()
        wait_for(lambda: all(gone(pid) for pid in pids), TIMEOUT)
    finally:
        curve.stop()
    assert_cluster_healthy(client)


def test_a_killed_workbench_worker_is_replaced_on_its_dask_worker(broker, client):
    dask_pids = set(dask_worker_pids(client).values())
    launcher = DaskLauncher(client)
    with Sleigh(launch=launcher, broker=broker.address) as sleigh:
        victim = sleigh.workerInfo()[0]
        host_pid = parent_pid(victim["pid"])
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: (sleigh.workerInfo()[0]["pid"] != victim["pid"]
                          and launcher.running()[0].state == "running"), TIMEOUT,
                 message="no replacement joined")
        assert parent_pid(sleigh.workerInfo()[0]["pid"]) == host_pid
        assert launcher.running()[0].restarts == 1
        assert sleigh.state().deaths == 1
        assert sorted(sleigh.eachWorker(lambda: SleighRank)) == [0, 1, 2]  # noqa: F821
    assert set(dask_worker_pids(client).values()) == dask_pids
    assert_cluster_healthy(client)


def test_a_dask_worker_that_leaves_mid_map_loses_nothing(broker):
    cluster, client = new_cluster()
    try:
        arrived: Counter = Counter()

        def count(pairs):
            arrived.update(tag for tag, _ in pairs)

        with Sleigh(launch=client, broker=broker.address) as sleigh:
            infos = sleigh.workerInfo()
            victim = next(info for info in infos if info["rank"] == 0)
            by_pid = {pid: address for address, pid in dask_worker_pids(client).items()}
            address = by_pid[parent_pid(victim["pid"])]
            pending = sleigh.eachElem(lambda x: (time.sleep(0.02), x)[1], list(range(300)),
                                      blocking=False, accumulator=count)
            wait_for(lambda: pending.done >= 30, TIMEOUT)
            client.retire_workers([address])
            assert pending.wait(TIMEOUT) is None  # the accumulator took the results
            assert sorted(arrived) == list(range(300))
            assert set(arrived.values()) == {1}  # nothing twice
            wait_for(lambda: gone(victim["pid"]), TIMEOUT,
                     message="the worker of the retired Dask worker outlived it")
            assert sleigh.state().deaths == 1
        assert_cluster_healthy(client)
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == DASK_WORKERS - 1
    finally:
        client.close()
        cluster.close()


def test_a_dask_worker_that_joins_later_gets_a_worker_of_a_new_rank(broker):
    cluster, client = new_cluster()
    try:
        with Sleigh(launch=client, broker=broker.address) as sleigh:
            assert sleigh.workerCount == DASK_WORKERS
            before = set(dask_worker_pids(client).values())
            cluster.scale(DASK_WORKERS + 1)
            wait_for(lambda: sleigh.workerCount == DASK_WORKERS + 1, TIMEOUT,
                     message=f"no worker for the new Dask worker: {sleigh.workerInfo()}")
            (newcomer,) = [info for info in sleigh.workerInfo()
                           if parent_pid(info["pid"]) not in before]
            assert newcomer["rank"] == DASK_WORKERS
            assert sorted(sleigh.eachWorker(lambda: SleighRank)) == list(  # noqa: F821
                range(DASK_WORKERS + 1))
            results = sleigh.eachElem(ranked, list(range(400)))
            assert {rank for _, rank in results} == set(range(DASK_WORKERS + 1))
        assert_cluster_healthy(client)
    finally:
        client.close()
        cluster.close()
