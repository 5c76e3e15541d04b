# The commands of the README. Each creates .venv on first use and installs into it, so they work
# on a fresh machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test fast lint docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m thespian_dd demo

# Two workers, each taking the next test as it comes free (see tests/conftest.py).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2

# The fast tier: every test that starts no other process (no node, no network namespace, no
# command line run), on both cores.  FAST_TIER="not multinode" adds the command line's tests.
FAST_TIER ?= not multinode and not subprocess
fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "$(FAST_TIER)" -n 2

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $@

# The documentation site; a warning (a broken cross-reference included) fails the build. -E: a
# fresh environment every time, so a warning of an earlier build is never hidden by its cache.
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -E -n -W --keep-going -b html docs docs/_build/html
