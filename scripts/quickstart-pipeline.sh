# Sourced by scripts/quickstart.sh (which defines `say` and `run`, exports PFSFS_HOME and runs
# from the repository root): the fruit-stand pipeline demo, end to end. A pipeline scheduler
# runs in the background while new sales arrive; it is stopped at the end (and on any exit).

say "pipelines: the fruit stand (examples/fruit-stand)"
_pfsfs_ex=examples/fruit-stand
run pfsfs repo create data -d "fruit sales"
run pfsfs put data@master:/sales -f "$_pfsfs_ex/sales"

python3 -m pfsfs.pipeline.scheduler --home "$PFSFS_HOME" >"$PFSFS_HOME/scheduler.log" 2>&1 &
_pfsfs_scheduler=$!
_pfsfs_stop_scheduler() {
  if kill -TERM "$_pfsfs_scheduler" 2>/dev/null; then
    wait "$_pfsfs_scheduler" 2>/dev/null || true
  fi
}
# Stop the scheduler on any exit, then run the EXIT trap quickstart.sh had set.
_pfsfs_prev_exit=""
if [ -n "$(trap -p EXIT)" ]; then
  eval "set -- $(trap -p EXIT)"
  _pfsfs_prev_exit="$3"
fi
trap '_pfsfs_stop_scheduler; eval "$_pfsfs_prev_exit"' EXIT

run pfsfs pipeline create -f "$_pfsfs_ex/sum.yaml"
run pfsfs wait data@master --timeout 120
run pfsfs ls sum@master
run pfsfs cat sum@master:/apple
say "a second file of sales arrives; the pipeline runs again by itself"
run pfsfs put data@master:/sales2 -f "$_pfsfs_ex/sales2"
run pfsfs wait data@master --timeout 120
run pfsfs cat sum@master:/apple
run pfsfs job list --pipeline sum
run pfsfs provenance sum@master
run pfsfs why sum@master:/kiwi
run pfsfs lineage sum@master --mermaid

_pfsfs_stop_scheduler
if [ -n "$_pfsfs_prev_exit" ]; then
  trap "$_pfsfs_prev_exit" EXIT
else
  trap - EXIT
fi
