#!/usr/bin/env bash
# Sets up everything the tests need (see scripts/setup.sh) and runs the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k mount -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The radosgw durability test needs Ceph; the mount, pipeline tests need FUSE and podman; the
# cache tests read the page cache with util-linux's fincore. (strace, for the traced opens
# outside /pfs, is in setup.sh's own list.)
export PFSFS_SETUP_EXTRA_DEBS="${PFSFS_SETUP_EXTRA_DEBS:-radosgw ceph-mon ceph-osd ceph-common util-linux}"
source scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
