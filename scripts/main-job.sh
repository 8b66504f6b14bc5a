#!/usr/bin/env bash
# The main job: the seed suite on the bundled bot -- every experiment in experiments/ (at least
# baseline-minibot, aslr-gap, vmrss-lag), one JSON record per run in results/, then the report
# (results/report.md, results/report.png).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${REMAP_RESULTS:-results}
mapfile -t names < <(ls experiments/*.toml | xargs -n1 basename | sed 's/\.toml$//')
.venv/bin/remap run "${names[@]}" --out "$out"
.venv/bin/remap report "$out"
