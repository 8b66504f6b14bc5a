"""Debian's redis-server, with io-threads and 100k keys, squeezed 50 times under load.

Issue 12: redis 7 with `io-threads 4` (8 threads) made `remap squeeze` exit 70 every time
under redis-benchmark load (the scratch slots for the safety frames ran out).  Here redis runs
as nobody inside a network namespace of its own holding only loopback (remap, as root, attaches
from outside by its host PID), listening on 127.0.0.1 there.  The load is GET-only over the very
keys the test loaded, so the data set must not change: after every squeeze 300 freshly sampled
values and the key count are checked, DEBUG DIGEST (a hash of every key and value) after every
tenth squeeze and after any that did not exit 0, and every one of the 100k values before the
first squeeze and after the last.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time
from collections import Counter

import pytest
from realprog import (
    NOBODY,
    Resp,
    RespError,
    assert_released,
    connect_in_netns,
    need,
    squeeze,
    squeezed,
    started,
    wait_for,
)

from remap import procfs

KEYS = 100_000
PORT = 6379  # inside a network namespace of its own: nothing else can hold it
SQUEEZES = 50
SAMPLE = 300
BENCH_ROUNDS = 400  # the load's bounds: at most this many redis-benchmark runs...
BENCH_SECONDS = 150.0  # ...started within this many seconds, each one bounded below
BENCH = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(PORT), "-n", "20000", "-c", "4", "-q"]
BENCH += ["-t", "get", "-r", str(KEYS)]  # GET key:%012d over exactly the keys loaded below


def key(i: int) -> bytes:
    return b"key:%012d" % i  # what redis-benchmark's key:__rand_int__ becomes with -r


def value(i: int) -> bytes:
    """32 to 256 bytes, different for every key: 14 MB of values in all."""
    return hashlib.blake2b(key(i), digest_size=16).hexdigest().encode() * (1 + i % 8)


def redis_argv() -> list[str]:
    conf = ["--port", str(PORT), "--bind", "127.0.0.1", "--protected-mode", "yes"]
    conf += ["--io-threads", "4", "--io-threads-do-reads", "yes"]
    conf += ["--save", "", "--appendonly", "no", "--dir", "/", "--daemonize", "no"]
    conf += ["--enable-debug-command", "local"]
    # unshare execs sh in place, sh execs setpriv, setpriv execs redis: one PID throughout
    up_then_run = 'ip link set lo up && exec "$@"'
    return ["unshare", "--net", "--", "sh", "-c", up_then_run, "sh", *NOBODY, "redis-server", *conf]


def load(db: Resp) -> None:
    for start in range(0, KEYS, 5000):
        cmds = [(b"SET", key(i), value(i)) for i in range(start, min(start + 5000, KEYS))]
        assert all(r == b"OK" for r in db.pipeline(cmds))


def wrong_values(db: Resp, ids: list[int]) -> list[int]:
    """The ids among IDS whose value in redis is not value(id) (missing counts as wrong)."""
    bad = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        got = db.call(b"MGET", *(key(i) for i in chunk))
        bad += [i for i, v in zip(chunk, got, strict=True) if v != value(i)]
    return bad


def info(db: Resp, section: bytes, field: str) -> int:
    """One integer field of INFO SECTION ("connected_clients:5")."""
    lines = db.call(b"INFO", section).decode().splitlines()
    return int(next(x for x in lines if x.startswith(field + ":")).split(":")[1])


def key_count(db: Resp) -> int:
    """db0's key count as INFO keyspace prints it ("db0:keys=100000,expires=0,avg_ttl=0")."""
    lines = db.call(b"INFO", b"keyspace").decode().splitlines()
    line = next(x for x in lines if x.startswith("db0:"))
    return int(line.split("keys=")[1].split(",")[0])


def bench_loop(pid: int, stop: threading.Event, runs: list) -> None:
    """Run the bounded GET load inside PID's network namespace until STOP (or its bounds)."""
    deadline = time.monotonic() + BENCH_SECONDS
    while not stop.is_set() and len(runs) < BENCH_ROUNDS and time.monotonic() < deadline:
        argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *BENCH]
        try:
            runs.append(subprocess.run(argv, capture_output=True, text=True, timeout=60))
        except subprocess.TimeoutExpired as e:
            runs.append(e)
            return


@pytest.mark.timeout(230)
def test_redis_io_threads_100k_keys_50_squeezes_under_load(tmp_path):
    need("redis-server", "redis-benchmark", "unshare", "nsenter", "setpriv", "ip")
    with started(redis_argv(), tmp_path / "redis.log") as p:
        db = Resp(wait_for("redis answers", lambda: connect_in_netns(p.pid, PORT), proc=p))
        assert db.call(b"PING") == b"PONG"
        assert procfs.read_stat(p.pid).comm == "redis-server"
        assert str(procfs.read_status(p.pid)["Uid"]).split()[0] == "65534"  # nobody
        assert len(procfs.thread_ids(p.pid)) >= 8  # main, 3 io threads, bio, jemalloc
        load(db)
        assert key_count(db) == KEYS
        assert wrong_values(db, list(range(KEYS))) == []
        digest = db.call(b"DEBUG", b"DIGEST")
        assert digest.strip(b"0"), digest  # all zeros would mean an empty data set

        stop, bench_runs = threading.Event(), []
        bench = threading.Thread(target=bench_loop, args=(p.pid, stop, bench_runs))
        bench.start()
        rng, outcomes = random.Random(12), Counter()
        try:
            wait_for(
                "the load starts",
                lambda: bench_runs or info(db, b"clients", "connected_clients") > 1,
            )
            for i in range(SQUEEZES):
                r = squeeze(p.pid)
                outcomes[r.outcome] += 1
                if r.returncode == 0:
                    squeezed(r)  # and its JSON report parses
                assert p.poll() is None, f"redis died after squeeze {i + 1}: {r}"
                after = f"after squeeze {i + 1} ({r})"
                if i % 10 == 9 or r.returncode != 0:  # a full hash takes 0.5 s under load
                    assert db.call(b"DEBUG", b"DIGEST") == digest, f"data set changed {after}"
                sample = rng.sample(range(KEYS), SAMPLE)
                assert wrong_values(db, sample) == [], f"values lost {after}"
                assert key_count(db) == KEYS, f"keys lost {after}"
                if r.returncode is None:
                    break  # a hang costs its deadline once, not 50 times
        finally:
            stop.set()
            bench.join(70)
        assert outcomes == {"exit 0": SQUEEZES}, f"squeeze outcomes: {dict(outcomes)}"
        assert not bench.is_alive()
        failed = [b for b in bench_runs if not _bench_ok(b)]
        assert bench_runs and not failed, f"{len(bench_runs)} loads, failed: {failed[:2]}"

        assert wrong_values(db, list(range(KEYS))) == []
        assert db.call(b"DEBUG", b"DIGEST") == digest
        # and it still takes writes
        assert db.call(b"SET", b"probe", b"written after the squeezes") == b"OK"
        assert db.call(b"GET", b"probe") == b"written after the squeezes"
        assert db.call(b"DEL", b"probe") == 1 and key_count(db) == KEYS
        with pytest.raises(RespError):
            db.call(b"NO-SUCH-COMMAND")  # errors still come back as errors
        assert_released(p.pid)


def _bench_ok(run) -> bool:
    """A load run that exited 0 and printed its GET rate."""
    return (
        isinstance(run, subprocess.CompletedProcess)
        and run.returncode == 0
        and "GET:" in run.stdout
        and "requests per second" in run.stdout
    )
