"""CLI commands for the kernels side of remap (see remap.cli for the shared contract).

``remap kernels [--json]``              the kernels experiments can run on (host, fetchable, cached)
``remap kernels fetch NAME [--json]``   download and unpack one into the cache (never installed)
"""

from __future__ import annotations

import argparse
import sys

from .common import add_json, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the remap parser."""
    p = sub.add_parser("kernels", help="list the kernels experiments can run on; fetch one")
    add_json(p)
    p.set_defaults(func=cmd_list)
    ksub = p.add_subparsers(dest="kernels_command", metavar="fetch")
    f = ksub.add_parser("fetch", help="download and unpack a kernel package into the cache")
    f.add_argument("name", metavar="NAME", help="debian-6.1 or debian-6.1.0-NN")
    add_json(f)
    f.set_defaults(func=cmd_fetch)


def cmd_list(args: argparse.Namespace) -> int:
    from ..kernels import catalog
    from ..residency import mechanism_for

    ks = catalog.list_kernels()
    if args.json:
        print_json(
            {
                "cache": str(catalog.cache_dir()),
                "kernels": [{**k.to_json(), "mechanism": mechanism_for(k.release)} for k in ks],
            }
        )
        return 0
    width = max(len(k.name) for k in ks)
    for k in ks:
        where = k.path or (k.package if k.state == "fetchable" else "running")
        print(f"{k.name:<{width}}  {k.release:<22} {k.state:<9} {where}")
    if len(ks) == 1:
        print("(no Debian 6.1 kernel known: run 'apt-get update')", file=sys.stderr)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..kernels import fetch

    def say(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr)

    img = fetch.fetch(args.name, progress=say)
    boot = fetch.boot_image(img)
    if args.json:
        print_json({"name": args.name, "release": img.release, "path": str(img.root),
                    "boot": str(boot), **img.manifest()})  # fmt: skip
    else:
        print(f"{args.name}: {img.release} in {img.root} (boots {boot.name})")
    return 0
