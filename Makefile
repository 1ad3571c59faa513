# Two set-up commands: `make run` and `make test`. Both create the virtualenv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test proto install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start keygate on an embedded PostgreSQL in ./.keygate, listening on 127.0.0.1:50051.
run: $(STAMP)
	$(BIN)/keygate serve

## The whole suite against a real PostgreSQL that the tests start themselves.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## The README's benchmark figures, as one table (see bench/; `$(BIN)/python -m bench --quick` for a smoke run).
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench

## Regenerate the stubs in service/v1 from protos/.
proto: $(STAMP)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) .keygate
