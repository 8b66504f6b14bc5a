#!/usr/bin/env bash
# The main job: remap's view of a bundled target (replaced by the seed suite once it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(.venv/bin/python -c 'from remap import targets; print(targets.build("echoloop"))')
"$bin" < /dev/zero > /dev/null &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
sleep 0.3
.venv/bin/remap explain "$pid"
