"""Reports from experiment records: summary tables, a Markdown file and PNG figures.

Why apart from the runner: records are the interface (README "Experiment files" lists their
fields); a report is one view of them and can be re-made at any time from DIR/*.jsonl, on
another machine, without the targets.

Figures (matplotlib, Agg): per experiment, the distribution of idle (final) RSS per case; and
where records carry a stack layout, the random gap against the idle RSS, coloured by how many
stack pages are present -- the picture that explains "12 kB reproducible, 8 kB unreproducible".

Kernels: records of a guest run (``remap run --kernel debian-6.1``, see remap.kernels) carry
``kernel_name``; they are summarised as experiment "NAME @ KERNEL" beside the host's "NAME",
and :func:`kernel_matrix` puts every kernel side by side (experiment x kernel: page walk and
counters), with a panel of VmRSS against page-walk RSS per kernel.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .errors import ExperimentError
from .experiment.runner import summarize

KEY_FIGURES = ("final_rss_kb", "final_vmrss_kb", "stack_gap", "stack_present_pages")


def load_records(d: Path) -> dict[str, list[dict[str, Any]]]:
    """{experiment: [records]} from every DIR/*.jsonl; one-line ExperimentError if unreadable."""
    if not d.is_dir():
        raise ExperimentError(f"{d}: no such results directory")
    out: dict[str, list[dict[str, Any]]] = {}
    files = sorted(d.glob("*.jsonl"))
    if not files:
        raise ExperimentError(f"{d}: no *.jsonl records (run 'remap run NAME --out {d}' first)")
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out.setdefault(rec["experiment"], []).append(rec)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ExperimentError(f"{f}:{i}: not a remap record ({e})") from None
    return out


def kernel_of(rec: dict[str, Any]) -> str:
    """The catalog name of the kernel a record was taken on (records before kernels: host)."""
    return rec.get("kernel_name") or "host"


def by_kernel(recs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Split each experiment's records by kernel: host keeps NAME, others become NAME @ K."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, rs in recs.items():
        for r in rs:
            k = kernel_of(r)
            out.setdefault(name if k == "host" else f"{name} @ {k}", []).append(r)
    return out


MATRIX_FIGURES = ("final_rss_kb", "final_vmrss_kb")


def kernel_matrix(recs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Experiment x kernel: per case and kernel, runs, page walk and counters (medians).

    ``{"kernels": {name: {"release", "accel"}}, "rows": [{"experiment", "case",
    "cells": {kernel: {"runs", "ok", "rss_kb", "vmrss_kb", "statm_kb", "lag_runs"}}}]}``;
    ``lag_runs`` counts runs whose final VmRSS is below the page walk.
    """
    kernels: dict[str, dict[str, Any]] = {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, rs in recs.items():
        for r in rs:
            k = kernel_of(r)
            if k not in kernels:
                rel = r.get("kernel")
                kernels[k] = {
                    "release": rel,
                    "accel": r.get("accel"),
                    "mechanism": _mechanism(rel) if rel else None,
                }
            rows.setdefault((name, r["case"]), {}).setdefault(k, []).append(r)
    order = sorted(kernels, key=lambda k: (k != "host", k))
    out_rows = []
    for (name, case), cells in rows.items():
        row: dict[str, Any] = {"experiment": name, "case": case, "cells": {}}
        for k in order:
            rs = cells.get(k)
            if not rs:
                continue
            last = [r["steps"][-1] for r in rs if r.get("steps")]
            row["cells"][k] = {
                "runs": len(rs),
                "ok": sum(1 for r in rs if r.get("target_ok")),
                "rss_kb": _median(r.get("final_rss_kb") for r in rs),
                "vmrss_kb": _median(r.get("final_vmrss_kb") for r in rs),
                "statm_kb": _median(s.get("counters", {}).get("statm_rss") for s in last),
                "lag_runs": sum(
                    1
                    for r in rs
                    if r.get("final_vmrss_kb") is not None
                    and r.get("final_rss_kb") is not None
                    and r["final_vmrss_kb"] < r["final_rss_kb"]
                ),
            }
        out_rows.append(row)
    return {"kernels": {k: kernels[k] for k in order}, "rows": out_rows}


def matrix_table(m: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the kernel matrix: per kernel 'walk / VmRSS / statm kB' and runs."""
    ks = list(m["kernels"])
    headers = ["experiment", "case"]
    for k in ks:
        info = m["kernels"][k]
        acc = f", {info['accel']}" if info.get("accel") else ""
        headers.append(f"{k} ({info['release']}{acc}): walk / VmRSS / statm kB, lag runs")
    rows = []
    for r in m["rows"]:
        row = [r["experiment"], r["case"]]
        for k in ks:
            c = r["cells"].get(k)
            row.append(
                "-"
                if c is None
                else f"{_fmt(c['rss_kb'])} / {_fmt(c['vmrss_kb'])} / {_fmt(c['statm_kb'])}, "
                f"{c['lag_runs']}/{c['runs']}"
            )
        rows.append(row)
    return headers, rows


def _mechanism(release: str) -> str | None:
    """How RSS counters work on RELEASE (remap.residency's wording), None if unparseable."""
    from .residency import mechanism_for

    try:
        return mechanism_for(release)
    except (ValueError, TypeError):
        return None


def _median(vals) -> float | None:
    nums = [v for v in vals if isinstance(v, int | float)]
    return statistics.median(nums) if nums else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def summaries(recs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {name: summarize(rs) for name, rs in recs.items()}


def rows(summ: dict[str, Any]) -> list[list[str]]:
    """Table rows: experiment, case, runs ok/total, agree, then min/median/max of key figures."""
    out = []
    for exp, cases in summ.items():
        for case, s in cases.items():
            row = [exp, case, f"{s['ok']}/{s['runs']}", "yes" if s["all_agree"] else "no"]
            for f in KEY_FIGURES:
                st = s["figures"].get(f)
                row.append(_mmm(st) if st and "min" in st else "-")
            row.append(_dist(s["figures"].get("final_rss_kb")))
            out.append(row)
    return out


HEADERS = [
    "experiment",
    "case",
    "ok",
    "all agree",
    "RSS kB (walk)",
    "VmRSS kB",
    "stack gap B",
    "stack pages",
    "idle RSS distribution",
]


def _mmm(st: dict) -> str:
    if st["min"] == st["max"]:
        return f"{st['min']}"
    return f"{st['min']} / {st['median']:g} / {st['max']}"


def _dist(st: dict | None) -> str:
    if not st or "distribution" not in st:
        return "-"
    return ", ".join(f"{k} kB x{v}" for k, v in st["distribution"].items())


def load_skipped(d: Path) -> list[dict[str, Any]]:
    """The experiments DIR holds no records for because they did not run (DIR/NAME.skipped.json,
    written by remap run when a bring-your-own source is missing): named in the report, so a
    missing program is never mistaken for one that passed."""
    out = []
    for f in sorted(d.glob("*.skipped.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError) as e:
            raise ExperimentError(f"{f}: unreadable skip note ({e})") from None
    return out


def markdown(
    summ: dict[str, Any],
    pngs: list[Path],
    matrix: dict[str, Any] | None = None,
    skipped: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> str:
    lines = [
        "# remap experiment report",
        "",
        "Figures as min / median / max over runs (one number when all runs agree); RSS from "
        "the page walk, VmRSS from /proc/PID/status.",
        "",
    ]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    for r in rows(summ):
        lines.append("| " + " | ".join(r) + " |")
    for exp, cases in summ.items():
        errs = sorted({e for s in cases.values() for e in s["errors"]})
        if errs:
            lines += ["", f"Errors in {exp}:", *[f"- {e}" for e in errs]]
    if matrix and set(matrix["kernels"]) != {"host"}:
        heads, mrows = matrix_table(matrix)
        lines += [
            "",
            "## Kernels",
            "",
            "Medians over runs of the final step; lag runs = runs whose VmRSS is below the walk.",
            "",
            "| " + " | ".join(heads) + " |",
            "|" + "---|" * len(heads),
            *["| " + " | ".join(r) + " |" for r in mrows],
            "",
            *[
                f"- **{k}**: {v['mechanism']}"
                for k, v in matrix["kernels"].items()
                if v.get("mechanism")
            ],
        ]
    if skipped:
        lines += ["", "## Not run", ""]
        lines += [f"- **{k['experiment']}**: skipped, not passed: {k['skipped']}" for k in skipped]
    for p in pngs:
        lines += ["", f"![{p.stem}]({p.name})"]
    return "\n".join(lines) + "\n"


def plot(recs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """One PNG: per experiment, idle RSS histogram per case; gap vs RSS where gaps exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    kernels = {kernel_of(r) for rs in recs.values() for r in rs}
    if kernels - {"host"}:
        panels.append(("kernels", "", [r for rs in recs.values() for r in rs]))
    for exp, rs in recs.items():
        many_cases = len({r["case"] for r in rs}) > 3
        panels.append(("counters" if many_cases else "hist", exp, rs))
        if len({r.get("stack_gap") for r in rs} - {None}) > 1:
            panels.append(("gap", exp, rs))
        if any("pages" in s for s in rs[0].get("steps", [])):
            panels.append(("pages", exp, rs))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    for ax, (kind, exp, rs) in zip(axes[:, 0], panels, strict=True):
        cases = sorted({r["case"] for r in rs})
        if kind == "hist":
            vals = sorted({r["final_rss_kb"] for r in rs if r.get("final_rss_kb") is not None})
            width = 0.8 / max(1, len(cases))
            for i, c in enumerate(cases):
                cnt = [
                    sum(1 for r in rs if r["case"] == c and r.get("final_rss_kb") == v)
                    for v in vals
                ]
                ax.bar([j + i * width for j in range(len(vals))], cnt, width, label=c)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(vals))], [f"{v}" for v in vals])
            ax.set_xlabel("idle RSS, kB (page walk)")
            ax.set_ylabel("runs")
            ax.set_title(f"{exp}: idle RSS per run")
        elif kind == "pages":
            _page_map(ax, exp, rs[0])
            continue
        elif kind == "kernels":
            _kernel_panel(ax, rs)
            continue
        elif kind == "counters":
            cases = list(dict.fromkeys(r["case"] for r in rs))  # file order, not sorted

            def med(c: str, k: str, rs: list = rs) -> float:
                return statistics.median(
                    r[k] for r in rs if r["case"] == c and r.get(k) is not None
                )

            xs = range(len(cases))
            ax.bar(
                [x - 0.2 for x in xs],
                [med(c, "final_rss_kb") for c in cases],
                0.4,
                label="page walk",
            )
            ax.bar(
                [x + 0.2 for x in xs],
                [med(c, "final_vmrss_kb") for c in cases],
                0.4,
                label="status VmRSS",
            )
            ax.set_xticks(list(xs), cases, rotation=20, fontsize=8)
            ax.set_ylabel("kB (median over runs)")
            ax.set_title(f"{exp}: RSS counter vs page walk")
            ax.legend(fontsize=8)
            continue
        else:
            for c in cases:
                pts = [
                    (r["stack_gap"], r["final_rss_kb"])
                    for r in rs
                    if r["case"] == c and r.get("stack_gap") is not None
                ]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=c, alpha=0.7)
            ax.set_xlabel("random gap below argv/env strings, bytes (arch_align_stack)")
            ax.set_ylabel("idle RSS, kB")
            ax.set_title(f"{exp}: stack gap vs idle RSS")
        if len(cases) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _kernel_panel(ax, rs: list[dict[str, Any]]) -> None:
    """VmRSS against page-walk RSS, every measured step of every run, one colour per kernel."""
    ks = sorted({kernel_of(r) for r in rs}, key=lambda k: (k != "host", k))
    top = 4
    for k in ks:
        pts = [
            (s["rss_kb"], s["vmrss_kb"])
            for r in rs
            if kernel_of(r) == k
            for s in r.get("steps", [])
            if s.get("rss_kb") and s.get("vmrss_kb")
        ]
        if not pts:
            continue
        top = max(top, *(max(p) for p in pts))
        rel = next(r.get("kernel") for r in rs if kernel_of(r) == k)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, alpha=0.6, label=f"{k} ({rel})")
    ax.plot([4, top], [4, top], color="#888888", linewidth=0.8, label="VmRSS = page walk")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("RSS from the page walk, kB")
    ax.set_ylabel("VmRSS (/proc/PID/status), kB")
    ax.set_title("VmRSS against page-walk RSS per kernel (every step of every run)")
    ax.legend(fontsize=8)


BACKING_COLOURS = {"file": "#4c72b0", "anon": "#dd8452", "shmem": "#55a868", "pfnmap": "#999999"}


def _page_map(ax, exp: str, rec: dict[str, Any]) -> None:
    """Residency map of one run: a row per step, a cell per page present at any step."""
    steps = [s for s in rec["steps"] if "pages" in s]
    addrs = sorted({int(p["addr"], 16) for s in steps for p in s["pages"]})
    col = {a: i for i, a in enumerate(addrs)}
    labels = {}
    for y, s in enumerate(steps):
        for p in s["pages"]:
            a = int(p["addr"], 16)
            labels[a] = p["label"]
            ax.add_patch(_rect(col[a], y, BACKING_COLOURS.get(p["backing"], "#c44e52")))
    ax.set_xlim(0, max(1, len(addrs)))
    ax.set_ylim(len(steps), 0)
    ax.set_yticks([y + 0.5 for y in range(len(steps))], [s["name"] for s in steps], fontsize=8)
    ax.set_xticks(
        [i + 0.5 for i in range(len(addrs))],
        [f"{labels[a]}\n{a:#x}" for a in addrs],
        fontsize=6,
        rotation=90,
    )
    ax.set_title(f"{exp}: resident pages per step, run {rec['run']} (blue file, orange anonymous)")


def _rect(x: int, y: int, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x + 0.05, y + 0.1), 0.9, 0.8, color=colour)


def report(d: Path, png: Path | None = None) -> tuple[dict[str, Any], Path, Path]:
    """Summarise DIR's records, write DIR/report.md and the PNG; return (summaries, md, png)."""
    raw = load_records(d)
    recs = by_kernel(raw)
    summ = summaries(recs)
    png = plot(recs, png or d / "report.png")
    md = d / "report.md"
    pngs = [png] if png.parent.resolve() == d.resolve() else []
    md.write_text(markdown(summ, pngs, kernel_matrix(raw), load_skipped(d)))
    return summ, md, png
