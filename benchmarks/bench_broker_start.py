"""Broker start: how long ``python -m workbench broker --port P`` takes until it answers.

Each run starts a fresh broker process and times, from just before the spawn, until a STATUS
request sent by a bare pyzmq DEALER (reconnecting every millisecond) is answered. Beside it, on
the same machine and in the same run: a bare interpreter (``python -c pass``), the import of
``workbench.broker.server`` alone, and the modules that import loads, which is what the broker's
start costs beyond the interpreter.

    python benchmarks/bench_broker_start.py [--runs N] [--quick] [--output JSON]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _harness import (
    HERE, Children, git_state, median, spread, time_broker_answers, write_json,
)

#: What the broker process imports, measured on its own.
IMPORT = "import workbench.broker.server"
#: Module families that the broker must not load (see the import test in tests/test_api.py).
FORBIDDEN = ("workbench.client", "workbench.sleigh", "workbench.jupyter", "cloudpickle",
             "IPython")


def time_process(argv: list[str]) -> float:
    """Seconds from spawn to exit of a short-lived process."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def time_broker_start(children: Children) -> float:
    """Seconds from spawning a broker until it answers a STATUS request."""
    elapsed, proc = time_broker_answers(children)
    children.stop(proc)
    return elapsed


def loaded_modules() -> list[str]:
    """The workbench modules, and any forbidden ones, that the broker's import loads."""
    code = (f"import sys; {IMPORT}; print('\\n'.join(sorted(m for m in sys.modules "
            f"if m.startswith({('workbench',) + FORBIDDEN!r}))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return out.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="starts to take the median of")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 runs")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "start-latest.json",
                        help="where to write the raw JSON (default %(default)s)")
    args = parser.parse_args(argv)
    runs = 2 if args.quick else max(1, args.runs)
    figures: dict[str, list[float]] = {"interpreter_ms": [], "import_ms": [], "answers_ms": []}
    with Children() as children:
        for _ in range(runs):  # interleaved, so drift hits all three alike
            figures["interpreter_ms"].append(1e3 * time_process([sys.executable, "-c", "pass"]))
            figures["import_ms"].append(1e3 * time_process([sys.executable, "-c", IMPORT]))
            figures["answers_ms"].append(1e3 * time_broker_start(children))
    modules = loaded_modules()
    forbidden = [m for m in modules if m.startswith(FORBIDDEN)]
    print(f"broker start, {len(figures['answers_ms'])} runs (median, min - max)")
    labels = {"interpreter_ms": "python -c pass", "import_ms": IMPORT,
              "answers_ms": "python -m workbench broker, until it answers"}
    for key, values in figures.items():
        low, high = spread(values)
        print(f"  {labels[key]:<46} {median(values):7.1f} ms   {low:.1f} - {high:.1f} ms")
    print(f"  modules the broker's import loads: {len(modules)} "
          f"({len(forbidden)} it must not: {', '.join(forbidden) or 'none'})")
    write_json(args.output, {"meta": git_state(), "runs": figures,
                             "medians": {k: median(v) for k, v in figures.items()},
                             "modules": modules, "forbidden": forbidden})
    print(f"raw results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
