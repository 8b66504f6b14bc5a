#!/bin/sh
# busybox-config.sh OPTION...: a minimal busybox .config: allnoconfig, then CONFIG_OPTION=y for
# each OPTION, the kernel headers of musl-kernel-headers.sh, and oldconfig for the defaults of
# what the options pull in (recipe prepare step; run with sh in the tree's root).
set -eu
make allnoconfig >/dev/null
for o in "$@"; do
  grep -q "^# CONFIG_$o is not set\$" .config || { echo "busybox-config.sh: no option $o" >&2; exit 1; }
  sed -i "s/^# CONFIG_$o is not set\$/CONFIG_$o=y/" .config
done
sed -i "s|^CONFIG_EXTRA_CFLAGS=.*|CONFIG_EXTRA_CFLAGS=\"-I$PWD/.kinc\"|" .config
yes "" | make oldconfig >/dev/null
for o in "$@"; do
  grep -q "^CONFIG_$o=y\$" .config || { echo "busybox-config.sh: $o did not stay on" >&2; exit 1; }
done
