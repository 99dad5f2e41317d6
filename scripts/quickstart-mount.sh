# Sourced by scripts/quickstart.sh (which defines `say` and `run`, exports PFSFS_HOME and $work):
# the researcher's journey on a mount — edit with shell tools, snapshot, log, time travel,
# mount an old commit read-only, roll back. The first `pfsfs mount` starts the daemon.

say "mounts: work on features@master as a plain directory"
mnt="$work/features"
mkdir -p "$mnt" "$work/old"
run pfsfs mount features@master "$mnt"
run ls -l "$mnt"
say "edit with ordinary tools"
printf 'doc1 0.3\ndoc2 0.8\ndoc3 0.2\ndoc4 0.6\n' > "$mnt/tfidf.tsv"
mkdir -p "$mnt/models" && echo "weights v1" > "$mnt/models/model.txt"
run cat "$mnt/tfidf.tsv"
run pfsfs mounts
run pfsfs snapshot "$mnt" -m "tfidf, min_df=1, plus a model"
run pfsfs log features@master -n 3
say "every commit is reachable by path under the hidden .pfs/"
run cat "$mnt/.pfs/log"
echo "weights v2 (worse)" > "$mnt/models/model.txt"
run pfsfs unmount "$mnt"
run pfsfs diff features@master~1 features@master
say "mount the previous commit read-only, next to the branch"
run pfsfs mount features@master~1 "$work/old"
run cat "$work/old/models/model.txt"
run sh -c "echo oops > '$work/old/x' || echo 'read-only, as expected'"
run pfsfs unmount "$work/old"
run pfsfs rollback features@master --to master~1
run pfsfs cat features@master:/models/model.txt
