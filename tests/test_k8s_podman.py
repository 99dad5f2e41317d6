"""The sidecar example pod (k8s/sidecar-example.yaml) run for real with ``podman kube play``.

The pod is the example's pod template with what podman 4.3 cannot do replaced, nothing else:
- the native sidecar (an init container with ``restartPolicy: Always``) becomes a regular first
  container, since kube play waits for init containers to exit and hangs on a native sidecar;
  the app therefore waits for the ready file itself (it mounts the ``pfsfs-ctl`` volume too),
  which is what the startupProbe does in a cluster;
- ``pfs`` and ``pfsfs-ctl`` are hostPath directories of the test (made rshared for ``pfs``, as
  the kubelet makes its pods directory) instead of emptyDirs, so the test can look at them;
- the store comes from env values (moto on loopback, ``hostNetwork``) instead of the
  ConfigMap and Secret; the images are the local ``pfsfs/pfsfs`` and ``pfsfs/busybox``.
The real pfsfs image runs privileged with /dev/fuse; the app runs as uid 1000, reads the
read-only input and writes the output through HostToContainer propagation; stopping the pod
(SIGTERM to the sidecar through tini) commits the output.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .fusehelpers import PFSFS, force_unmount, fuse_mounts, no_leftovers
from .pipeline_fixtures import ROOT, build_images, require_root
from .s3server import MotoServer

__all__ = ["no_leftovers"]

CONTAINERS_CONF = str(ROOT / "pfsfs" / "pipeline" / "containers.conf")
APP = """\
set -e
until [ -e /run/pfsfs/ready ]; do sleep 0.1; done
cat /pfs/data/in.txt > /pfs/notes/copy.txt
id -u > /pfs/notes/uid.txt
if touch /pfs/data/nope 2>/dev/null; then exit 9; fi
"""


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
    )
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def podman_logs(container: str) -> str:
    proc = subprocess.run(
        ["podman", "logs", container],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
    )
    return proc.stdout + proc.stderr


def podman_pod(name: str, env: dict[str, str], pfs: Path, ctl: Path) -> dict[str, Any]:
    (deployment,) = yaml.safe_load_all((ROOT / "k8s" / "sidecar-example.yaml").read_text())
    template = copy.deepcopy(deployment["spec"]["template"])
    spec = template["spec"]
    sidecar = spec.pop("initContainers")[0]
    assert sidecar.pop("restartPolicy") == "Always"
    for key in ("startupProbe", "resources", "envFrom"):
        sidecar.pop(key)
    sidecar["image"] = "localhost/pfsfs/pfsfs"
    sidecar["env"] = [{"name": k, "value": v} for k, v in env.items()]
    (app,) = spec["containers"]
    app.pop("resources")
    app["image"] = "localhost/pfsfs/busybox"
    app["args"] = [APP]
    app["volumeMounts"].append({"name": "pfsfs-ctl", "mountPath": "/run/pfsfs"})
    spec["containers"] = [sidecar, app]
    spec["restartPolicy"] = "Never"
    spec["hostNetwork"] = True  # moto listens on the host's loopback
    vols = {v["name"]: v for v in spec["volumes"]}
    vols["pfs"] = {"name": "pfs", "hostPath": {"path": str(pfs), "type": "Directory"}}
    vols["pfsfs-ctl"] = {"name": "pfsfs-ctl", "hostPath": {"path": str(ctl), "type": "Directory"}}
    vols["pfsfs-home"] = {"name": "pfsfs-home", "emptyDir": {}}
    spec["volumes"] = list(vols.values())
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@contextmanager
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory bind-mounted on itself and made rshared (what the kubelet does)."""
    pfs = tmp_path / "pfs"
    pfs.mkdir()
    subprocess.run(["mount", "--bind", str(pfs), str(pfs)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(pfs)], check=True)
        yield pfs
    finally:
        for mp in reversed(fuse_mounts(str(pfs))):
            force_unmount(mp)
        subprocess.run(["umount", "-l", str(pfs)], check=False)


def test_sidecar_example_pod_under_podman(
    tmp_path: Path, s3_server: MotoServer, no_leftovers: None
) -> None:
    require_root()
    if shutil.which("podman") is None:
        build_images("deps")
    build_images("busybox", "pfsfs")
    prefix = f"kube-{uuid.uuid4().hex[:10]}"
    store = f"s3://{s3_server.bucket}/{prefix}"
    host_env = s3_server.env()
    seed = tmp_path / "seed"

    def pfsfs(*args: str) -> str:
        proc = subprocess.run(
            [PFSFS, "--home", str(seed), *args],
            capture_output=True,
            text=True,
            env=host_env,
            timeout=120,
        )
        assert proc.returncode == 0, f"pfsfs {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    pfsfs("init", "--store", store, "--endpoint-url", s3_server.endpoint)
    (tmp_path / "in.txt").write_text("input from the bucket\n")
    pfsfs("repo", "create", "data")
    pfsfs("put", "data@master:/in.txt", "-f", str(tmp_path / "in.txt"))

    ctl = tmp_path / "ctl"
    ctl.mkdir()
    name = f"pfsfs-kube-{uuid.uuid4().hex[:8]}"
    env = {
        "PFSFS_HOME": "/var/lib/pfsfs",
        "PFSFS_POD": name,
        "PFSFS_STORE": store,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": host_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": host_env["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with shared_dir(tmp_path) as pfs:
        manifest = tmp_path / "pod.yaml"
        manifest.write_text(yaml.safe_dump(podman_pod(name, env, pfs, ctl)))
        try:
            podman("kube", "play", str(manifest), timeout=300)
            app_code = podman("wait", f"{name}-app", timeout=180)
            logs = podman_logs(f"{name}-app") + podman_logs(f"{name}-pfsfs")
            assert app_code == "0", logs
            assert (ctl / "ready").exists()
            podman("pod", "stop", "-t", "30", name, timeout=120)
            sidecar_code = podman("inspect", "--format", "{{.State.ExitCode}}", f"{name}-pfsfs")
            logs = podman_logs(f"{name}-pfsfs")
            assert sidecar_code == "0", logs
            assert "Traceback" not in logs
            assert not fuse_mounts(str(pfs)), "the sidecar left its mounts behind"
            assert not (ctl / "ready").exists()
        finally:
            podman("pod", "rm", "-f", name, check=False)
    assert pfsfs("cat", "notes@master:/copy.txt") == "input from the bucket\n"
    assert pfsfs("cat", "notes@master:/uid.txt") == "1000\n"
    assert pfsfs("ls", "notes@master:/").split() == ["copy.txt", "uid.txt"]
