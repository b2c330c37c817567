"""A sleigh on a broker with a data directory finishes its map across the broker's restart
(SIGKILL, then a new broker on the same directory and port): every result exactly once, the
same workers going on in new sessions, and the sleigh usable afterwards."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from workbench import Sleigh

from .support import start_broker, wait_for

pytestmark = pytest.mark.timeout(120)


def slow_square(x: int) -> int:
    import time

    time.sleep(0.01)
    return x * x


@pytest.mark.parametrize("how", ["eachElem", "imap"])
def test_a_map_finishes_across_a_restart_of_a_durable_broker(tmp_path, how) -> None:
    data = tmp_path / "data"
    broker = start_broker(tmp_path, "--data-dir", str(data), "--fsync", "always")
    sleigh = Sleigh(workerCount=2, nwsHost=broker.host, nwsPort=broker.port)
    try:
        pids = sorted(info["pid"] for info in sleigh.workerInfo())
        if how == "eachElem":
            pending = sleigh.eachElem(slow_square, range(400), chunkSize=1, blocking=False)
            wait_for(lambda: pending.check() < 300, timeout=30)  # under way
            results = pending.wait
        else:  # fed a window at a time: feeding goes on across the restart
            results_in = sleigh.imap(slow_square, range(400), loadFactor=2)
            first = [next(results_in) for _ in range(100)]

            def results(timeout: float) -> list:
                return first + list(results_in)
        broker.process.send_signal(signal.SIGKILL)
        broker.process.wait(10)
        broker.stop()
        broker = start_broker(tmp_path, "--data-dir", str(data), "--fsync", "always",
                              "--port", str(broker.port))
        assert results(timeout=60) == [x * x for x in range(400)]
        assert sorted(info["pid"] for info in sleigh.workerInfo()) == pids  # the same workers
        assert sleigh.eachElem(slow_square, range(10)) == [x * x for x in range(10)]
    finally:
        sleigh.stop()
        broker.stop()


def test_a_submit_waited_for_gets_its_result_across_a_restart(tmp_path) -> None:
    """The caller waits on its own reply variable when the broker goes away: the collector
    takes that variable over in its new session, and the task, back in the queue, runs again
    and answers there."""
    data = tmp_path / "data"
    brokers = [start_broker(tmp_path, "--data-dir", str(data), "--fsync", "always")]
    sleigh = Sleigh(workerCount=1, nwsHost=brokers[0].host, nwsPort=brokers[0].port)

    def restart() -> None:
        time.sleep(0.3)  # the task runs, its caller waits
        old = brokers[0]
        old.process.send_signal(signal.SIGKILL)
        old.process.wait(10)
        old.stop()
        brokers.append(start_broker(tmp_path, "--data-dir", str(data), "--fsync", "always",
                                    "--port", str(old.port)))

    try:
        assert sleigh.submit(slow_square, 3).result(timeout=30) == 9
        future = sleigh.submit(sleepy_square, 4)
        restarter = threading.Thread(target=restart)
        restarter.start()
        assert future.result(timeout=60) == 16
        restarter.join(30)
        assert sleigh.submit(slow_square, 5).result(timeout=30) == 25
    finally:
        sleigh.stop()
        for broker in brokers:
            broker.stop()


def sleepy_square(x: int) -> int:
    import time

    time.sleep(1.0)
    return x * x
