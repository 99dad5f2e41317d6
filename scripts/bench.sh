#!/usr/bin/env bash
# Runs every benchmark of the project and prints their tables one after another.
# Quick mode for a smoke run: BENCH_QUICK=1 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
PY=.venv/bin/python
quick="${BENCH_QUICK:-}"
# Issue 19's table (put, re-put, small files, get, with cp/dd/cat references in the same run);
# BENCH_ONLY=speed runs only this one.
echo "== speed against the disk (scripts/bench_speed.py)"
if [ -n "$quick" ]; then $PY scripts/bench_speed.py --quick; else $PY scripts/bench_speed.py; fi
if [ "${BENCH_ONLY:-}" = speed ]; then exit 0; fi
echo
echo "== storage (scripts/bench_store.py)"
if [ -n "$quick" ]; then
  $PY scripts/bench_store.py --size-mib 128 --small-files 2000 --commits 1000
else
  $PY scripts/bench_store.py
fi
for b in scripts/bench_mount.py scripts/bench_pipeline.py scripts/bench_s3.py; do
  if [ -f "$b" ]; then
    echo
    echo "== $(basename "$b" .py) ($b)"
    if [ -n "$quick" ]; then $PY "$b" --quick; else $PY "$b"; fi
  fi
done
