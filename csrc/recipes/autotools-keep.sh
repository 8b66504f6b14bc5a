#!/bin/sh
# autotools-keep.sh: keep a patched autotools tree's shipped generated files (configure,
# aclocal.m4, Makefile.in, config.h.in) newer than their inputs (recipe prepare step).
#
# Why: dpkg-source applies Debian's patches to configure.ac / Makefile.am after unpacking, so
# make would re-run autoconf/automake (a version this machine may not have) before building.
# The shipped outputs already carry the patches that matter for a build; one timestamp for all
# of them keeps make from ordering any of them after another.
set -eu
stamp=$(date +%s)
find . \( -name configure -o -name aclocal.m4 -o -name Makefile.in -o -name config.h.in \) \
  -type f -exec touch -d "@$stamp" {} +
