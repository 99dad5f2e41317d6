#!/usr/bin/env bash
# Installs pfsfs (Debian packages, a venv, the package) and runs a short end-to-end demo on the
# embedded default store (a local directory; no S3, no cluster) in a throwaway home.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

export PFSFS_HOME="$(mktemp -d /tmp/pfsfs-quickstart.XXXXXX)"
work="$(mktemp -d /tmp/pfsfs-quickstart-work.XXXXXX)"
cleanup() {
  # Leave nothing behind: the daemon (it unmounts and saves), stray mounts, the temp dirs.
  set +e +o pipefail
  pfsfs daemon stop >/dev/null 2>&1
  grep -o " $work[^ ]*" /proc/self/mounts 2>/dev/null | while read -r m; do
    fusermount3 -uz "$m" 2>/dev/null || true
  done
  rm -rf "$PFSFS_HOME" "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

run pfsfs repo create features -d "tf-idf features"
printf 'doc1 0.5\ndoc2 0.7\n' > "$work/tfidf.tsv"
run pfsfs put features@master:/tfidf.tsv -f "$work/tfidf.tsv" -m "tfidf, min_df=5"
printf 'doc1 0.4\ndoc2 0.9\ndoc3 0.1\n' > "$work/tfidf.tsv"
run pfsfs put features@master:/tfidf.tsv -f "$work/tfidf.tsv" -m "tfidf, min_df=2"
run pfsfs log features@master
run pfsfs diff features@master~1 features@master
run pfsfs cat features@master~1:/tfidf.tsv
run pfsfs rollback features@master --to master~1
run pfsfs cat features@master:/tfidf.tsv
run pfsfs log features@master
source scripts/quickstart-mount.sh
source scripts/quickstart-pipeline.sh
run pfsfs stats
run pfsfs fsck --deep
echo
echo "quickstart: all steps succeeded"
