"""A sleigh on a broker with a data directory finishes its map across the broker's restart
(SIGKILL, then a new broker on the same directory and port): every result exactly once, the
same workers going on in new sessions, and the sleigh usable afterwards."""

from __future__ import annotations

import signal

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
