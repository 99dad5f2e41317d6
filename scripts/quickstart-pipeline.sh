# Sourced by scripts/quickstart.sh (which defines `say` and `run`, exports PFSFS_HOME and runs
# from the repository root): the fruit-stand pipeline demo, end to end. `pipeline create`
# starts the daemon if it is not running; the daemon's scheduler runs the pipeline whenever
# new sales are committed. quickstart.sh stops the daemon on exit.

say "pipelines: the fruit stand (examples/fruit-stand)"
_pfsfs_ex=examples/fruit-stand
run pfsfs repo create data -d "fruit sales"
run pfsfs put data@master:/sales -f "$_pfsfs_ex/sales"
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
