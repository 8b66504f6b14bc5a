"""CLI commands for the experiment side of remap (see remap.cli for the shared contract).

``remap run NAME... [--repeat N] [--out DIR] [--kernel K]... [--json]``   run experiments, write
records (``--kernel debian-6.1``: inside that kernel under qemu, see remap.kernels)
``remap experiments [--json]``   the bundled experiments (``remap run NAME``) and what each shows
``remap launch [--no-aslr] [--no-vdso] [--env-size N] [--target NAME[:VARIANT]] [--user U]
[--netns] [--cwd DIR] [--env K=V]... [--json] -- CMD...``   start a target
``remap report DIR [--png FILE] [--json]``   tables, report.md and a PNG from DIR's records
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_FAILED, UsageError
from ..sources import SourceMissing
from .common import add_json, console, int_at_least, path_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the remap parser."""
    p = sub.add_parser("run", help="run experiments (experiments/NAME.toml) and record the runs")
    p.add_argument("names", nargs="+", metavar="NAME", help="experiment name or .toml path")
    p.add_argument(
        "--repeat", type=int_at_least(1), help="runs per case (default: the file's repeat)"
    )
    p.add_argument("--out", type=path_arg, help="write DIR/NAME.jsonl (one JSON record per run)")
    p.add_argument(
        "--kernel",
        action="append",
        metavar="K",
        help="run under kernel K ('remap kernels': host, debian-6.1, ...) booted in qemu; "
        "repeat for a matrix; records of K go to DIR/NAME.K.jsonl (default: host)",
    )
    p.add_argument(
        "--accel",
        choices=("auto", "tcg", "kvm"),
        default="auto",
        help="qemu accelerator for --kernel (auto: KVM where a short probe boots, else TCG)",
    )
    p.add_argument(
        "--guest-timeout",
        type=int_at_least(1),
        metavar="S",
        help="seconds the whole guest may take (default: 60 + 15 per run)",
    )
    add_json(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("experiments", help="list the bundled experiments and their descriptions")
    add_json(p)
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("launch", help="start a target with controlled ASLR/environment/vdso")
    p.add_argument("--no-aslr", action="store_true", help="exec with ADDR_NO_RANDOMIZE")
    p.add_argument("--no-vdso", action="store_true", help="hide AT_SYSINFO_EHDR, unmap the vdso")
    p.add_argument(
        "--env-size", type=int_at_least(0), metavar="N", help="environment strings = N bytes"
    )
    p.add_argument(
        "--target",
        metavar="NAME[:VARIANT]",
        help="build and start a bundled target (csrc/targets) or a bring-your-own one "
        "(csrc/recipes, e.g. energymech:static); CMD is then only its arguments",
    )
    p.add_argument("--user", metavar="USER", help="run as this unprivileged user (e.g. nobody)")
    p.add_argument(
        "--netns",
        action="store_true",
        help="inside a private network namespace holding only loopback (reaches nothing)",
    )
    p.add_argument("--cwd", type=path_arg, metavar="DIR", help="working directory of the target")
    p.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="add to the environment"
    )
    p.add_argument(
        "--output",
        type=path_arg,
        metavar="FILE",
        help="append the target's stdout/stderr to FILE "
        "(default /dev/null, so $(remap launch ...) returns at once); stdin is inherited",
    )
    add_json(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="program and args")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("report", help="summarise experiment records (tables, Markdown, PNG)")
    p.add_argument("dir", type=path_arg, metavar="DIR")
    p.add_argument("--png", type=path_arg, metavar="FILE", help="PNG path (default DIR/report.png)")
    add_json(p)
    p.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .. import experiment as X
    from ..experiment.runner import check_steps, plan

    exps = [X.load(n) for n in args.names]  # every file checked before anything runs
    for e in exps:
        check_steps(e)
    if args.out is not None:
        _check_writable(args.out)
    err = Console(stderr=True)
    results = []
    failed = 0
    skipped: list[str] = []
    kernels = list(dict.fromkeys(args.kernel or ["host"]))
    for k in kernels:
        if k == "host":
            continue
        from ..kernels.matrix import run_in_guest

        def say(msg: str) -> None:
            if not args.json:
                err.print(f"[dim]{msg}[/dim]")

        got = run_in_guest(
            k,
            [str(e.path) for e in exps],
            repeat=args.repeat,
            out=args.out,
            accel=args.accel,
            timeout=args.guest_timeout,
            progress=say,
        )
        for e in exps:
            recs = got[e.name]
            summ = X.summarize(recs)
            failed += sum(1 for r in recs if not r["target_ok"])
            results.append({"experiment": e.name, "kernel": k, "runs": recs, "summary": summ})
            if not args.json:
                rel, acc = recs[0]["kernel"], recs[0].get("accel")
                _print_summary(f"{e.name} on {k} ({rel}, {acc})", summ)
    for e in exps if "host" in kernels else []:
        total = len(plan(e, args.repeat))
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}"),
            console=err,
            transient=args.json,
            disable=not err.is_terminal and args.json,
        ) as prog:
            task = prog.add_task(e.name, total=total, last="")

            def tick(i: int, n: int, rec: dict, task=task, prog=prog) -> None:
                prog.update(task, completed=i, last=f"{rec['case']}: {rec['final_rss_kb']} kB")

            try:
                recs = X.run(e, repeat=args.repeat, out=args.out, progress=tick)
            except SourceMissing as miss:
                recs = None
                results.append(
                    {"experiment": e.name, "kernel": "host", "skipped": str(miss),
                     "looked_for": str(miss.path)}
                )  # fmt: skip
                skipped.append(e.name)
        if recs is None:
            print(f"{e.name}: SKIPPED (not run, not passed): {results[-1]['skipped']}",
                  file=sys.stderr)  # fmt: skip
            continue
        summ = X.summarize(recs)
        failed += sum(1 for r in recs if not r["target_ok"])
        results.append({"experiment": e.name, "kernel": "host", "runs": recs, "summary": summ})
        if not args.json:
            _print_summary(e.name, summ)
    if args.json:
        print_json(results[0] if len(results) == 1 else results)
    if args.out and not args.json:
        from ..kernels.matrix import records_path

        paths = [records_path(args.out, e.name, k) for k in kernels for e in exps]
        print(f"records: {', '.join(str(p) for p in paths)}")
    if skipped:
        print(f"remap: skipped (source missing): {', '.join(skipped)}", file=sys.stderr)
    if failed:
        print(f"remap: {failed} run(s) did not keep the target working", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _print_summary(name: str, summ: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{name}", title_justify="left")
    for h in ("case", "figure", "min", "median", "max", "agree", "distribution"):
        t.add_column(h)
    for case, s in summ.items():
        t.add_row(
            case, "runs ok", f"{s['ok']}/{s['runs']}", "", "", "all" if s["all_agree"] else "no", ""
        )
        for f, st in s["figures"].items():
            if "min" not in st or f.startswith("step") and ":vmrss_kb" in f:
                continue
            dist = st["distribution"]
            t.add_row(
                "",
                f,
                str(st["min"]),
                f"{st['median']:g}",
                str(st["max"]),
                "yes" if st["agree"] else "no",
                ", ".join(f"{k}x{v}" for k, v in list(dist.items())[:6])
                + (" ..." if len(dist) > 6 else ""),
            )
    console().print(t)


def cmd_experiments(args: argparse.Namespace) -> int:
    """Every bundled experiment, loaded (so a broken file is its one-line error, not a row)."""
    from .. import experiment as X
    from ..experiment.spec import EXPERIMENTS_DIR

    exps = [X.load(n) for n in X.available()]
    if args.json:
        rows = [
            {"name": e.name, "description": e.description, "repeat": e.repeat,
             "cases": [c.name for c in e.cases], "path": str(e.path)}
            for e in exps
        ]  # fmt: skip
        print_json({"dir": str(EXPERIMENTS_DIR), "experiments": rows})
        return 0
    width = max((len(e.name) for e in exps), default=0)
    for e in exps:
        print(f"{e.name:<{width}}  {e.description}")
    print(f"({len(exps)} in {EXPERIMENTS_DIR}; remap run NAME)", file=sys.stderr)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from ..launch import launch

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.target:
        cmd = [str(_launch_target(args.target)), *cmd]
    if not cmd:
        raise UsageError("launch: give the command after --, e.g. remap launch -- ./prog")
    env = None
    if args.env:
        from ..launch import DEFAULT_ENV

        env = dict(DEFAULT_ENV)
        for kv in args.env:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise UsageError(f"launch: --env wants KEY=VALUE, got {kv!r}")
            env[k] = v
    ns = None
    if args.netns:
        from ..netns import NetNamespace

        ns = NetNamespace()
    import subprocess

    out = subprocess.DEVNULL
    if args.output:
        try:
            out = open(args.output, "ab")  # noqa: SIM115 (handed to the child, closed below)
        except OSError as e:
            raise UsageError(f"launch: cannot open --output {args.output}: {e.strerror}") from None
    try:
        t = launch(
            cmd,
            aslr=not args.no_aslr,
            vdso=not args.no_vdso,
            env_size=args.env_size,
            stdin=None,
            stdout=out,
            stderr=out,
            new_session=True,
            env=env,
            cwd=args.cwd,
            user=args.user,
            netns=ns,
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
        if ns is not None:
            ns.close()  # the target holds the namespace now
    if args.json:
        print_json(t.to_json())
    else:
        print(t.pid)
    t.proc.returncode = 0  # we leave it running: keep Popen's destructor from warning
    return 0


def _launch_target(spec: str):
    """NAME[:VARIANT] -> the built binary: csrc/recipes/NAME.toml if there is one, else
    csrc/targets/NAME.c (SourceMissing, ExperimentError: one line, exit 7)."""
    from .. import sources, targets

    name, _, variant = spec.partition(":")
    variant = variant or "default"
    if name in sources.available():
        return sources.build(sources.recipe(name, variant))
    return targets.build(name, variant)


def cmd_report(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..report import (
        HEADERS,
        kernel_matrix,
        load_records,
        load_skipped,
        matrix_table,
        report,
        rows,
    )

    summ, md, png = report(args.dir, args.png)
    matrix = kernel_matrix(load_records(args.dir))
    skipped = load_skipped(args.dir)
    if args.json:
        print_json(
            {"summary": summ, "matrix": matrix, "skipped": skipped, "markdown": str(md),
             "png": str(png)}
        )  # fmt: skip
        return 0
    t = Table(title=f"remap report: {args.dir}", title_justify="left")
    for h in HEADERS:
        t.add_column(h)
    for r in rows(summ):
        t.add_row(*r)
    con = console()
    if not con.is_terminal:
        con = console(width=160)
    con.print(t)
    if set(matrix["kernels"]) != {"host"}:
        heads, mrows = matrix_table(matrix)
        mt = Table(title="kernels: page walk vs counters (medians)", title_justify="left")
        for h in heads:
            mt.add_column(h)
        for r in mrows:
            mt.add_row(*r)
        con.print(mt)
    for k in skipped:
        print(f"{k['experiment']}: SKIPPED (not run, not passed): {k['skipped']}")
    print(f"report: {md}  figure: {png}")
    return 0


def _check_writable(d) -> None:
    """Refuse a results folder remap cannot write before anything runs (not after the runs,
    with the records lost): permission (exit 4) or a path that cannot be a folder (exit 2)."""
    import os

    from ..errors import AccessDenied, translate

    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".remap-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e)
        if isinstance(e, OSError) and isinstance(translate(e), AccessDenied):
            raise AccessDenied(f"results folder {d}: not writable ({why})") from None
        raise UsageError(f"results folder {d}: cannot be used ({why})") from None
