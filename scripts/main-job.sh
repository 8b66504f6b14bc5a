#!/usr/bin/env bash
# The main job: the seed suite on the bundled targets.
#  1. every experiment in experiments/ on this machine's kernel (baseline, aslr-gap, vmrss-lag,
#     squeeze / stack-fold / single-page on the live demo bot, the automatic layout, torture...);
#  2. the seed's own screen (the demo bot's and EnergyMech's) and the VmRSS lag on Debian's 6.1
#     kernel beside the host (qemu);
#  3. the report: results/report.md and results/report.png.
# One JSON record per run in results/NAME.jsonl (NAME.KERNEL.jsonl for guest runs).  Every part
# runs even if an earlier one reported a failed run; the exit status says whether any did.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${REMAP_RESULTS:-results}
rc=0
mapfile -t names < <(ls experiments/*.toml | xargs -n1 basename | sed 's/\.toml$//')
.venv/bin/remap run "${names[@]}" --out "$out" || rc=$?
.venv/bin/remap run seed-screen vmrss-lag energymech-seed-screen --kernel host --kernel debian-6.1 --out "$out" || {
  r=$?
  echo "main-job: the kernel matrix failed (exit $r, see the line above); host results stand"
  [ "$rc" -ne 0 ] || rc=$r
}
.venv/bin/remap report "$out" || rc=$?
exit "$rc"
