"""Helpers for the pipeline tests: input commits from dicts, minimal specs, image building."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import blake3
import pytest

from pfsfs.pipeline.inputs import InputCommit, InputFile

ROOT = Path(__file__).resolve().parent.parent
BUILD_IMAGES = ROOT / "scripts" / "build-images.sh"
NOT_ROOT = (
    "needs root: podman runs rootful here (runc, cgroupfs) and scripts/build-images.sh "
    "uses apt-get and podman import"
)


def commit(repo: str, files: dict[str, str], commit_id: str = "", branch: str = "master"):
    """An InputCommit whose content ids are BLAKE3 of the given text."""
    return InputCommit.of(
        repo,
        branch,
        commit_id or f"{repo}-c1",
        [
            InputFile(path, blake3.blake3(text.encode()).hexdigest(), len(text.encode()))
            for path, text in files.items()
        ],
    )


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """A minimal valid spec as a dict, with top-level overrides."""
    d: dict[str, Any] = {
        "pipeline": {"name": "out-repo"},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"image": "pfsfs/busybox", "cmd": ["sh", "-c", "cp -r /pfs/data/. /pfs/out"]},
    }
    d.update(overrides)
    return d


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)


def build_images(*targets: str) -> None:
    """Run scripts/build-images.sh (idempotent; installs podman etc. with apt-get)."""
    require_root()
    subprocess.run([str(BUILD_IMAGES), *targets], check=True, timeout=1800)


def ensure_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        build_images("deps")
        path = shutil.which("bwrap")
    assert path is not None, "build-images.sh deps did not install bubblewrap"
    return path
