#!/bin/sh
# busybox-config.sh [-]OPTION...: a minimal busybox .config: allnoconfig, then CONFIG_OPTION=y
# for each OPTION (-OPTION: switched off, for the other side of a choice allnoconfig had to
# fill, such as SH_IS_ASH), the kernel headers of musl-kernel-headers.sh, and oldconfig for the
# defaults of what the options pull in (recipe prepare step; run with sh in the tree's root).
set -eu
make allnoconfig >/dev/null
for o in "$@"; do
  case $o in
    -*) o=${o#-}; from="CONFIG_$o=y"; to="# CONFIG_$o is not set" ;;
    *) from="# CONFIG_$o is not set"; to="CONFIG_$o=y" ;;
  esac
  grep -qx "$from" .config || { echo "busybox-config.sh: no '$from' in .config" >&2; exit 1; }
  sed -i "s/^$from\$/$to/" .config
done
sed -i "s|^CONFIG_EXTRA_CFLAGS=.*|CONFIG_EXTRA_CFLAGS=\"-I$PWD/.kinc\"|" .config
yes "" | make oldconfig >/dev/null
for o in "$@"; do
  case $o in
    -*) want="# CONFIG_${o#-} is not set" ;;
    *) want="CONFIG_$o=y" ;;
  esac
  grep -qx "$want" .config || { echo "busybox-config.sh: '$want' did not stay" >&2; exit 1; }
done
