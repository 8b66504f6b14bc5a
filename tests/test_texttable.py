"""remap.texttable: the plain-text tables of `remap map` and `map --pages`."""

from __future__ import annotations

import re

from remap import texttable


def test_columns_align_and_colour_does_not_count():
    rows = [["1", "code", "/bin/x"], ["22", "lib:libc.so.6", "/lib/libc.so.6"]]
    plain = texttable.render("t", ["A", "Label", "Path"], rows, right={0}, footer=[["3", "", "2"]])
    lines = plain.splitlines()
    assert lines[0] == "t" and lines[-2] == ""
    assert [ln.index("/") for ln in lines[2:4]] == [17, 17]  # the last column starts together
    assert lines[2].startswith(" 1 code") and lines[3].startswith("22 lib:")
    painted = texttable.render(
        "t", ["A", "Label", "Path"], rows, right={0},
        colour=(1, lambda c: texttable.ansi("#d62728", c)),
    )  # fmt: skip
    assert "\x1b[38;2;214;39;40m" in painted
    assert re.sub(r"\x1b\[[0-9;]*m", "", painted) == plain.rsplit("\n\n", 1)[0] + "\n"
