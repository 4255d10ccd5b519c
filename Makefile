# keyward — the two commands: `make dev` and `make test`.
# Every target installs what is missing first (offline-proof: only the
# package registries are needed) and builds the worker only when its
# sources changed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

WORKER_BUILD_VERSION := 0.8.7
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/"/,"",$$3); print $$3}' Cargo.lock)
CARGO_BIN := $(HOME)/.cargo/bin
export PATH := $(CARGO_BIN):$(PATH)
# worker-build would download these from the internet; point it at local ones.
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/.bin/esbuild
export WASM_OPT_BIN := $(CURDIR)/node_modules/.bin/wasm-opt
export CI ?= true
export WRANGLER_SEND_METRICS := false

WORKER := build/index_bg.wasm
# The fault-injection build (cargo feature `faults`, tests/faults.rs): its own
# output directory and cargo target directory, so it never overwrites build/
# nor waits on its lock. Never deployed.
FAULTS := build-faults/index_bg.wasm
SOURCES := $(shell find src policy -type f) Cargo.toml Cargo.lock
# The console (/console): static files served by Workers Static Assets
# (wrangler.toml [assets]), not by the wasm. console/src → console/dist,
# app.js bundled by esbuild; console/dist is build output.
CONSOLE := console/dist/console/index.html
CONSOLE_SOURCES := $(shell find console/src -type f)

.PHONY: help tools dev test lint deploy clean bench build-faults console
.PHONY: deploy-check load-psl soak fuzz

help:
	@echo "make dev     run keyward locally (wrangler dev + demo origin), seeded with a demo key"
	@echo "make test    lint, unit and end-to-end tests (installs tools, builds the worker)"
	@echo "make bench   performance benchmarks (writes bench/results.md)"
	@echo "make soak    10 min of mixed load against wrangler dev (writes soak/results.md)"
	@echo "make fuzz    fuzz every parser, FUZZ_SECONDS each (default 60; fuzz/README.md)"
	@echo "make deploy  wrangler deploy (see README: secrets and KV namespace first)"

tools: .tools/rust .tools/worker-build-$(WORKER_BUILD_VERSION) .tools/wasm-bindgen-$(WASM_BINDGEN_VERSION) node_modules/.package-lock.json

.tools/rust:
	rustup target add wasm32-unknown-unknown
	rustup component add clippy rustfmt
	@mkdir -p .tools && touch $@

.tools/worker-build-$(WORKER_BUILD_VERSION):
	@if [ "$$(worker-build --version 2>/dev/null)" != "$(WORKER_BUILD_VERSION)" ]; then \
	  cargo install worker-build --version $(WORKER_BUILD_VERSION); fi
	@mkdir -p .tools && touch $@

.tools/wasm-bindgen-$(WASM_BINDGEN_VERSION):
	@test -n "$(WASM_BINDGEN_VERSION)" || { echo "no wasm-bindgen in Cargo.lock"; exit 1; }
	@if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $(WASM_BINDGEN_VERSION)"; then \
	  cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); fi
	@mkdir -p .tools && touch $@

# Debian's Chromium for the browser tests (driven by playwright-core; no
# browser download from npm).
.tools/chromium:
	@command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium chromium-driver; }
	@mkdir -p .tools && touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# worker-build always keeps the wasm name section (function names for stack
# traces); strip it and the producers section afterwards: about 100 KiB less
# to ship to every edge location. Panic messages keep file and line. -Oz on
# the final module (after wasm-bindgen) saves another ~2 KiB gzipped; then
# GUFA (whole-program flow analysis: what can reach each value) and a
# second -Oz to a fixed point save ~0.6 KiB more, and --low-memory-unused
# ~1.8 KiB (WASM_OPT_PASSES, also used by bench/run.sh). That flag lets
# wasm-opt fold `p + C` into a load's offset on the assumption that nothing
# lives in the first KiB of memory. Rust places the 1 MiB stack first, so
# that KiB is the stack's far end, reached only by a stack 1023 KiB deep
# (keyward's deepest, serde_json's recursion limit of 128, is far from it);
# and what the flag could change there is a trap (an answer 500, a fresh
# instance), never a wrong read or write.
WASM_FEATURES := --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling
WASM_OPT_PASSES := --low-memory-unused -Oz --gufa -Oz --converge
$(WORKER): $(SOURCES) | tools
	worker-build --release
	$(WASM_OPT_BIN) $@ -o $@ $(WASM_OPT_PASSES) --strip-debug --strip-producers $(WASM_FEATURES)

build: $(WORKER) $(CONSOLE)

$(CONSOLE): $(CONSOLE_SOURCES) | node_modules/.package-lock.json
	rm -rf console/dist
	mkdir -p console/dist/console
	$(ESBUILD_BIN) console/src/app.js --bundle --format=esm --minify --target=es2020 --log-level=warning --outfile=console/dist/console/app.js
	cp console/src/app.css console/dist/console/app.css
	cp console/src/_headers console/dist/_headers
	cp console/src/index.html $@

console: $(CONSOLE)

$(FAULTS): $(SOURCES) | tools
	worker-build --release --out-dir build-faults -- --features faults --target-dir target/faults
	$(WASM_OPT_BIN) $@ -o $@ $(WASM_OPT_PASSES) --strip-debug --strip-producers $(WASM_FEATURES)

build-faults: $(FAULTS)

dev: tools $(WORKER) $(CONSOLE)
	./scripts/dev.sh

lint: tools
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown --features faults -- -D warnings

test: tools .tools/chromium $(WORKER) $(FAULTS) $(CONSOLE) lint deploy-check
	cargo test --all-targets

# Core (divan) and end-to-end (workerd + wrk) benchmarks; installs wrk,
# builds the baselines and keyward's benchmark build (feature `bench`, with
# the same final wasm-opt pass as $(WORKER)); writes bench/results.md
# (bench/README.md).
bench: tools $(WORKER) $(CONSOLE)
	WASM_OPT_FEATURES="$(WASM_FEATURES)" WASM_OPT_PASSES="$(WASM_OPT_PASSES)" ./bench/run.sh

# wrangler deploy --dry-run (offline, no login) into build/dry-run, then the
# upload's size against the Workers limits (scripts/deploy-check.sh).
deploy-check: tools $(WORKER) $(CONSOLE)
	./scripts/deploy-check.sh

# Every parser of untrusted input under libFuzzer for FUZZ_SECONDS each
# (default 60; FUZZ_RUNS=N for a number of executions): installs nightly and
# cargo-fuzz 0.13.1 if missing, prints executions and coverage per target
# (fuzz/README.md). `make test` runs the same checks on stable
# (tests/fuzz_smoke.rs).
fuzz:
	./fuzz/run.sh $(FUZZ_TARGETS)

# 10 minutes of steady mixed load against `wrangler dev` (soak/run.sh;
# SOAK_SECONDS, SOAK_RATE, SOAK_RUNTIME=workerd): writes soak/results.md,
# exits non-zero on findings.
soak: tools $(WORKER) $(CONSOLE)
	./soak/run.sh

deploy: tools $(WORKER) $(CONSOLE)
	node_modules/.bin/wrangler deploy

# Loads data/public_suffix_list.dat into a deployment (once after the first
# deploy, and whenever the list is refreshed with scripts/public-suffix-list.py):
#   make load-psl KEYWARD_URL=https://edge.example.com ADMIN_TOKEN=...
load-psl:
	@test -n "$(KEYWARD_URL)" && test -n "$(ADMIN_TOKEN)" || { echo "set KEYWARD_URL and ADMIN_TOKEN"; exit 2; }
	curl -fsS -X PUT "$(KEYWARD_URL)/admin/public_suffix_list" -H "Authorization: Bearer $(ADMIN_TOKEN)" \
	  -H 'content-type: text/plain' --data-binary @data/public_suffix_list.dat
	@echo

clean:
	rm -rf build build-faults target .tools console/dist
