#!/usr/bin/env bash
# Runs issue 19's benchmarks with their references in the same run, then prints one summary
# table of figures and ratios against the targets:
#
#   speed  scripts/bench_speed.py: put, re-put, 10k small files, get against cp -a, dd, cat
#          (3 interleaved runs: min/median/max, page cache dropped before each step)
#   mount  scripts/bench_mount.py --repeat 3: the mount rows against tmpfs and a reference FUSE fs
#   s3     scripts/bench_s3.py: put and cold reads against raw boto3 on one moto server
#          (5 interleaved runs: min/median/max and per-run ratios)
#
# Each section's own table is printed as it finishes; the summary comes last, with the load
# average at the start and end, then the machine facts that bound the figures
# (scripts/bench_machine.py: wake-up round trips, guest halt polling, CPU the host took).
# BENCH_ONLY=speed,mount,s3 picks sections (any of them, comma-separated); BENCH_ALL=1 also
# runs the storage and pipeline benchmarks (bench_store.py, bench_pipeline.py), which are not
# issue 19's. A section that fails is reported in the summary and the others still run; the
# exit code is 0 whatever the figures are.
#
# Quick mode for a smoke run (small sizes, one or two runs): BENCH_QUICK=1 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
PY=.venv/bin/python
quick="${BENCH_QUICK:-}"
only=",${BENCH_ONLY:-speed,mount,s3},"
out=$(mktemp -d /tmp/pfsfs-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "pfsfs benchmarks, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
# wake-up round trips and CPU counters now; after the summary, the CPU the host took meanwhile
$PY scripts/bench_machine.py --start "$out/machine.json" || echo "bench: no machine facts" >&2

wants() { [[ "$only" == *",$1,"* ]]; }
section() {  # section NAME CMD...: run one benchmark, its failure noted, not fatal
  local name=$1; shift
  echo
  echo "== $name ($*)"
  "$@" || echo "bench: the $name section failed (exit $?)" >&2
}

if wants speed; then
  if [ -n "$quick" ]; then
    section speed $PY scripts/bench_speed.py --quick --json "$out/speed.json"
  else
    section speed $PY scripts/bench_speed.py --runs 3 --json "$out/speed.json"
  fi
fi
if wants mount && [ -f scripts/bench_mount.py ]; then
  # Its table is kept as printed (it goes on changing) and read back by bench_summary.py.
  if [ -n "$quick" ]; then
    section mount bash -o pipefail -c "$PY scripts/bench_mount.py --quick | tee '$out/mount.txt'"
  else
    section mount bash -o pipefail -c "$PY scripts/bench_mount.py --repeat 3 | tee '$out/mount.txt'"
  fi
fi
if wants s3; then
  if [ -n "$quick" ]; then
    section s3 $PY scripts/bench_s3.py --quick --json "$out/s3.json"
  else
    section s3 $PY scripts/bench_s3.py --runs 5 --json "$out/s3.json"
  fi
fi
if [ -n "${BENCH_ALL:-}" ]; then
  if [ -n "$quick" ]; then
    section store $PY scripts/bench_store.py --size-mib 128 --small-files 2000 --commits 1000
    section pipeline $PY scripts/bench_pipeline.py --quick
  else
    section store $PY scripts/bench_store.py
    section pipeline $PY scripts/bench_pipeline.py
  fi
fi

echo
echo "== summary (issue 19)"
$PY scripts/bench_summary.py "$out" --load-before "$load_before"
echo
$PY scripts/bench_machine.py --report "$out/machine.json"
