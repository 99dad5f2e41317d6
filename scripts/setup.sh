#!/usr/bin/env bash
# Installs what pfsfs needs on a Debian machine: system packages (FUSE, and for pipelines podman,
# runc, bubblewrap), a virtualenv in .venv, and pfsfs itself (editable) with its test extras.
# Idempotent; sourced by scripts/quickstart.sh, scripts/test.sh and scripts/bench.sh.
#
# Safe to source from an interactive shell (`source scripts/setup.sh`): sourced, it runs itself
# as a child bash, so its `set -euo pipefail` never reaches the caller's shell, and only puts
# .venv/bin on the caller's PATH (once). A failed setup returns non-zero, which stops a caller
# running with `set -e` and leaves an interactive shell open.
if (return 0 2>/dev/null); then
  _pfsfs_setup_self="${BASH_SOURCE[0]:-$0}"
  if bash "$_pfsfs_setup_self"; then
    _pfsfs_setup_bin="$(cd "$(dirname "$_pfsfs_setup_self")/.." && pwd)/.venv/bin"
    case ":$PATH:" in
      *":$_pfsfs_setup_bin:"*) ;;
      *) export PATH="$_pfsfs_setup_bin:$PATH" ;;
    esac
    unset _pfsfs_setup_self _pfsfs_setup_bin
    return 0
  fi
  unset _pfsfs_setup_self
  echo "setup: failed; see the messages above" >&2
  return 1
fi

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEB_PACKAGES=(fuse3 libfuse3-dev pkg-config python3-venv make git bubblewrap podman runc
              busybox-static uidmap debootstrap dash strace)
if [ "${PFSFS_SETUP_EXTRA_DEBS:-}" != "" ]; then
  # shellcheck disable=SC2206
  DEB_PACKAGES+=(${PFSFS_SETUP_EXTRA_DEBS})
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.pfsfs-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$ROOT/.venv/bin/python" -c "import pfsfs, pyfuse3, pyfastcdc.cy" \
    || { echo "setup: pfsfs did not install correctly" >&2; exit 1; }
  touch "$stamp"
fi
