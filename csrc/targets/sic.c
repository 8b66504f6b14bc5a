// sic: suckless' "simple irc client" (Debian source package `sic`, upstream 1.1), a program
// nobody here wrote for remap -- the second program of issue 8, built statically with musl.
//
// This file is only the compilation unit: debian-src.sh downloads Debian's source package,
// unpacks the upstream tarball and compiles this stub with -I pointing at it, so the program's
// code is Debian's, byte for byte (Debian's only patch touches config.mk: install paths and
// dpkg-buildflags).  The flags are upstream's config.mk (-std=c99 -Os -D_GNU_SOURCE
// -DVERSION) plus what remap's tools need: one input section per function/object for
// remap layout, frame pointers for the fold's frame walk, no unwind tables or stack protector.
//
// Usage: sic -h HOST -p PORT -n NICK; it answers a server's PING with "PONG token" (no colon)
// and joins a channel when ":j #chan" arrives on its stdin.  The [irc] variant is the same
// sic behind a sh wrapper that takes the experiment runner's bot arguments and execs it.
//
// remap-build: sh {dir}/debian-src.sh sic {out} {src} -std=c99 -Os -D_GNU_SOURCE '-DVERSION="1.1"' -fno-omit-frame-pointer -fno-stack-protector -fno-asynchronous-unwind-tables -ffunction-sections -fdata-sections
// remap-build[irc]: sh {dir}/debian-src.sh sic {out} {src} --irc-client -std=c99 -Os -D_GNU_SOURCE '-DVERSION="1.1"' -fno-omit-frame-pointer -fno-stack-protector -fno-asynchronous-unwind-tables -ffunction-sections -fdata-sections
// sic 1.1 gets fd_set/select from glibc's headers by accident (stdlib.h pulls sys/select.h in);
// musl's headers do not, so the stub includes it first.  No line of sic itself is changed.
#include <sys/select.h>
#include <sic.c> // <>: the unpacked upstream sic.c (-I), not this file
