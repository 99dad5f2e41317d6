#!/usr/bin/env bash
# Build the local pfsfs container images without a registry.
#
#   scripts/build-images.sh [--force] [deps|busybox|python|pfsfs|all]...   (default: all)
#
#   deps     install podman, runc, bubblewrap, busybox-static, strace (apt-get, as root)
#   busybox  pfsfs/busybox: `podman import` of a rootfs made from Debian's busybox-static
#   python   pfsfs/python:  `podman import` of `debootstrap --variant=minbase --include=python3`
#   pfsfs    pfsfs/pfsfs:   the sidecar / scheduler image: a minbase rootfs with python3, fuse3
#            and tini, and this checkout installed from wheels (not editable) into a venv at
#            /opt/pfsfs; ENTRYPOINT tini -- pfsfs (k8s/Containerfile is the same image for a
#            registry). Rebuilt when the sources change (label io.pfsfs.source); not in `all`.
#
# Idempotent: an image that already exists is not rebuilt (unless --force); the debootstrap
# rootfs is cached as a tarball under ${PFSFS_CACHE:-~/.cache/pfsfs}. The Debian mirror is the one
# this machine's apt uses (override with PFSFS_DEBIAN_MIRROR; suite with PFSFS_DEBIAN_SUITE).
# Podman runs with the containers.conf shipped in pfsfs/pipeline (CONTAINERS_CONF).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/../pfsfs/pipeline/containers.conf}"
cache="${PFSFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pfsfs}"
suite="${PFSFS_DEBIAN_SUITE:-bookworm}"
force=0
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

die() { echo "build-images: error: $*" >&2; exit 1; }
say() { echo "build-images: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (podman import, debootstrap, apt-get)"

ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >&2
}

image_exists() { podman image exists "$1"; }

# import_image TARBALL IMAGE --change ...: import, then drop the image it replaces (--force).
import_image() {
    local tarball="$1" image="$2" old
    shift 2
    old="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
    podman import "$@" "$tarball" "$image" >/dev/null
    if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
}

# The first Debian mirror apt is configured with (deb822 .sources or one-line sources.list).
debian_mirror() {
    if [ -n "${PFSFS_DEBIAN_MIRROR:-}" ]; then echo "$PFSFS_DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk '
            /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )'"$suite"'( |$)/) { print u; exit } u=""; s="" }
            /^URIs:/ { u=$2 } /^Suites:/ { $1=""; s=$0 }
            END { if (u != "" && s ~ /(^| )'"$suite"'( |$)/) print u }' "$f" | head -n1)"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri="$(awk '$1 == "deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i+1) == "'"$suite"'") { print $i; exit } }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    echo "http://deb.debian.org/debian"
}

build_busybox() {
    local image=pfsfs/busybox
    if [ "$force" -eq 0 ] && image_exists "$image"; then say "$image exists"; return; fi
    ensure_packages podman runc busybox-static
    local root tarball="$cache/busybox-rootfs.tar" applet
    root="$(mktemp -d)"
    cleanup+=("$root")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,pfs,var/tmp}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    import_image "$tarball" "$image" \
        --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin'
    say "built $image"
}

build_python() {
    local image=pfsfs/python
    if [ "$force" -eq 0 ] && image_exists "$image"; then say "$image exists"; return; fi
    ensure_packages podman runc debootstrap
    local tarball="$cache/python-$suite-rootfs.tar.gz" mirror root
    if [ "$force" -eq 1 ] || [ ! -s "$tarball" ]; then
        mirror="$(debian_mirror)"
        root="$(mktemp -d)"
        cleanup+=("$root")
        say "debootstrap $suite from $mirror (about a minute)"
        if ! debootstrap --variant=minbase --include=python3 "$suite" "$root" "$mirror" >&2; then
            die "debootstrap could not build $suite from mirror $mirror (unreachable?);" \
                "set PFSFS_DEBIAN_MIRROR"
        fi
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        mkdir -p "$root/pfs"
        tar --numeric-owner -C "$root" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    else
        say "using cached rootfs $tarball"
    fi
    import_image "$tarball" "$image" --change 'CMD ["/usr/bin/python3"]' \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'
    say "built $image"
}

# A hash of what goes into the pfsfs image: the package sources and this recipe.
source_hash() {
    (cd "$here/.." && find pfsfs daemon pyproject.toml scripts/build-images.sh \
        -name __pycache__ -prune -o -type f \( -name '*.py' -o -name '*.conf' -o -name '*.toml' \
        -o -name '*.sh' \) -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}

build_pfsfs() {
    local image=pfsfs/pfsfs hash label
    # catatonit: the pause process of `podman kube play` pods (the sidecar example's test)
    ensure_packages podman runc debootstrap catatonit
    hash="$(source_hash)"
    if [ "$force" -eq 0 ] && image_exists "$image"; then
        label="$(podman image inspect --format '{{index .Labels "io.pfsfs.source"}}' "$image")"
        if [ "$label" = "$hash" ]; then say "$image is up to date ($hash)"; return; fi
    fi
    local base="$cache/pfsfs-base-$suite-rootfs.tar.gz" mirror root
    if [ "$force" -eq 1 ] || [ ! -s "$base" ]; then
        mirror="$(debian_mirror)"
        root="$(mktemp -d)"
        cleanup+=("$root")
        say "debootstrap $suite with python3, fuse3, tini from $mirror (about two minutes)"
        if ! debootstrap --variant=minbase --include=python3,python3-venv,fuse3,tini,ca-certificates \
                "$suite" "$root" "$mirror" >&2; then
            die "debootstrap could not build $suite from mirror $mirror (unreachable?);" \
                "set PFSFS_DEBIAN_MIRROR"
        fi
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar --numeric-owner -C "$root" -czf "$base.tmp" . && mv "$base.tmp" "$base"
        rm -rf "$root"
    else
        say "using cached rootfs $base"
    fi
    # Wheels of pfsfs and its dependencies, built here with the project's Python (the image's
    # python3 is the same Debian 3.11: same ABI), installed in the image without any index.
    local py="$here/../.venv/bin/python" wheels
    [ -x "$py" ] || py=python3
    wheels="$(mktemp -d)"
    cleanup+=("$wheels")
    say "building wheels of $(cd "$here/.." && pwd)"
    # with the Kubernetes client: the scheduler Deployment runs `runner: kubernetes` from it
    "$py" -m pip wheel -q --disable-pip-version-check -w "$wheels" "$here/..[kubernetes]" 2>&1 \
        | grep -v '^WARNING: Location' >&2 || true
    ls "$wheels"/pfsfs-*.whl >/dev/null 2>&1 || die "pip wheel built no pfsfs wheel"
    root="$(mktemp -d)"
    cleanup+=("$root")
    tar -C "$root" -xzf "$base"
    mkdir -p "$root/tmp/wheels" "$root/pfs" "$root/usr/share/pfsfs"
    cp "$wheels"/*.whl "$root/tmp/wheels/"
    chroot "$root" /usr/bin/python3 -m venv /opt/pfsfs
    chroot "$root" /opt/pfsfs/bin/pip install -q --no-index --disable-pip-version-check \
        --find-links /tmp/wheels 'pfsfs[kubernetes]' >&2
    rm -rf "$root/tmp/wheels" "$root/root/.cache"
    ln -sf /opt/pfsfs/bin/pfsfs "$root/usr/local/bin/pfsfs"
    chroot "$root" /usr/local/bin/pfsfs --version >&2
    chroot "$root" /opt/pfsfs/bin/python -c "import kubernetes" \
        || die "the image lacks the kubernetes client"
    local tarball="$cache/pfsfs-image.tar"
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    import_image "$tarball" "$image" \
        --change 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pfsfs"]' \
        --change 'CMD ["--help"]' \
        --change 'ENV PATH=/opt/pfsfs/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
        --change 'ENV PFSFS_HOME=/var/lib/pfsfs' \
        --change "LABEL io.pfsfs.source=$hash"
    rm -f "$tarball"
    say "built $image ($hash)"
}

targets=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        deps|busybox|python|pfsfs|all) targets+=("$arg") ;;
        *) die "unknown target '$arg' (deps, busybox, python, pfsfs, all)" ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=(all)

mkdir -p "$cache"
# One build at a time (parallel test sessions may call this script concurrently).
exec 9>"$cache/build.lock"
flock 9

for t in "${targets[@]}"; do
    case "$t" in
        deps) ensure_packages podman runc bubblewrap busybox-static strace ;;
        busybox) build_busybox ;;
        python) build_python ;;
        pfsfs) build_pfsfs ;;
        all) ensure_packages podman runc bubblewrap busybox-static strace; build_busybox; build_python ;;
    esac
done
