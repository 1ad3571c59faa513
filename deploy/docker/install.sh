#!/bin/sh
# Install keygate from the source tree in the current directory into a new virtualenv at $1, with its
# runtime dependencies only: no embedded PostgreSQL, no test tools. The Dockerfile's builder stage runs
# this script, and tests/deploy/test_install.py runs it in a clean virtualenv, so the two cannot drift.
set -eu
venv=$1
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check .
"$venv/bin/keygate" --version
