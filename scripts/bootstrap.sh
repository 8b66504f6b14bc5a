#!/usr/bin/env bash
# Install everything remap needs on a fresh Debian machine, idempotently: apt packages,
# a virtualenv in .venv with remap (editable) and its test tools, and the bundled targets.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
# The real-program suite (tests/test_realprog_*.py) runs programs nobody here wrote: redis
# (redis-server, redis-tools' redis-cli and redis-benchmark), Debian's Go webhook, a JVM (javac
# compiles its tiny program at test time), the sqlite3 shell, and unshare/nsenter/setpriv from
# util-linux.  dpkg-dev's dpkg-source unpacks Debian source packages (remap.debsrc: agetty,
# busybox) and linux-libc-dev has the kernel headers musl-gcc is shown for them.
pkgs=(gcc make musl-tools procps smem gdb strace python3 python3-venv python3-dev libffi-dev
      busybox-static qemu-system-x86 iproute2 util-linux redis-server redis-tools webhook
      default-jdk-headless sqlite3 dpkg-dev linux-libc-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The kernel matrix fetches Debian's 6.1 kernel with apt-get download: apt must know it.
if ! apt-cache pkgnames linux-image-6.1.0 2>/dev/null | grep -q '^linux-image-6\.1\.0-[0-9]*-amd64-unsigned$'; then
  $SUDO apt-get update -qq || echo "bootstrap: apt-get update failed; the 6.1 guest tests will skip"
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.remap-installed
# editable_mode=compat: a plain path in a .pth file.  The default mode installs an import
# finder whose own imports (pathlib, importlib.util...) cost ~25 ms on every `remap` start.
install=(-e '.[test]' --config-settings editable_mode=compat)
want=$( (cat pyproject.toml; echo "${install[*]}") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "${install[@]}"
  echo "$want" > "$stamp"
fi
# Byte-compile now: an editable install is never compiled by pip, and with
# PYTHONDONTWRITEBYTECODE set (as on CI) every command would compile remap again (~45 ms).
.venv/bin/python -m compileall -q remap >/dev/null
# Build every bundled target now so the first test or experiment does not pay for it.
# A target that cannot be built here (e.g. one built from a Debian source package when the
# source mirror is unreachable) is reported, not fatal: its experiment says so when it runs.
.venv/bin/python -c 'from remap import targets
from remap.errors import RemapError
for n, v in targets.all_targets():
    try:
        targets.build(n, v)
    except RemapError as e:
        print(f"bootstrap: warning: {e}")'
