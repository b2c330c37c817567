"""The "Python 3 (workbench)" kernel: ``workbench kernel install`` writes its spec, and a kernel
started from that spec has the workbench extension loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.jupyter.kernelspec import DISPLAY_NAME, kernel_spec

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0


def install(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", "kernel", "install", *args],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A Jupyter data directory (standing for the user's) with the kernel installed."""
    path = tmp_path_factory.mktemp("jupyter-data")
    result = install("--user", env=dict(os.environ, JUPYTER_DATA_DIR=str(path)))
    assert result.returncode == 0, result.stderr
    assert "Installed kernel workbench" in result.stdout
    return path


def test_install_user_writes_the_spec_with_this_python(data_dir):
    spec = json.loads((data_dir / "kernels" / "workbench" / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-m", "ipykernel_launcher", "-f",
                            "{connection_file}", "--ext", "workbench.jupyter"]
    assert spec["display_name"] == DISPLAY_NAME == "Python 3 (workbench)"
    assert spec["language"] == "python"


def test_install_under_a_prefix_with_a_name(tmp_path):
    result = install("--prefix", str(tmp_path), "--name", "wb-test", "--display-name", "WB")
    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / "wb-test" /
                       "kernel.json").read_text())
    assert spec["display_name"] == "WB"
    refused = install("--user", "--sys-prefix",
                      env=dict(os.environ, JUPYTER_DATA_DIR=str(tmp_path)))
    assert refused.returncode == 2 and "not allowed with" in refused.stderr  # one place only


def test_the_spec_in_the_source_tree_is_the_generated_one():
    spec = json.loads((ROOT / "kernels" / "workbench" / "kernel.json").read_text())
    assert spec == kernel_spec("python")


def test_a_kernel_from_the_spec_has_the_magics(data_dir, monkeypatch):
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data_dir))
    manager, client = start_new_kernel(kernel_name="workbench", startup_timeout=TIMEOUT)
    try:
        out: list[str] = []

        def collect(message: dict) -> None:
            if message["msg_type"] == "stream":
                out.append(message["content"]["text"])

        reply = client.execute_interactive(
            "print(sorted(get_ipython().extension_manager.loaded))\n%nws store --help",
            timeout=TIMEOUT, output_hook=collect)
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    text = "".join(out)
    assert "'workbench.jupyter'" in text.splitlines()[0]
    assert "usage: %nws store" in text
