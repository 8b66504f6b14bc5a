// minibot-auto: the demo bot (minibot.c, unchanged) as an ORDINARY program for remap's automatic
// layout (issue 8): one input section per function and per object, and none of its hand-written
// hot-page annotations.
//
// Why -D'section(x)=': minibot.c places its steady state in .hot.* sections by hand
// (__attribute__((section(".hot.text"), ...))).  The round trip must find the hot path from a
// profile, not from those names, so the preprocessor turns every section(...) attribute into an
// empty attribute (GCC accepts `__attribute__((, noinline))`) -- without editing the bot's C
// source.  What remains is the plain bot: -ffunction-sections/-fdata-sections give each function
// .text.NAME and each object .rodata.NAME/.bss.NAME, the units remap.layout packs.
//
// remap-build: musl-gcc -static -no-pie -Os -fno-omit-frame-pointer -fno-stack-protector -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns -fno-jump-tables -malign-data=abi -ffunction-sections -fdata-sections -Dsection(x)= -o {out} {src}
#include "minibot.c"
