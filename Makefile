# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

demo: setup
	$(BIN)/python examples/demo.py

test: setup
	$(BIN)/python -m pytest

bench: setup
	bash benchmarks/install-anchors.sh
	$(BIN)/python benchmarks/bench_workspace.py
	$(BIN)/python benchmarks/bench_kv.py
	$(BIN)/python benchmarks/bench_pubsub.py
	$(BIN)/python benchmarks/bench_sleigh.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
