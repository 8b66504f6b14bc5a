#!/bin/sh
# musl-kernel-headers.sh: make the kernel's UAPI headers visible to musl-gcc, in .kinc/ of the
# tree being built (recipe prepare step; run with sh in the tree's root).
#
# Why: musl-gcc compiles with -nostdinc and musl's own include folder, which has no linux/,
# asm/ or asm-generic/; util-linux and busybox include <linux/...>.  A private folder of
# symlinks to linux-libc-dev's headers (never a change to /usr/include) is added with
# -I.kinc (util-linux's CFLAGS) or CONFIG_EXTRA_CFLAGS (busybox-config.sh).
set -eu
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
mkdir -p .kinc
for d in /usr/include/linux /usr/include/asm-generic "/usr/include/$multiarch/asm"; do
  [ -d "$d" ] || { echo "musl-kernel-headers.sh: $d missing (apt-get install linux-libc-dev)" >&2; exit 1; }
  ln -sfn "$d" ".kinc/$(basename "$d")"
done
