# The two commands of the README: `make lab` (JupyterLab on the notebooks) and `make test`;
# `make demo` is the same work in a terminal. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup lab demo test test-binder test-lowest bench clean

setup: $(VENV)/.installed

# (the compiled parts are built in place by the editable install: see setup.py)
$(VENV)/.installed: pyproject.toml setup.py $(wildcard workbench/*.c workbench/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

# JupyterLab, the widgets and the "Python 3 (workbench)" kernel in the virtualenv; new
# notebooks get that kernel. The notebooks need no broker: the first workspace starts one.
# binder/overrides.json: JupyterLab asks about news and updates neither here nor on Binder.
$(VENV)/.jupyter: pyproject.toml binder/overrides.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[jupyter]"
	$(BIN)/workbench kernel install --sys-prefix
	install -D -m 644 binder/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

lab: $(VENV)/.jupyter
	$(BIN)/jupyter lab --MultiKernelManager.default_kernel_name=workbench \
		$(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

demo: setup
	$(BIN)/python examples/demo.py

# Binder's environment is built apart (`make test-binder`, which CI runs too): a fresh
# virtualenv with JupyterLab takes a minute or two of pip alone, a sixth of the suite's time.
test: setup
	$(BIN)/python -m pytest --ignore=tests/test_binder.py

test-binder: setup
	$(BIN)/python -m pytest tests/test_binder.py

# The suite's core on the lowest versions pyproject.toml allows for the direct dependencies
# (uv's lowest-direct resolution), so a floor that no longer works is caught. Left out: the
# browser, Binder and documentation builds, which exercise the newest front-end tool chain.
# It runs on the Python path alone (WORKBENCH_PURE_PYTHON=1: none of the compiled parts of
# workbench/accel.py), so that path stays tested; `make test` runs with them. (--seed: pip,
# which tests/test_accel.py builds a wheel with.)
LOWEST ?= .venv-lowest
test-lowest: setup
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv venv --quiet --seed --allow-existing --python $(BIN)/python $(LOWEST)
	VIRTUAL_ENV=$(LOWEST) $(BIN)/uv pip install --quiet --resolution lowest-direct -e ".[test]"
	WORKBENCH_PURE_PYTHON=1 $(LOWEST)/bin/python -m pytest --ignore=tests/test_browser.py \
		--ignore=tests/test_binder.py --ignore=tests/test_docs.py

bench: setup
	bash benchmarks/install-anchors.sh
	$(BIN)/python benchmarks/bench_workspace.py
	$(BIN)/python benchmarks/bench_kv.py
	$(BIN)/python benchmarks/bench_pubsub.py
	$(BIN)/python benchmarks/bench_sleigh.py
	$(BIN)/python benchmarks/bench_curve.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_broker_start.py
	$(BIN)/python benchmarks/bench_durable.py
	$(BIN)/python benchmarks/bench_web.py
	$(BIN)/python benchmarks/bench_shards.py

clean:
	rm -rf $(VENV) $(LOWEST) build *.egg-info .pytest_cache
