"""A first session with the workbench, on the embedded broker.

A master stores tasks in a workspace; two worker processes fetch them (each task goes to exactly
one worker), compute, and store results; the master collects them. Nothing needs to be started by
hand: the first NetWorkSpace starts a private broker, and the workers find it through the
environment.
"""

from __future__ import annotations

import subprocess
import sys
import time

from workbench import NetWorkSpace

WORKER = """
import os, time
from workbench import NetWorkSpace
ws = NetWorkSpace("demo", useUse=True)          # use it, never own it
ws.store("ready", os.getpid())
while (task := ws.fetch("task")) is not None:    # blocks until a task exists
    time.sleep(0.01)                             # the "work"
    ws.store("result", (task, task * task, os.getpid()))
"""


def main() -> None:
    started = time.perf_counter()
    ws = NetWorkSpace("demo")  # finds a broker, or starts one for this process
    print(f"workspace {ws.currentWs()!r} on {ws.server.address} "
          f"({time.perf_counter() - started:.2f} s to connect)")

    workers = [subprocess.Popen([sys.executable, "-c", WORKER]) for _ in range(2)]
    print("workers ready:", [ws.fetch("ready", timeout=30) for _ in workers])
    for n in range(20):
        ws.store("task", n)
    print("\nwhile the workers run:\n" + ws.listVars())

    results = sorted(ws.fetch("result", timeout=30) for _ in range(20))
    for _ in workers:
        ws.store("task", None)  # one stop signal per worker
    for worker in workers:
        worker.wait(timeout=30)

    by_worker: dict[int, int] = {}
    for _, _, pid in results:
        by_worker[pid] = by_worker.get(pid, 0) + 1
    print("\nsquares:", [square for _, square, _ in results])
    print("tasks per worker process:", by_worker)
    print("\nworkspaces on the broker:\n" + ws.server.listWss())
    ws.close()


if __name__ == "__main__":
    main()
