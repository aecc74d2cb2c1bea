# ringer: `make up` runs everything locally, `make test` proves it.
SHELL := /bin/bash
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ringer
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ringer_test

.PHONY: up down logs infra test lint unit deploy-check fuzz bench chaos

# Incremental caches only pay off across edits; a test run from a clean clone
# (CI) would just write a second copy of every crate to disk.
lint unit: export CARGO_INCREMENTAL ?= 0

up:
	@scripts/dev.sh up

down:
	@scripts/dev.sh down

logs:
	@scripts/dev.sh logs

infra:
	@scripts/dev.sh infra

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	DATABASE_URL=$(TEST_DATABASE_URL) cargo nextest run --workspace --no-fail-fast

deploy-check:
	@if [ -x scripts/validate-deploy.sh ]; then scripts/validate-deploy.sh; fi

fuzz:
	@scripts/fuzz-api.sh

test: infra lint unit deploy-check fuzz

bench: infra
	@scripts/bench.sh

chaos: infra
	@scripts/chaos.sh
