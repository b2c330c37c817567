"""What importing and starting the broker loads: nothing of the client, the worker pool, the
notebook layer, cloudpickle or IPython. The broker never unpickles and knows no notebook, and each
module it loads costs every embedded broker's start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support import start_broker

FORBIDDEN = ("workbench.client", "workbench.sleigh", "workbench.jupyter", "cloudpickle",
             "IPython")


def forbidden(modules) -> list[str]:
    return sorted(m for m in modules
                  if any(m == family or m.startswith(family + ".") for family in FORBIDDEN))


@pytest.mark.parametrize("module", ["workbench.broker", "workbench.broker.server"])
def test_importing_the_broker_loads_no_client(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert forbidden(json.loads(result.stdout)) == []


def test_starting_the_broker_loads_no_client(tmp_path, monkeypatch):
    # Python then logs every import to stderr, which the broker writes to its log.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    broker = start_broker(tmp_path)
    try:
        lines = [line for line in broker.log().splitlines() if line.startswith("import time:")]
    finally:
        broker.stop()
    imported = [line.rsplit("|", 1)[1].strip() for line in lines[1:]]  # after the header
    assert "workbench.broker.server" in imported
    assert forbidden(imported) == []
