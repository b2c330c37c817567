"""Binder: the environment ``binder/`` describes, built as Binder (repo2docker) builds it, runs
every notebook with the "Python 3 (workbench)" kernel.

The build happens in a fresh virtual environment made from a copy of the repository, using only
what ``binder/`` says: ``pip install -r binder/requirements.txt`` from the top of the repository,
then ``binder/postBuild``. The notebooks then run with ``jupyter nbconvert --execute`` from that
environment, with no broker running and none named: each kernel starts a private one on demand.
Jupyter's per-user directories point into the temporary directory, so only the environment's own
kernel specs count. Slow (a minute or two with pip's cache warm), so one test does it all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "workbench"
INSTALL_TIMEOUT = 240
NOTEBOOK_TIMEOUT = 180  # one notebook, start to end
CELL_TIMEOUT = 120

# what a clone of the repository would not hold: version control, environments, caches, builds
_NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".hypothesis", ".ruff_cache", ".benchmarks", ".ipynb_checkpoints", "results")


CHECKED = "# NBVAL_CHECK_OUTPUT"


def _stdout(cell: dict) -> str:
    return "".join("".join(output["text"]) for output in cell.get("outputs", [])
                   if output["output_type"] == "stream" and output["name"] == "stdout")


def _run(args: list, *, env: dict, cwd: Path, timeout: float,
         what: str) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run([str(a) for a in args], check=False, env=env, cwd=cwd,
                              timeout=timeout, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what}: no end within {timeout} s\n{exc.stdout or ''}\n{exc.stderr or ''}")
    if done.returncode != 0:
        pytest.fail(f"{what}: exit status {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def _environment(venv: Path, home: Path) -> dict:
    """The environment of a build step or a notebook: the virtualenv first on PATH, no trace of
    the test's own Python path, broker or Jupyter directories."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "JUPYTER", "WORKBENCH_", "PIP_REQUIRE", "CONDA"))
           and k not in ("VIRTUAL_ENV", "IPYTHONDIR", "PYTEST_CURRENT_TEST")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}",
        VIRTUAL_ENV=str(venv),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT + len(NOTEBOOKS) * NOTEBOOK_TIMEOUT + 60)
def test_binder_environment_runs_the_notebooks(tmp_path):
    assert NOTEBOOKS, "no notebooks to run"
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=_NOT_IN_A_CLONE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = _environment(venv, tmp_path / "jupyter")

    started = time.monotonic()
    _run([python, "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"],
         env=env, cwd=repo, timeout=INSTALL_TIMEOUT, what="pip install -r binder/requirements.txt")
    _run(["bash", "binder/postBuild"], env=env, cwd=repo,
         timeout=max(30.0, INSTALL_TIMEOUT - (time.monotonic() - started)),
         what="binder/postBuild")

    # the kernel is the environment's: its spec names the virtualenv's interpreter
    specs = json.loads(_run([venv / "bin" / "jupyter", "kernelspec", "list", "--json"],
                            env=env, cwd=repo, timeout=60,
                            what="jupyter kernelspec list").stdout)
    spec = specs["kernelspecs"].get(KERNEL)
    assert spec, f"no {KERNEL!r} kernel in the Binder environment: {sorted(specs['kernelspecs'])}"
    assert Path(spec["resource_dir"]).is_relative_to(venv), spec["resource_dir"]
    argv = spec["spec"]["argv"]
    assert Path(argv[0]).parent == python.parent, argv
    assert argv[-2:] == ["--ext", "workbench.jupyter"], argv
    # workbench comes from the environment, not from the copy of the source tree
    where = _run([python, "-c", "import workbench; print(workbench.__file__)"], env=env,
                 cwd=tmp_path, timeout=60, what="import workbench").stdout
    assert Path(where.strip()).is_relative_to(venv), where
    # JupyterLab opens without asking about news or updates: the settings it reads say so
    app_dir = _run([python, "-c", "from jupyterlab.commands import get_app_dir; "
                                  "print(get_app_dir())"], env=env, cwd=tmp_path, timeout=60,
                   what="JupyterLab's application directory").stdout.strip()
    overrides = json.loads((Path(app_dir) / "settings" / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"] == {
        "fetchNews": "false", "checkForUpdates": False}, overrides
    # the dashboards draw in JupyterLab: the widgets' front end is there
    extensions = _run([venv / "bin" / "jupyter", "labextension", "list"], env=env, cwd=repo,
                      timeout=60, what="jupyter labextension list")
    assert "@jupyter-widgets/jupyterlab-manager" in extensions.stdout + extensions.stderr

    # each notebook runs as Binder's JupyterLab would run it with the workbench kernel; a first
    # cell added to the copy checks that this is the kernel it runs in
    check = ("import os, sys\n"
             f"assert os.path.realpath(sys.prefix) == {os.path.realpath(venv)!r}, sys.prefix\n"
             "assert 'workbench.jupyter' in get_ipython().extension_manager.loaded\n"
             "assert 'WORKBENCH_BROKER' not in os.environ\n")
    out = tmp_path / "executed"
    for notebook in NOTEBOOKS:
        source = repo / "notebooks" / notebook.name
        nb = json.loads(source.read_text(encoding="utf-8"))
        nb["cells"].insert(0, {"cell_type": "code", "execution_count": None, "id": "binder-check",
                               "metadata": {}, "outputs": [], "source": check})
        source.write_text(json.dumps(nb), encoding="utf-8")
        _run([venv / "bin" / "jupyter", "nbconvert", "--to", "notebook", "--execute",
              f"--ExecutePreprocessor.kernel_name={KERNEL}",
              f"--ExecutePreprocessor.timeout={CELL_TIMEOUT}",
              "--output-dir", out, source],
             env=env, cwd=source.parent, timeout=NOTEBOOK_TIMEOUT,
             what=f"notebook {notebook.name} in the Binder environment")
        executed = json.loads((out / notebook.name).read_text(encoding="utf-8"))
        errors = [o for c in executed["cells"] for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{notebook.name}: {errors}"
        assert executed["cells"][0]["execution_count"] == 1
        # the same behaviour: what the checked cells print is what the saved notebook shows
        for saved, ran in zip(nb["cells"][1:], executed["cells"][1:]):
            if saved["cell_type"] == "code" and "".join(saved["source"]).startswith(CHECKED):
                assert _stdout(ran) == _stdout(saved), f"{notebook.name}: {saved['source']}"
