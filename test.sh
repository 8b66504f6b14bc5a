#!/usr/bin/env bash
# Command 2 of README: set up what the tests need, lint, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
.venv/bin/ruff check --quiet remap tests bench
exec .venv/bin/python -m pytest -q "$@"
