#!/usr/bin/env python3
"""One table of issue 19's rows from the sections ``scripts/bench.sh`` ran.

Reads, from the directory given, what the sections left there: ``speed.json``
(``bench_speed.py --json``), ``s3.json`` (``bench_s3.py --json``) and ``mount.txt`` (what
``bench_mount.py`` printed: its table is taken as printed, columns split where two or more
spaces stand, so this keeps working while that table changes). A missing or unreadable
section is one line saying so. Prints figures (min / median / max where a section measured
several runs), ratios against the references measured in the same run, and each target's
verdict; then the machine's load and CPU count.

    .venv/bin/python scripts/bench_summary.py DIR [--load-before X]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEAD = ("section", "workload", "min", "median", "max", "ratio", "target")


def plural(runs: int) -> str:
    return f"{runs} run" if runs == 1 else f"{runs} runs"


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit in ("MB/s", "files/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.0f}"


def speed_rows(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    """bench_speed's rows: against each reference, the median (min-max) of the per-run
    ratios."""
    out = []
    runs = max((int(r.get("runs", 0)) for r in doc["rows"]), default=0)
    section = f"speed ({plural(runs)}{'' if doc.get('cold', True) else ', warm'})"
    for row in doc["rows"]:
        if "error" in row:
            out.append((section, row["label"], "failed:", row["error"], "", "", ""))
            continue
        unit = row["unit"]
        spans = row.get("ratio_range", {})
        ratio = ", ".join(
            f"{v:.0%} ({spans[k][0]:.0%}-{spans[k][1]:.0%}) of {k}"
            if k in spans
            else f"{v:.0%} of {k}"
            for k, v in row.get("ratios", {}).items()
        )
        verdict = ""
        if "met" in row:
            verdict = f"{row['target']}: {'met' if row['met'] else 'MISSED'}"
        figures = (fmt(row["min"], unit), fmt(row["median"], unit), fmt(row["max"], unit))
        out.append((section, row["label"], *figures, ratio, verdict))
    return out


def s3_rows(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    """bench_s3's rows: ratios are the median (min-max) of the per-run ratios."""
    out = []
    runs = max((int(r.get("runs", 0)) for r in doc["rows"]), default=0)
    section = f"S3, moto ({plural(runs)})"
    for row in doc["rows"]:
        if "error" in row:
            out.append((section, row["label"], row["error"], "", "", "", ""))
            continue
        unit = row["unit"]
        ratio = ""
        if "ratio_median" in row:
            ratio = (
                f"{row['ratio_median']:.0%} ({row['ratio_min']:.0%}-{row['ratio_max']:.0%}) "
                f"of {row['reference']}"
            )
        figures = (fmt(row["min"], unit), fmt(row["median"], unit), fmt(row["max"], unit))
        out.append((section, row["label"], *figures, ratio, row.get("verdict", "")))
    return out


def _tables(lines: list[str]) -> Iterator[list[dict[str, str]]]:
    """Every table printed: a header line starting with "operation", then rows (columns split
    where two or more spaces stand) up to a blank line."""
    for start, line in enumerate(lines):
        if not line.startswith("operation"):
            continue
        head = re.split(r"\s{2,}", line.strip())
        rows = []
        for row in lines[start + 1 :]:
            if not row.strip():
                break
            if set(row.strip()) <= {"-", " "}:
                continue
            cols = dict(zip(head, re.split(r"\s{2,}", row.strip()), strict=False))
            if len(cols) < 2:
                break
            rows.append(cols)
        yield rows


def mount_rows(text: str) -> list[tuple[str, ...]]:
    """bench_mount's tables as printed: against the reference FUSE filesystem (its pfsfs
    column, ratio, target and result) and against the disk (the physical table: pfsfs's
    median [min-max], the disk's figure, ratio, target and result)."""
    lines = text.splitlines()
    best = re.search(r"best of (\d+)", text)
    runs = re.search(r"median \[min-max\] of (\d+)", text)
    out = []
    for table in _tables(lines):
        for cols in table:
            verdict = " ".join(
                x for x in (cols.get("target", ""), cols.get("result", "")) if x not in ("", "-")
            )
            ratio = cols.get("pfsfs/ref", "")
            if "pfsfs (median [min-max])" in cols:  # the physical table
                section = f"mount, disk ({plural(int(runs.group(1))) if runs else 'runs'})"
                ref = f"{cols.get('reference', '')} {cols.get('reference value', '')}".strip()
                ratio = f"{ratio} of {ref}" if ratio and ratio != "-" else ""
                figure = cols["pfsfs (median [min-max])"]
            else:
                section = f"mount (best of {best.group(1)})" if best else "mount"
                ref = cols.get("reference", "")
                tmpfs = cols.get("tmpfs", "-")
                ratio = f"{ratio} of reference ({ref}; tmpfs {tmpfs})" if ratio else ""
                figure = cols.get("pfsfs", "")
            out.append((section, cols.get("operation", "?"), "", figure, "", ratio, verdict))
    if not out:
        return [("mount", "no table found in its output", "", "", "", "", "")]
    return out


def load_section(path: Path, parse: Any, name: str) -> list[tuple[str, ...]]:
    if not path.exists():
        return [(name, "not run (not picked by BENCH_ONLY, or it failed)", "", "", "", "", "")]
    try:
        if path.suffix == ".json":
            return parse(json.loads(path.read_text()))
        return parse(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        return [(name, f"unreadable output ({exc})", "", "", "", "", "")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--load-before", type=float, help="the 1-min load average at the start")
    args = ap.parse_args()
    rows = [
        *load_section(args.dir / "speed.json", speed_rows, "speed"),
        *load_section(args.dir / "mount.txt", mount_rows, "mount"),
        *load_section(args.dir / "s3.json", s3_rows, "S3"),
    ]
    widths = [max(len(r[i]) for r in (HEAD, *rows)) for i in range(len(HEAD))]
    right = {2, 3, 4}
    for row in (HEAD, tuple("-" * w for w in widths), *rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    load = os.getloadavg()
    before = f"{args.load_before:.2f} at the start, " if args.load_before is not None else ""
    print(
        f"\n{os.cpu_count()} CPUs; load average (1 min) {before}{load[0]:.2f} at the end; "
        "ratios are against references measured in the same run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
