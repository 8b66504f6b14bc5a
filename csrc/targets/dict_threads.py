"""A CPython target for the real-program suite (tests/test_realprog_threads.py).

It holds a dict of N entries (argv[2], default 100000) with a SHA-256 over every entry in key
order, and runs W worker threads (argv[1], default 7; with the main thread W + 1) that tick in
different blocking calls: time.sleep (clock_nanosleep), Event.wait with a timeout (a futex wait
with a deadline) and select() on a pipe nobody writes.  It prints one JSON line
{"ready": true, "sum": ..., "threads": W + 1} and answers each line on stdin with
{"sum": ..., "ticks": [...]}: the sum recomputed from the data now, and every worker's tick count
(a worker that no longer runs stops ticking).  End of stdin ends it.
"""

import hashlib
import json
import os
import select
import sys
import threading
import time


def value(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest() * (1 + i % 5)


def checksum(data: dict[int, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.to_bytes(8, "little"))
        h.update(data[k])
    return f"{h.hexdigest()}:{len(data)}"


def worker(me: int, ticks: list[int], never: threading.Event, quiet_fd: int) -> None:
    while True:
        kind = me % 3
        if kind == 0:
            time.sleep(0.002)
        elif kind == 1:
            never.wait(0.005)
        else:
            select.select([quiet_fd], [], [], 0.005)
        ticks[me] += 1


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
    data = {i: value(i) for i in range(n)}
    ticks = [0] * workers
    never = threading.Event()
    quiet_r, _quiet_w = os.pipe()
    for w in range(workers):
        threading.Thread(target=worker, args=(w, ticks, never, quiet_r), daemon=True).start()
    print(json.dumps({"ready": True, "sum": checksum(data), "threads": workers + 1}), flush=True)
    for _line in sys.stdin:
        print(json.dumps({"sum": checksum(data), "ticks": list(ticks)}), flush=True)


if __name__ == "__main__":
    main()
