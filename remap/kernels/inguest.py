"""The guest side of ``remap run --kernel``: run experiments, write records, nothing else.

Why not the ``remap run`` CLI: under TCG every import costs ~20x what it costs on the host, so
the guest imports only remap.experiment (no rich, no argparse registry of every command).
It reads a job file the host wrote into the io folder::

    {"experiments": ["/abs/path/vmrss-lag.toml"], "repeat": null, "out": "/run/remap-io/out",
     "command": "remap run vmrss-lag --kernel debian-6.1"}

and writes OUT/NAME.jsonl per experiment.  A RemapError is one line on stderr and exit code
of its class, as in the CLI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from ..errors import RemapError
    from ..experiment import load, run

    job = json.loads(Path(argv[0]).read_text())
    try:
        for path in job["experiments"]:
            run(load(path), repeat=job.get("repeat"), out=Path(job["out"]), command=job["command"])
    except RemapError as e:
        print(f"remap (guest): {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
