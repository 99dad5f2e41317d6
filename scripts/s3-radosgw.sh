#!/usr/bin/env bash
# Run a throw-away, single-node Ceph cluster (1 mon, 1 bluestore OSD on a sparse file, radosgw)
# in a directory, as a real disk-backed S3 server for tests.
#
#   scripts/s3-radosgw.sh start DIR    create the cluster in DIR (or restart an existing one) and
#                                      print the endpoint and credentials as `export` lines
#   scripts/s3-radosgw.sh stop DIR     stop the daemons; the data stays in DIR
#   scripts/s3-radosgw.sh destroy DIR  stop the daemons and delete DIR
#
# Needs root and the Debian packages: radosgw ceph-mon ceph-osd ceph-common.
# Settings that matter (measured): `ms mon client mode = crc` for the gateway, and
# `tcp_nodelay=1` on the beast frontend (without it small requests wait ~40 ms for delayed ACKs).
# radosgw wants the ETag in If-Match without quotes and answers 412 for a missing key.
set -euo pipefail

die() { echo "s3-radosgw: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "timed out after ${secs}s waiting for $what (logs in $DIR/log)"
        fi
        sleep 0.2
    done
}

ceph_() { ceph -c "$DIR/ceph.conf" -n client.admin -k "$DIR/admin.keyring" "$@"; }

create() {
    command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null && command -v radosgw >/dev/null \
        || die "install the Debian packages first: apt-get install radosgw ceph-mon ceph-osd ceph-common"
    mkdir -p "$DIR"/{mon/ceph-a,osd/ceph-0,rgw,run,log}
    local fsid mon_port rgw_port
    fsid=$(uuidgen)
    mon_port=$(free_port)
    rgw_port=$(free_port)
    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
keyring = $DIR/admin.keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
ms bind ipv6 = false

[mon.a]
mon data = $DIR/mon/ceph-a

[osd.0]
osd data = $DIR/osd/ceph-0
keyring = $DIR/osd/ceph-0/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 8589934592
bluestore fsck on mount = false
osd memory target = 1073741824
bluestore cache autotune = false
bluestore cache size = 268435456

[client.rgw.gw]
keyring = $DIR/rgw/keyring
rgw frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
ms mon client mode = crc
rgw data = $DIR/rgw
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw thread pool size = 64
EOF
    echo "$rgw_port" >"$DIR/rgw_port"

    # Monitor: keys, monmap, mkfs.
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/admin.keyring" >/dev/null
    monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$DIR/monmap" >/dev/null
    ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring"
    ceph-mon -c "$DIR/ceph.conf" -i a >>"$DIR/log/daemons.out" 2>&1
    wait_for 30 "the monitor" ceph_ --connect-timeout 2 mon stat

    # One OSD on a sparse file.
    local osd_uuid osd_secret osd_id
    osd_uuid=$(uuidgen)
    osd_secret=$(ceph-authtool --gen-print-key)
    osd_id=$(echo "{\"cephx_secret\": \"$osd_secret\"}" | ceph_ osd new "$osd_uuid" -i -)
    [[ $osd_id == 0 ]] || die "expected osd id 0, got $osd_id"
    ceph-authtool --create-keyring "$DIR/osd/ceph-0/keyring" --name osd.0 \
        --add-key "$osd_secret" >/dev/null
    ceph-osd -c "$DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/mkfs.log" 2>&1 \
        || die "ceph-osd --mkfs failed: $(tail -5 "$DIR/log/mkfs.log")"

    # Gateway key and an S3 user.
    ceph_ auth get-or-create client.rgw.gw mon 'allow rw' osd 'allow rwx' \
        -o "$DIR/rgw/keyring" >/dev/null
    start_daemons
    local access secret
    access=$(python3 -c 'import secrets; print("PFSFS" + secrets.token_hex(8).upper())')
    secret=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')
    radosgw-admin -c "$DIR/ceph.conf" -n client.admin -k "$DIR/admin.keyring" user create \
        --uid=pfsfs --display-name=pfsfs --access-key="$access" --secret-key="$secret" \
        >"$DIR/log/user.json"
    umask 077
    printf '%s\n%s\n' "$access" "$secret" >"$DIR/credentials"
}

running() {  # running NAME: the daemon's pid file names a live process
    local pidfile="$DIR/run/$1.pid"
    [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start_daemons() {
    running mon.a || ceph-mon -c "$DIR/ceph.conf" -i a >>"$DIR/log/daemons.out" 2>&1
    wait_for 30 "the monitor" ceph_ --connect-timeout 2 mon stat
    running osd.0 || ceph-osd -c "$DIR/ceph.conf" -i 0 >>"$DIR/log/daemons.out" 2>&1
    wait_for 60 "the OSD to come up" bash -c \
        "ceph -c '$DIR/ceph.conf' -k '$DIR/admin.keyring' --connect-timeout 2 osd dump \
         | grep -q '^osd.0 up'"
    running client.rgw.gw \
        || radosgw -c "$DIR/ceph.conf" -n client.rgw.gw >>"$DIR/log/daemons.out" 2>&1
    local port
    port=$(cat "$DIR/rgw_port")
    wait_for 60 "radosgw on port $port" \
        python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/', timeout=2)"
}

stop_daemons() {
    local name pid
    for name in client.rgw.gw osd.0 mon.a; do
        if running "$name"; then
            pid=$(cat "$DIR/run/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/run/$name.pid"
    done
}

print_env() {
    local access secret
    { read -r access; read -r secret; } <"$DIR/credentials"
    echo "export S3_ENDPOINT_URL=http://127.0.0.1:$(cat "$DIR/rgw_port")"
    echo "export AWS_ACCESS_KEY_ID=$access"
    echo "export AWS_SECRET_ACCESS_KEY=$secret"
    echo "export AWS_DEFAULT_REGION=us-east-1"
}

[[ $# == 2 ]] || die "usage: $0 start|stop|destroy DIR"
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)

case $cmd in
start)
    if [[ -f $DIR/credentials ]]; then
        start_daemons
    elif [[ -e $DIR/ceph.conf ]]; then
        die "$DIR holds a half-made cluster; run: $0 destroy $DIR"
    else
        create
    fi
    print_env
    ;;
stop) stop_daemons ;;
destroy)
    stop_daemons
    rm -rf "$DIR"
    ;;
*) die "usage: $0 start|stop|destroy DIR" ;;
esac
