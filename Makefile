# Two commands do all the set-up on a fresh clone:
#   make demo   trains the example end to end and prints its accuracy
#   make test   runs the whole test suite
# Both create .venv with torch pinned by constraints.txt. `make check` runs every quality gate
# (lint, format, types, docs, tests), as CI does.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test venv lint typecheck docs serve-docs check clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

demo: venv
	$(PY) examples/mnist.py

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check ftrain tests examples benchmarks docs/hooks
	$(VENV)/bin/ruff format --check ftrain tests examples benchmarks docs/hooks

typecheck: venv
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict tests/typing

docs: venv
	$(VENV)/bin/mkdocs build --strict

serve-docs: venv
	$(VENV)/bin/mkdocs serve

check: lint typecheck docs test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
