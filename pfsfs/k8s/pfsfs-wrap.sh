#!/bin/sh
# pfsfs-wrap: the user container's PID 1 in a pfsfs Kubernetes Job pod (POSIX sh: dash, busybox
# sh, bash). It runs the transform once per datum the sidecar offers and exits 0 only after the
# sidecar has made every datum's output durable. It talks to the sidecar through files in
# $PFSFS_CTL (an emptyDir both containers mount), each written by atomic rename:
#
#   ready          sidecar  the sidecar is up (the wrapper waits for it)
#   datum.N        sidecar  datum N is prepared: `export` lines (PFS_DATUM_ID, PFS_<NAME>, ...)
#                           (or failed.N at once: it could not be prepared)
#   done           sidecar  no datum left for this pod
#   request.N      wrapper  the command exited 0 for datum N: store /pfs/out please
#   abort.N        wrapper  the command failed (its exit code) or was terminated: store nothing
#   committed.N    sidecar  datum N's record is durable (contents: the record's key)
#   failed.N       sidecar  datum N could not be stored (contents: why)
#
# Exit codes: 0 every offered datum committed; the command's own code when it fails; 124 the
# command ran over PFSFS_WRAP_TIMEOUT seconds; 143 SIGTERM (forwarded to the command first);
# 75 the sidecar could not store the output or never answered (retriable); 86 bad usage (the
# Job's podFailurePolicy fails the whole Job on 86: retrying cannot help).
# Environment: PFSFS_CTL (default /run/pfsfs), PFSFS_WRAP_TIMEOUT (seconds per datum),
# PFSFS_WRAP_READY_TIMEOUT and PFSFS_WRAP_COMMIT_TIMEOUT (seconds, default 600),
# PFSFS_WRAP_STDIN (text given to the command on stdin).

ctl=${PFSFS_CTL:-/run/pfsfs}
ready_timeout=${PFSFS_WRAP_READY_TIMEOUT:-600}
commit_timeout=${PFSFS_WRAP_COMMIT_TIMEOUT:-600}
timeout=${PFSFS_WRAP_TIMEOUT:-}
n=0
child=
watchdog=
PFS_DATUM_ID=

say() { echo "pfsfs-wrap: $*" >&2; }

# The termination message the scheduler reads from the pod status (best effort).
report() {
    if [ -w /dev/termination-log ]; then printf '%s\n' "$*" >/dev/termination-log 2>/dev/null; fi
    return 0
}

# put NAME TEXT: write $ctl/NAME atomically.
put() {
    printf '%s\n' "$2" >"$ctl/.$1.$$" && mv -f "$ctl/.$1.$$" "$ctl/$1"
}

if sleep 0.1 2>/dev/null; then tick=0.1 per_second=10; else tick=1 per_second=1; fi

# await SECONDS NAME...: set `got` to the first NAME that exists in $ctl; status 1 on timeout.
# (No command substitution: a subshell would delay the SIGTERM trap until it returns.)
await() {
    left=$(($1 * per_second))
    shift
    got=
    while :; do
        for name in "$@"; do
            if [ -e "$ctl/$name" ]; then
                got=$name
                return 0
            fi
        done
        [ "$left" -gt 0 ] || return 1
        left=$((left - 1))
        sleep "$tick"
    done
}

stop_watchdog() {
    if [ -n "$watchdog" ]; then
        kill "$watchdog" 2>/dev/null
        wait "$watchdog" 2>/dev/null
        watchdog=
    fi
}

on_term() {
    trap '' TERM INT HUP
    if [ -n "$child" ]; then
        say "SIGTERM: forwarding it to the command"
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
    fi
    stop_watchdog
    if [ "$n" -gt 0 ] && [ ! -e "$ctl/committed.$n" ]; then put "abort.$n" "143 terminated"; fi
    say "end datum ${PFS_DATUM_ID:-none} terminated"
    report "terminated (SIGTERM) during datum ${PFS_DATUM_ID:-none}"
    exit 143
}
trap on_term TERM INT HUP

[ "${1:-}" = "--" ] && shift
if [ "$#" -eq 0 ]; then
    say "usage: pfsfs-wrap -- COMMAND [ARG]..."
    report "pfsfs-wrap: no command given"
    exit 86
fi
if [ ! -d "$ctl" ]; then
    say "the control directory $ctl does not exist (is the pfsfs-ctl volume mounted?)"
    report "pfsfs-wrap: no control directory $ctl"
    exit 86
fi

if ! await "$ready_timeout" ready; then
    say "the pfsfs sidecar was not ready after ${ready_timeout}s"
    report "the pfsfs sidecar was not ready after ${ready_timeout}s"
    exit 75
fi

while :; do
    n=$((n + 1))
    if ! await "$commit_timeout" "datum.$n" "failed.$n" done; then
        say "the sidecar offered no datum after ${commit_timeout}s"
        report "the pfsfs sidecar offered no datum after ${commit_timeout}s"
        exit 75
    fi
    if [ "$got" = done ]; then
        n=$((n - 1))
        say "done: $n datum(s) committed"
        report "done: $n datum(s) committed"
        exit 0
    fi
    if [ "$got" = "failed.$n" ]; then
        why=$(cat "$ctl/failed.$n")
        say "the sidecar could not prepare datum $n: $why"
        report "the pfsfs sidecar could not prepare a datum: $why"
        exit 75
    fi
    . "$ctl/datum.$n"
    say "begin datum $PFS_DATUM_ID"
    rm -f "$ctl/.timeout.$n"
    if [ -n "${PFSFS_WRAP_STDIN+set}" ]; then
        "$@" <<EOF &
$PFSFS_WRAP_STDIN
EOF
        child=$!
    else
        "$@" </dev/null &
        child=$!
    fi
    if [ -n "$timeout" ]; then
        # Short sleeps: killing the watchdog then leaves no long sleep behind holding stderr.
        (
            left=$((timeout * per_second))
            while [ "$left" -gt 0 ]; do sleep "$tick"; left=$((left - 1)); done
            : >"$ctl/.timeout.$n"
            kill -TERM "$child" 2>/dev/null
            left=$((10 * per_second))
            while [ "$left" -gt 0 ] && kill -0 "$child" 2>/dev/null; do
                sleep "$tick"
                left=$((left - 1))
            done
            kill -KILL "$child" 2>/dev/null
        ) </dev/null >/dev/null 2>&1 &
        watchdog=$!
    fi
    wait "$child"
    rc=$?
    child=
    stop_watchdog
    if [ -e "$ctl/.timeout.$n" ]; then
        put "abort.$n" "124 timed out after ${timeout}s"
        say "end datum $PFS_DATUM_ID timed out after ${timeout}s"
        report "datum $PFS_DATUM_ID timed out after ${timeout}s"
        exit 124
    fi
    if [ "$rc" -ne 0 ]; then
        put "abort.$n" "$rc exit code $rc"
        say "end datum $PFS_DATUM_ID failed: exit code $rc"
        report "datum $PFS_DATUM_ID failed: exit code $rc"
        exit "$rc"
    fi
    put "request.$n" "$PFS_DATUM_ID"
    if ! await "$commit_timeout" "committed.$n" "failed.$n"; then
        say "end datum $PFS_DATUM_ID: the sidecar did not store the output in ${commit_timeout}s"
        report "datum $PFS_DATUM_ID: the pfsfs sidecar did not store the output"
        exit 75
    fi
    if [ "$got" = "failed.$n" ]; then
        why=$(cat "$ctl/failed.$n")
        say "end datum $PFS_DATUM_ID not stored: $why"
        report "datum $PFS_DATUM_ID not stored: $why"
        exit 75
    fi
    say "end datum $PFS_DATUM_ID committed"
done
