# `make demo` and `make test` work on a fresh machine with Python 3.11+ and the package registries.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch for laptops and CI; on a GPU server use e.g. TORCH='torch' for the CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -v -n 3 --maxschedchunk 1 --durations=10

bench: setup
	$(BIN)/python bench/status_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
