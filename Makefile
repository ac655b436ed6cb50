# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PY := .venv/bin/python
CARGO ?= $(shell command -v cargo 2>/dev/null || echo "$(HOME)/.cargo/bin/cargo")
NVML_DIR := runtime/nvml
# NVML's file name and soname, at a stable path: put $(NVML_DIR)/lib on LD_LIBRARY_PATH.
NVML_LIB := $(NVML_DIR)/lib/libnvidia-ml.so.1

.PHONY: setup nvml demo test lint typecheck unit integration e2e bench clean

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

.venv/.synced: pyproject.toml $(wildcard */pyproject.toml) | $(UV)
	$(UV) sync --all-packages --frozen 2>/dev/null || $(UV) sync --all-packages
	touch $@

$(NVML_LIB): $(NVML_DIR)/Cargo.toml $(NVML_DIR)/Cargo.lock $(NVML_DIR)/build.rs $(wildcard $(NVML_DIR)/src/*.rs)
	@test -x "$(CARGO)" || { echo "make: cargo not found (install Rust: https://rustup.rs); needed for $@" >&2; exit 1; }
	"$(CARGO)" build --release --locked --manifest-path $(NVML_DIR)/Cargo.toml
	mkdir -p $(dir $@)
	cp $(NVML_DIR)/target/release/libnvidia_ml.so $@.tmp && mv $@.tmp $@
	ln -sf libnvidia-ml.so.1 $(dir $@)libnvidia-ml.so

nvml: $(NVML_LIB)

setup: .venv/.synced $(NVML_LIB)

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

# The README's test command: lint, types, then every tier but benchmarks, on two workers:
# the tests that use the lab in one (in order), the others beside them (tests/conftest.py).
test: lint typecheck
	$(UV) run --no-sync pytest -n 2 --dist loadgroup

bench: setup
	$(UV) run --no-sync pytest -m bench -s -p no:cacheprovider

demo: setup
	PATH="$(dir $(UV)):$$PATH" bash demo/run.sh

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
