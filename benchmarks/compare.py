"""Measure two commits of the workbench side by side in one run: did a change make it slower?

    python benchmarks/compare.py HEAD~1 benchmarks/bench_workspace.py --runs 5 --only rt_same

The benchmark script of this checkout measures both trees, so the method is the same for both;
only the workbench it imports (``PYTHONPATH``) differs: a temporary worktree of the older commit,
and this checkout. Runs alternate between the two, each a ``--runs 1`` invocation of the script,
and the order flips from run to run, so drift of the machine hits both alike. The table gives,
for every figure, the median over runs of each tree and the median of the per-run ratios,
oriented so that above 1 means the newer tree is faster. The anchors' figures (Redis,
memcached, ...) are in it too: they did not change, so how far their ratios stray from 1 is the
noise of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import format_table, median, series, spread

ROOT = Path(__file__).resolve().parent.parent


def lower_is_better(figure: str) -> bool:
    """Latencies (``_us``) and times (no unit suffix: seconds) fall when things get faster."""
    return not (figure.endswith("_per_s") or figure.endswith("_x"))


def build_extensions(tree: Path) -> None:
    """Build a tree's compiled parts in place (``setup.py``), as this checkout's were by its
    install: without them the older tree would run its Python path against this one's compiled
    code, or, imported through this checkout's editable install, borrow this one's."""
    if (tree / "setup.py").exists():
        subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
                       cwd=tree, check=True, capture_output=True)


def one_run(script: Path, tree: Path, output: Path, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, str(script), "--runs", "1", "--output", str(output),
                           *extra], env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script.name} failed on {tree}:\n{done.stdout}{done.stderr}")
    return json.loads(output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the older commit (any git revision)")
    parser.add_argument("script", type=Path, help="a benchmark script of this folder")
    parser.add_argument("--runs", type=int, default=5, help="runs of each tree (default 5)")
    parser.add_argument("--only", action="append", default=[], metavar="GROUP",
                        help="passed on to the script (repeatable)")
    parser.add_argument("--quick", action="store_true", help="passed on to the script")
    args = parser.parse_args()
    extra = [flag for group in args.only for flag in ("--only", group)]
    extra += ["--quick"] if args.quick else []
    script = args.script.resolve()

    with tempfile.TemporaryDirectory(prefix="wb-compare-") as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                        str(base_tree), args.base], check=True)
        try:
            build_extensions(base_tree)
            trees = {"base": base_tree, "head": ROOT}
            runs: dict[str, list[dict]] = {"base": [], "head": []}
            for run in range(args.runs):
                for name in (["base", "head"] if run % 2 == 0 else ["head", "base"]):
                    print(f"run {run + 1}/{args.runs}: {name}", flush=True)
                    result = one_run(script, trees[name], Path(scratch) / f"{name}.json", extra)
                    runs[name].extend(result["runs"])
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base_tree)], check=False)

    base, head = series(runs["base"]), series(runs["head"])
    rows = []
    for figure in sorted(set(base) & set(head)):
        pairs = list(zip(base[figure], head[figure]))
        speedups = [(b / h if lower_is_better(figure) else h / b) for b, h in pairs if b and h]
        if not speedups:
            continue
        low, high = spread(speedups)
        rows.append([figure, f"{median(base[figure]):,.4g}", f"{median(head[figure]):,.4g}",
                     f"{median(speedups):.3f}x ({low:.2f}-{high:.2f})"])
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\n{script.name}: {args.base} (base) against {commit} (head), {args.runs} runs each")
    print(format_table(["figure", "base", "head", "head speed-up: median (range)"], rows))


if __name__ == "__main__":
    main()
