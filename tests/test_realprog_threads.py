"""Real runtimes with many threads, squeezed in a row, then asked to prove their own data intact.

Issue 12: a 24-thread JVM and a CPython with 6-8 threads made `remap squeeze` exit 70
(AttributeError: 'NoneType' object has no attribute 'syscall_ret': the scratch slots for the
safety frames ran out).  Each target here hashes its own data (a JVM TreeMap, a CPython dict)
at start and again on request, and reports every worker's tick count: after the squeezes the
hash must be the same and every worker must still run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from realprog import TARGETS, LineProgram, check_squeezes_keep_data, need, started

from remap import procfs


@pytest.mark.timeout(150)
def test_jvm_with_24_threads_squeezed_5_times_keeps_its_map(tmp_path):
    need("java", "javac")
    classes = tmp_path / "classes"
    subprocess.run(
        ["javac", "-d", str(classes), str(TARGETS / "ChecksumThreads.java")],
        check=True,
        timeout=120,
    )
    argv = ["java", "-Xmx256m", "-cp", str(classes), "ChecksumThreads", "20", "100000"]
    with started(argv, tmp_path / "java.log", piped=True) as p:
        prog = LineProgram(p)
        threads = len(procfs.thread_ids(prog.pid))
        assert threads >= 24, f"the JVM runs only {threads} threads"
        check_squeezes_keep_data(prog, 5)


@pytest.mark.timeout(120)
def test_python_with_8_threads_squeezed_10_times_keeps_its_dict(tmp_path):
    need()
    argv = [sys.executable, str(TARGETS / "dict_threads.py"), "7", "100000"]
    with started(argv, tmp_path / "python.log", piped=True) as p:
        prog = LineProgram(p)
        assert len(procfs.thread_ids(prog.pid)) == prog.ready["threads"] == 8
        check_squeezes_keep_data(prog, 10)
