"""The benchmark still runs against the current client and broker (a smoke test: it asserts
that every case produced its figures, never how fast they are)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_workspace.py"


@pytest.mark.timeout(240)
def test_quick_benchmark_runs_and_reports_every_case(tmp_path):
    output = tmp_path / "result.json"
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--output", str(output)],
                            capture_output=True, text=True, timeout=230)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    saved = json.loads(output.read_text())
    medians = saved["medians"]
    for figure in ("wb.rt_same.store_per_s", "wb.rt_split.fetch_per_s", "wb.handoff.median_us",
                   "wb.clients.total_per_s", "wb.big.rt_s", "echo.rt_same.rt_per_s",
                   "relay.handoff.median_us"):
        assert medians[figure] > 0, figure
    assert "store rt/s vs echo rt/s" in result.stdout
    assert saved["meta"]["broker_log_problems"] == []
