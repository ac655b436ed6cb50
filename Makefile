# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PY := .venv/bin/python

.PHONY: setup demo test lint typecheck unit integration e2e bench clean

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

.venv/.synced: pyproject.toml $(wildcard */pyproject.toml) | $(UV)
	$(UV) sync --all-packages --frozen 2>/dev/null || $(UV) sync --all-packages
	touch $@

setup: .venv/.synced

lint: setup
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync lint-imports

typecheck: setup
	$(UV) run --no-sync mypy

unit: setup
	$(UV) run --no-sync pytest -m unit

integration: setup
	$(UV) run --no-sync pytest -m integration

e2e: setup
	$(UV) run --no-sync pytest -m e2e

# The README's test command: lint, types, then every tier but benchmarks.
test: lint typecheck
	$(UV) run --no-sync pytest

bench: setup
	$(UV) run --no-sync pytest -m bench -s -p no:cacheprovider

demo: setup
	PATH="$(dir $(UV)):$$PATH" bash demo/run.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
