#!/bin/sh
# debian-src.sh PACKAGE OUT STUB [--irc-client] [CFLAGS...]: build a program nobody here wrote, statically with
# musl, from the source package Debian ships -- for remap's "second program" experiments.
#
# Why this way: `apt-get source` needs deb-src entries, which this machine's apt does not have.
# We write the deb-src twin of the system's own Debian *.sources (same mirrors, same suites)
# into a private apt configuration under the build directory, download the source package
# there (no system file is changed), unpack the upstream tarball, and compile the STUB C file
# (csrc/targets/NAME.c, which #includes the program's source) with -I pointing at it.
# Also leaves OUT.o (the link input remap layout names) next to OUT.
#
# --irc-client: OUT becomes a two-line sh wrapper taking remap's bot arguments (HOST PORT NICK
# CHANNEL, what the experiment runner appends) and exec'ing the real program, built as OUT.bin,
# as `OUT.bin -h HOST -p PORT -n NICK`.  exec keeps the PID: the launched process IS the
# program (its /proc/PID/exe is OUT.bin); only its command line comes from the wrapper.
set -eu
pkg=$1; out=$2; stub=$3; shift 3
wrapper=
if [ "${1:-}" = --irc-client ]; then
  wrapper=$out; out=$out.bin; shift
fi
work=$(dirname "$out")/debian-src/$pkg
apt="$work/apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts"
: > "$apt/sources.list"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  sed 's/^Types:.*$/Types: deb-src/' "$f" > "$apt/parts/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
  sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$apt/sources.list"
fi
opts="-o Dir::Etc::SourceList=$apt/sources.list -o Dir::Etc::SourceParts=$apt/parts
      -o Dir::State::Lists=$apt/lists -o Dir::Cache=$apt/cache -o APT::Sandbox::User=root"
if ! ls "$work"/*.orig.tar.* >/dev/null 2>&1; then
  apt-get $opts -qq update >&2
  (cd "$work" && apt-get $opts -qq source --download-only "$pkg" >&2)
fi
orig=$(ls "$work"/*.orig.tar.* | head -n 1)
src="$work/src"
rm -rf "$src" && mkdir -p "$src"
tar -xf "$orig" -C "$src" --strip-components=1
musl-gcc -c "$@" -I"$src" -o "$out.o" "$stub"
musl-gcc -static -no-pie -o "$out" "$out.o"
if [ -n "$wrapper" ]; then
  printf '#!/bin/sh\n# HOST PORT NICK CHANNEL -> %s -h HOST -p PORT -n NICK\nexec "%s" -h "$1" -p "$2" -n "$3"\n' \
    "$pkg" "$out" > "$wrapper"
  chmod +x "$wrapper"
fi
