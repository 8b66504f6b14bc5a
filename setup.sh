#!/usr/bin/env bash
# Command 1 of README: set up everything (apt, venv, targets) and run the main job.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec scripts/main-job.sh "$@"
