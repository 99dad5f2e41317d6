#!/usr/bin/env bash
# A local S3 server to try pfsfs's S3 store with, on 127.0.0.1 only, and the lines to paste into
# another shell to use it. Runs in the foreground; Ctrl-C (or SIGTERM) stops the server.
#
#   scripts/s3-local.sh                  moto_server (in memory: its data goes when it stops)
#   scripts/s3-local.sh --radosgw DIR    a single-node Ceph cluster in DIR (scripts/s3-radosgw.sh:
#                                        disk-backed, kept in DIR; needs root and the Ceph packages)
#   options: --port N (moto; default 9500), --bucket NAME (default pfsfs), --prefix P (default try)
#
# It creates nothing on the server: the printed `pfsfs init ... --create-bucket` makes the bucket.
# moto accepts any credentials, so the printed ones are dummies; radosgw's are the ones
# s3-radosgw.sh made for its user.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "s3-local: $*" >&2; exit 1; }

port=9500 bucket=pfsfs prefix=try radosgw_dir=""
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --bucket) bucket=${2:?--bucket needs a name}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
    --radosgw) radosgw_dir=${2:?--radosgw needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3

print_lines() {  # print_lines ENDPOINT ACCESS_KEY SECRET_KEY
  cat <<EOF
# S3 server on $1. In another shell (pfsfs on PATH: source scripts/setup.sh), paste:
export AWS_ACCESS_KEY_ID=$2 AWS_SECRET_ACCESS_KEY=$3 AWS_DEFAULT_REGION=us-east-1
export PFSFS_HOME="\$(mktemp -d /tmp/pfsfs-s3-home.XXXXXX)"   # a home of its own
pfsfs init --store s3://$bucket/$prefix --endpoint-url $1 --create-bucket
# then e.g.: pfsfs repo create r && echo hi | pfsfs put r@master:/hi -f - && pfsfs cat r@master:/hi
EOF
}

if [ -n "$radosgw_dir" ]; then
  env_lines=$("$ROOT/scripts/s3-radosgw.sh" start "$radosgw_dir")
  trap '"$ROOT/scripts/s3-radosgw.sh" stop "$radosgw_dir"' EXIT
  trap 'exit 0' INT TERM
  eval "$env_lines"
  print_lines "$S3_ENDPOINT_URL" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
  echo "s3-local: radosgw is running (data in $radosgw_dir); Ctrl-C stops it" >&2
  while :; do sleep 3600 & wait $!; done  # wait: a signal interrupts it at once
fi

moto=$(dirname "$PY")/moto_server
[ -x "$moto" ] || moto=$(command -v moto_server) \
  || die "moto_server is not installed: run scripts/setup.sh (it installs pfsfs's test extras)"
endpoint="http://127.0.0.1:$port"
"$PY" -c "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', $port))" 2>/dev/null \
  || die "port $port is in use: give another with --port N"

"$moto" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null; wait "$moto_pid" 2>/dev/null' EXIT
trap 'exit 0' INT TERM
for _ in $(seq 200); do
  kill -0 "$moto_pid" 2>/dev/null || die "moto_server exited at start"
  if "$PY" -c "import urllib.request as u; u.urlopen('$endpoint/moto-api/', timeout=1)" \
      2>/dev/null; then
    print_lines "$endpoint" pfsfs-local pfsfs-local-secret
    echo "s3-local: moto_server is running on $endpoint (in memory); Ctrl-C stops it" >&2
    wait "$moto_pid" || true
    exit 0
  fi
  sleep 0.1
done
die "moto_server did not answer on $endpoint within 20 s"
