# Two set-up commands (README): `make run` and `make test`. Each creates .venv and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-all lint bench install clean

$(STAMP): pyproject.toml setup.py constraints.txt estimators/_native/exact.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first (pinned), so that no dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/taskgauge serve

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Import direction (import-linter contracts in pyproject.toml), lint, format, types. .ci/run calls it.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	sh bench/setup.sh
	$(PY) bench/id_bench.py
	$(PY) bench/ks_bench.py
	$(PY) bench/subspace_bench.py
	$(PY) bench/collect_results.py

clean:
	rm -rf $(VENV) .pytest_cache
