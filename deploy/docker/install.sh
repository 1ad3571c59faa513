#!/bin/sh
# Install keygate's server (`.[server]`; the base install is the client alone, without asyncpg or uvloop)
# from the source tree in the current directory into a new virtualenv at $1, runtime dependencies only: no
# embedded PostgreSQL, no test tools. The Dockerfile's builder stage runs this script, and
# tests/deploy/test_container.py runs it in a clean virtualenv, so the two cannot drift.
set -eu
venv=$1
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check ".[server]"
"$venv/bin/keygate" --version
