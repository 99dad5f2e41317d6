"""``runner: kubernetes`` end to end: the real ``kubernetes`` client against tests/fakekube.py,
the pods run by tests/kubelet.py with podman (the real pfsfs image as the privileged FUSE
sidecar, the user's busybox image as uid 1000), S3 from moto on loopback.

A pipeline job goes: input commit -> plan in the bucket -> one Indexed Job -> pods -> datum
records in the bucket -> ONE output commit made by the scheduler (``pfsfs pipeline run``),
with the same output and provenance as ``runner: podman``. Failures (a failing datum, a killed
sidecar, a deleted pod, a missing image, an old cluster, API errors) never leave a partial
commit, and their reason shows in ``pfsfs job inspect`` / ``pfsfs datum list`` / ``pfsfs logs``.
Every Job the runner generates is validated with kubernetes-validate and pfsfs.k8s.lint.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pfsfs.k8s import jobs as k8sjobs
from pfsfs.k8s.lint import lint
from pfsfs.pipeline.spec import parse_spec_dict

from .fakekube import FakeKube, serve
from .fusehelpers import PFSFS, fuse_mounts
from .kubelet import Kubelet, podman
from .pipeline_fixtures import ROOT, build_images, require_root
from .s3server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer

FRUIT = ROOT / "examples" / "fruit-stand"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
NS = "pfsfs"


def fruit_spec(runner: str = "kubernetes", **extra: Any) -> dict[str, Any]:
    spec = yaml.safe_load((FRUIT / "sum-podman.yaml").read_text())
    spec["runner"] = runner
    spec.update(extra)
    return spec


# -- the generated Job, offline --------------------------------------------------------------


CLUSTER = k8sjobs.ClusterConfig(store_url="s3://bucket/prefix", endpoint_url="http://s3:9000")


@pytest.mark.parametrize("mode", ["fuse", "copy"])
@pytest.mark.parametrize("version", VERSIONS)
def test_generated_job_validates_and_lints(mode: str, version: str) -> None:
    spec = parse_spec_dict(
        fruit_spec(
            kubernetes={"mode": mode, "job_timeout": "1h"},
            parallelism=3,
            datum_tries=4,
            transform={
                "image": "busybox",
                "cmd": ["sh", "-c", "true"],
                "stdin": ["a"],
                "user": "1234:99",
                "env": {"A": "1"},
                "working_dir": "/tmp",
            },
        )
    )
    job = k8sjobs.build_job(spec, "0123456789abcdef01234567", 3, 2, CLUSTER)
    kubernetes_validate.validate(job, version, strict=True)
    assert lint(job) == []
    s = job["spec"]
    assert (s["completionMode"], s["completions"], s["parallelism"]) == ("Indexed", 3, 3)
    assert s["backoffLimitPerIndex"] == 3 and s["activeDeadlineSeconds"] == 3600
    pod = s["template"]["spec"]
    wrap, side = pod["initContainers"]
    assert side["restartPolicy"] == "Always" and side["name"] == "pfsfs"
    (user,) = pod["containers"]
    assert user["command"] == ["/run/pfsfs/pfsfs-wrap", "--"]
    assert user["securityContext"]["runAsUser"] == 1234
    assert user["resources"]["limits"] == {"cpu": "1", "memory": str(256 << 20)}
    assert side.get("securityContext", {}).get("privileged", False) is (mode == "fuse")
    env = {e["name"]: e.get("value") for e in user["env"]}
    assert env["PFSFS_WRAP_TIMEOUT"] == "60" and env["PFSFS_WRAP_STDIN"] == "a"
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(user)


def test_root_or_named_users_are_refused() -> None:
    from pfsfs.errors import InvalidInput

    for user in ("0", "nobody"):
        spec = parse_spec_dict(fruit_spec(transform={"image": "x", "cmd": ["true"], "user": user}))
        with pytest.raises(InvalidInput, match="transform.user"):
            k8sjobs.build_job(spec, "0" * 24, 1, 1, CLUSTER)


def test_spec_fields_are_checked() -> None:
    from pfsfs.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"^kubernetes.mode: unknown mode 'csi'"):
        parse_spec_dict(fruit_spec(kubernetes={"mode": "csi"}))
    with pytest.raises(InvalidInput, match=r"^kubernetes.nodes: unknown field"):
        parse_spec_dict(fruit_spec(kubernetes={"nodes": 3}))
    with pytest.raises(InvalidInput, match=r"^transform.image: required by the kubernetes"):
        parse_spec_dict(fruit_spec(transform={"cmd": ["true"]}))
    # the same spec, other runners: the kubernetes section is kept and ignored
    for runner in ("podman", "local"):
        spec = parse_spec_dict(fruit_spec(runner, kubernetes={"mode": "copy"}))
        assert spec.kubernetes.mode == "copy"


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The pfsfs image of THIS checkout under a private tag (other checkouts rebuild the
    shared pfsfs/pfsfs tag)."""
    require_root()
    build_images("deps", "busybox", "pfsfs")
    tag = f"localhost/pfsfs/pfsfs:k8s-test-{uuid.uuid4().hex[:8]}"
    podman("tag", "localhost/pfsfs/pfsfs", tag, check=True)
    site = "/opt/pfsfs/lib/python3.11/site-packages"
    for local, inside in (
        ("daemon/sidecar.py", "pfsfsd/sidecar.py"),
        ("pfsfs/k8s/protocol.py", "pfsfs/k8s/protocol.py"),
    ):
        got = podman("run", "--rm", "--entrypoint", "cat", tag, f"{site}/{inside}").stdout
        if got != (ROOT / local).read_text():
            podman("rmi", tag)
            pytest.fail(
                f"the pfsfs image does not hold this checkout's {local} (rebuilt "
                "by another checkout meanwhile?); run the test again"
            )
    try:
        yield tag
    finally:
        podman("rmi", tag)


@dataclass
class Cluster:
    kube: FakeKube
    kubeconfig: Path
    kubelet: Kubelet
    home: Path
    env: dict[str, str]

    def pfsfs(
        self,
        *args: str,
        code: int | None = 0,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PFSFS, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        if code is not None:
            assert proc.returncode == code, f"pfsfs {' '.join(args)}: {proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def create(self, spec: dict[str, Any]) -> None:
        path = self.home.parent / f"spec-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(spec))
        self.pfsfs("pipeline", "create", "-f", str(path))

    def json(self, *args: str) -> Any:
        return json.loads(self.pfsfs(*args, "--json").stdout)

    def explain(self) -> str:
        """Jobs, datums and pod logs, for a failed assertion's message."""
        out = []
        for j in self.json("job", "list"):
            out.append(f"job {j['id']} {j['state']}: {j['reason']}")
            out += [f"  datum {d['id'][:12]} {d['state']}: {d['error']}"
                    for d in self.json("datum", "list", j["id"])]
            out.append(self.pfsfs("logs", j["id"], code=None).stdout[-3000:])
        for (_ns, pod, container), data in self.kube.logs.items():
            out.append(f"--- {pod} {container}\n{data.decode(errors='replace')[-2000:]}")
        return "\n".join(out + self.kubelet.errors)

    def posts(self) -> int:
        return self.kube.count("POST", r"/jobs$")


@pytest.fixture
def cluster(tmp_path: Path, s3_server: MotoServer, image: str) -> Iterator[Cluster]:
    kube = FakeKube()
    kube.create(
        "secrets",
        NS,
        {
            "metadata": {"name": "pfsfs-s3"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        },
    )
    home = tmp_path / "home"
    with serve(kube, tmp_path) as (_url, kubeconfig), Kubelet(kube, tmp_path / "kubelet") as kl:
        env = {
            **s3_server.env(),
            "KUBECONFIG": str(kubeconfig),
            "PFSFS_K8S_NAMESPACE": NS,
            "PFSFS_K8S_IMAGE": image,
            "PFSFS_K8S_HOST_NETWORK": "1",
            "PFSFS_K8S_PENDING_TIMEOUT": "3",
        }
        c = Cluster(kube, kubeconfig, kl, home, env)
        store = f"s3://{s3_server.bucket}/k8s-{uuid.uuid4().hex[:10]}"
        c.pfsfs("init", "--store", store, "--endpoint-url", s3_server.endpoint)
        c.pfsfs("repo", "create", "data")
        c.pfsfs("put", "data@master:/sales", "-f", str(FRUIT / "sales"))
        c.pfsfs("put", "data@master:/sales2", "-f", str(FRUIT / "sales2"))
        yield c
        assert not kl.errors, kl.errors
    assert not fuse_mounts(str(tmp_path)), "mounts left behind"


def totals(c: Cluster) -> dict[str, int]:
    names = c.pfsfs("ls", "sum@master").stdout.split()
    return {n: int(c.pfsfs("cat", f"sum@master:/{n}").stdout) for n in names}


FRUIT_TOTALS = {"apple": 15, "banana": 7, "kiwi": 1, "orange": 10}


def test_fruit_stand_as_a_kubernetes_job(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.create(fruit_spec())
    proc = c.pfsfs("pipeline", "run", code=None)
    assert proc.returncode == 0, c.explain()
    assert totals(c) == FRUIT_TOTALS
    commit = c.json("inspect", "commit", "sum@master")
    prov = commit["provenance"]
    data_head = c.json("log", "data@master")[0]["id"]
    assert prov["pipeline"] == "sum"
    assert prov["inputs"] == [{"repo": "data", "branch": "master", "commit": data_head}]
    (job,) = c.json("job", "list", "--pipeline", "sum")
    assert job["state"] == "success" and prov["job"] == job["id"]
    assert len(c.json("log", "sum@master")) == 1  # one commit, made by the scheduler
    assert c.posts() == 1
    (kjob,) = c.kube.list("jobs", NS)
    kubernetes_validate.validate(kjob, VERSIONS[0], strict=False)
    assert lint(kjob) == []
    (pod,) = c.kube.list("pods", NS)
    user = {s["name"]: s for s in pod["status"]["containerStatuses"]}["user"]
    assert "done: 1 datum(s) committed" in user["state"]["terminated"]["message"]
    logs = c.pfsfs("logs", job["id"]).stdout
    assert "pfsfs-wrap: begin datum" in logs and "committed" in logs

    # The same spec with runner: podman, in a local home: the same files and provenance.
    other = replace(c, home=tmp_path / "podman-home")
    other.pfsfs("repo", "create", "data")
    other.pfsfs("put", "data@master:/sales", "-f", str(FRUIT / "sales"))
    other.pfsfs("put", "data@master:/sales2", "-f", str(FRUIT / "sales2"))
    other.create(fruit_spec("podman"))
    assert "success" in other.pfsfs("pipeline", "run").stdout
    assert totals(other) == FRUIT_TOTALS
    pprov = other.json("inspect", "commit", "sum@master")["provenance"]
    assert sorted(pprov) == sorted(prov)
    assert [i["repo"] for i in pprov["inputs"]] == ["data"]
