"""Cancel a sleigh's batch jobs when its master dies, however it dies.

``stop()``, the end of a ``with`` block and the interpreter's exit cancel the jobs from inside
the master; a SIGKILL, the OOM killer or a crashed kernel leave no chance to. So ``Batch`` starts
this small process beside the master (in a session of its own: a Ctrl-C meant for the master
does not reach it) and writes it the id of every job it submits, one per line, on a pipe that
only the master holds. When the pipe ends without the line ``done`` (the master closed it
without a clean stop: it died), the reaper cancels every job it was told of through PSI/J and
exits. A job that ended meanwhile is skipped (the scheduler says it is unknown). Running
workers would leave by themselves once the master's session ends; queued jobs would wait in the
queue, perhaps for hours, only to find no sleigh.

    python -c "from workbench.sleigh.launchers.reaper import main; main(['SCHEDULER'])"
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import IO

#: The line a cleanly stopping master writes last.
DONE = "done"
#: How long the reaper waits for cancelled jobs to end before it exits (seconds).
CANCEL_PATIENCE = 5.0
#: How long a cleanly stopping master waits for the reaper to exit (seconds).
FINISH_TIMEOUT = 5.0
#: How often it asks the scheduler meanwhile (seconds).
LIST_INTERVAL = 0.2


def start(scheduler: str, python: str = sys.executable) -> subprocess.Popen:
    """Start a reaper for jobs of ``scheduler``; write job ids to its ``stdin``."""
    # -c, not -m: the package imports this module before runpy would run it as __main__
    code = f"import sys; from {__name__} import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([python, "-c", code, scheduler], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True, text=True)


def tell(reaper: subprocess.Popen, line: str) -> None:
    """Write ``line`` to the reaper; if it is gone, the jobs lose only this safety net."""
    try:
        reaper.stdin.write(line + "\n")
        reaper.stdin.flush()
    except (OSError, ValueError):
        pass


def finish(reaper: subprocess.Popen, timeout: float = FINISH_TIMEOUT) -> None:
    """The master stops cleanly: tell the reaper so (it cancels nothing) and wait for it to
    exit; one that does not within ``timeout`` (it never should) is killed."""
    tell(reaper, DONE)
    try:
        reaper.stdin.close()
    except OSError:  # it is gone already
        pass
    try:
        reaper.wait(timeout)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def read_jobs(lines: IO[str]) -> list[str] | None:
    """The job ids read until the pipe ends -> None if the master said ``done``."""
    jobs = []
    for line in lines:
        line = line.strip()
        if line == DONE:
            return None
        if line:
            jobs.append(line)
    return jobs


def cancel(scheduler: str, native_ids: list[str], patience: float = CANCEL_PATIENCE) -> None:
    """Cancel the jobs, then wait (at most ``patience`` seconds) until the scheduler no longer
    lists them: PSI/J's local executor kills in a thread of its own, which must get to run
    before this process ends."""
    import psij

    executor = psij.JobExecutor.get_instance(scheduler)
    cancelled = []
    for native_id in native_ids:
        job = psij.Job()
        try:
            executor.attach(job, native_id)
            job.cancel()
        except Exception as exc:  # ended meanwhile: nothing to cancel
            print(f"workbench: batch job {native_id} not cancelled: {exc}", file=sys.stderr)
            continue
        print(f"workbench: cancelled batch job {native_id}: the sleigh's master died",
              file=sys.stderr)
        cancelled.append(job)
    deadline = time.monotonic() + patience
    while cancelled and time.monotonic() < deadline:
        try:
            known = set(executor.list())
        except Exception:  # a scheduler that cannot list (no login name): trust the cancel
            return
        cancelled = [job for job in cancelled if job.native_id in known]
        time.sleep(LIST_INTERVAL)


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the master's terminal going is not our end
    (scheduler,) = argv
    jobs = read_jobs(sys.stdin)
    if jobs:
        cancel(scheduler, jobs)
    return 0

