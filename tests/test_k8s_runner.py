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
import os
import subprocess
import threading
import time
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
from .tcpproxy import KillableProxy

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
    s3: MotoServer
    proxy: KillableProxy
    """Between every pfsfs client (scheduler and pods) and moto: ``stall`` hangs the bucket."""
    store: str = ""

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

    def spec_file(self, spec: dict[str, Any]) -> str:
        path = self.home.parent / f"spec-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return str(path)

    def create(self, spec: dict[str, Any]) -> None:
        self.pfsfs("pipeline", "create", "-f", self.spec_file(spec))

    def json(self, *args: str) -> Any:
        return json.loads(self.pfsfs(*args, "--json").stdout)

    def explain(self) -> str:
        """Jobs, datums and pod logs, for a failed assertion's message."""
        out = []
        for j in self.json("job", "list"):
            out.append(f"job {j['id']} {j['state']}: {j['reason']}")
            out += [
                f"  datum {d['id'][:12]} {d['state']}: {d['error']}"
                for d in self.json("datum", "list", j["id"])
            ]
            out.append(self.pfsfs("logs", j["id"], code=None).stdout[-3000:])
        for (_ns, pod, container), data in self.kube.logs.items():
            out.append(f"--- {pod} {container}\n{data.decode(errors='replace')[-2000:]}")
        return "\n".join(out + self.kubelet.errors)

    def posts(self) -> int:
        return self.kube.count("POST", r"/jobs$")

    def record_keys(self) -> list[str]:
        """The job plans and datum records in the bucket (``k8s/jobs/...``)."""
        prefix = self.store.removeprefix(f"s3://{self.s3.bucket}/") + "/refs/k8s/jobs/"
        found = self.s3.client().list_objects_v2(Bucket=self.s3.bucket, Prefix=prefix)
        return [o["Key"][len(prefix) :] for o in found.get("Contents", [])]


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
    proxy = KillableProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    with serve(kube, tmp_path) as (_url, kubeconfig), Kubelet(kube, tmp_path / "kubelet") as kl:
        env = {
            **s3_server.env(),
            "KUBECONFIG": str(kubeconfig),
            "PFSFS_K8S_NAMESPACE": NS,
            "PFSFS_K8S_IMAGE": image,
            "PFSFS_K8S_HOST_NETWORK": "1",
            "PFSFS_K8S_PENDING_TIMEOUT": "2",
            "PFSFS_K8S_GRACE": "10",
        }
        store = f"s3://{s3_server.bucket}/k8s-{uuid.uuid4().hex[:10]}"
        c = Cluster(kube, kubeconfig, kl, home, env, s3_server, proxy, store)
        c.pfsfs("init", "--store", store, "--endpoint-url", proxy.endpoint)
        c.pfsfs("repo", "create", "data")
        c.pfsfs("put", "data@master:/sales", "-f", str(FRUIT / "sales"))
        c.pfsfs("put", "data@master:/sales2", "-f", str(FRUIT / "sales2"))
        try:
            yield c
        finally:
            proxy.resume()
        assert not kl.errors, kl.errors
    proxy.kill()
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
    assert c.record_keys() == []  # committed: the job's plan and datum records are gone
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


def per_file_spec(cmd: str, **extra: Any) -> dict[str, Any]:
    """glob /*: one datum per sales file; each writes /pfs/out/<file>.total."""
    return fruit_spec(
        input={"pfs": {"repo": "data", "glob": "/*"}},
        transform={"image": "pfsfs/busybox", "cmd": ["sh", "-c", cmd]},
        **extra,
    )


SUM_ONE = (
    "for f in /pfs/data/*; do awk '{ s += $2 } END { print s }' \"$f\" "
    '> "/pfs/out/$(basename "$f").total"; done'
)


def test_copy_mode_two_shards(cluster: Cluster) -> None:
    c = cluster
    c.create(per_file_spec(SUM_ONE, parallelism=2, kubernetes={"mode": "copy"}))
    proc = c.pfsfs("pipeline", "run", code=None)
    assert proc.returncode == 0, c.explain()
    assert c.pfsfs("ls", "sum@master").stdout.split() == ["sales.total", "sales2.total"]
    assert c.pfsfs("cat", "sum@master:/sales2.total").stdout == "16\n"
    (kjob,) = c.kube.list("jobs", NS)
    assert kjob["spec"]["completions"] == 2
    pods = c.kube.list("pods", NS)
    assert len(pods) == 2
    for pod in pods:  # copy mode: nothing privileged, no propagation
        for ctr in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
            assert not (ctr.get("securityContext") or {}).get("privileged")
            assert "Bidirectional" not in json.dumps(ctr)
    (job,) = c.json("job", "list", "--pipeline", "sum")
    assert job["counts"]["processed"] == 2


def test_failing_datum_fails_the_job_and_commits_nothing(cluster: Cluster) -> None:
    c = cluster
    # The bad datum fails only once the good one has stored its record: when its index has
    # failed datum_tries times the Job fails and its other pods are stopped. It waits for a "go"
    # that the test gives every pod once that record is there (a fixed sleep had to guess how
    # long a loaded machine takes to start the good datum's pod).
    cmd = SUM_ONE + f'; if [ -e /pfs/data/sales2 ]; then {HOLD}; echo "bad sales2" >&2; exit 3; fi'
    c.create(per_file_spec(cmd, parallelism=2, datum_tries=2))
    t, result = run_in_background(c)
    wait_for("the good datum stored", lambda: datum_recorded(c))
    release_until_done(c, t)
    proc = result[0]
    assert proc.returncode != 0
    (job,) = c.json("job", "list", "--pipeline", "sum")
    assert job["state"] == "failure"
    assert "1 of 2 datums failed" in job["reason"]
    assert "container user Error (exit code 3)" in job["reason"], job["reason"]
    datums = {d["desc"]: d for d in c.json("datum", "list", job["id"])}
    bad = next(d for desc, d in datums.items() if "sales2" in desc)
    assert bad["state"] == "failed" and bad["attempts"] == 2  # datum_tries pods for its index
    assert c.pfsfs("log", "sum@master", code=None).returncode != 0 or not c.json(
        "log", "sum@master"
    )  # the output branch has no commit
    logs = c.pfsfs("logs", job["id"]).stdout
    assert "bad sales2" in logs and "pfsfs: " in logs
    assert len([p for p in c.kube.list("pods", NS) if p["status"]["phase"] == "Failed"]) == 2
    good = next(d for desc, d in datums.items() if "sales2" not in desc)
    # the failed job keeps its records: a later job may reuse the datum that succeeded
    assert f"{job['id']}/datums/{good['id']}" in c.record_keys()

    # Fixed (another transform: nothing reusable), the next job commits; the failed job is
    # superseded, so its records go too, and gc reclaims the output its pod had stored.
    c.pfsfs("pipeline", "update", "-f", c.spec_file(per_file_spec(SUM_ONE, parallelism=2)))
    proc = c.pfsfs("pipeline", "run", code=None)
    assert proc.returncode == 0, c.explain()
    assert c.record_keys() == []
    assert c.json("gc", "--grace", "0")["deleted_blobs"] > 0
    assert c.pfsfs("cat", "sum@master:/sales2.total").stdout == "16\n"
    c.pfsfs("fsck", "--deep")


def wait_for(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def running_user_pod(c: Cluster, but: str = "") -> dict[str, Any] | None:
    """A running pod that is not being deleted (and is not named ``but``)."""
    for pod in c.kube.list("pods", NS):
        meta = pod["metadata"]
        if pod["status"].get("phase") == "Running" and not meta.get("deletionTimestamp"):
            if meta["name"] != but:
                return pod
    return None


def pod_volume(c: Cluster, pod: dict[str, Any], volume: str) -> Path:
    """The host directory of one of the pod's emptyDirs."""
    return c.kubelet.root / "pods" / pod["metadata"]["uid"] / "volumes" / volume


SLOW_SUM = "sleep 3; " + fruit_spec()["transform"]["cmd"][2]
HOLD = "while [ ! -e /run/pfsfs/go ]; do sleep 0.1; done"
"""In a transform: it waits there until the test lets it go (a file in the pod's pfsfs-ctl)."""


def datum_recorded(c: Cluster) -> bool:
    """Whether some datum's output is stored: its record is in the bucket."""
    return any("/datums/" in k for k in c.record_keys())


def offered_ctl(c: Cluster) -> Path | None:
    """The pfsfs-ctl directory of a running pod that has been offered a datum."""
    for pod in c.kube.list("pods", NS):
        if pod["status"].get("phase") == "Running":
            ctl = pod_volume(c, pod, "pfsfs-ctl")
            if (ctl / "datum.1").exists():
                return ctl
    return None


def release_until_done(c: Cluster, t: threading.Thread, timeout: float = 300) -> None:
    """Give every running pod its "go" (see HOLD), pods started later too, until ``t`` ends."""
    deadline = time.monotonic() + timeout
    while t.is_alive() and time.monotonic() < deadline:
        for pod in c.kube.list("pods", NS):
            ctl = pod_volume(c, pod, "pfsfs-ctl")
            if pod["status"].get("phase") == "Running" and ctl.is_dir():
                (ctl / "go").touch()
        t.join(0.2)
    assert not t.is_alive(), "the run did not end"


def run_in_background(c: Cluster) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(c.pfsfs("pipeline", "run", code=None)))
    t.start()
    return t, result


def test_killed_sidecar_fails_the_attempt_and_the_retry_commits(cluster: Cluster) -> None:
    c = cluster
    spec = fruit_spec()
    spec["transform"]["cmd"][2] = SLOW_SUM
    c.create(spec)
    t, result = run_in_background(c)
    pod = wait_for("a running pod", lambda: running_user_pod(c))
    ctl = pod_volume(c, pod, "pfsfs-ctl")
    wait_for("the datum offered", lambda: (ctl / "datum.1").exists())  # a datum in flight
    podman("kill", f"k8s-{pod['metadata']['name']}-pfsfs", check=True)  # SIGKILL the sidecar
    t.join(300)
    assert result[0].returncode == 0, c.explain()
    assert totals(c) == FRUIT_TOTALS
    pods = c.kube.list("pods", NS)
    assert [p["status"]["phase"] for p in pods].count("Failed") == 1
    failed = next(p for p in pods if p["status"]["phase"] == "Failed")
    user = next(s for s in failed["status"]["containerStatuses"] if s["name"] == "user")
    assert user["state"]["terminated"]["exitCode"] in (75, 1, 2)  # ENOTCONN or "not stored"
    assert len(c.json("log", "sum@master")) == 1


def test_pod_deleted_mid_run_is_replaced(cluster: Cluster) -> None:
    """The transform holds until the test lets it go, so the deleted pod is surely mid-run
    (a sleep was not enough under load: the pod had finished its datum before the kubelet
    acted on the delete); only its replacement is let go."""
    c = cluster
    spec = fruit_spec()
    spec["transform"]["cmd"][2] = HOLD + "; " + spec["transform"]["cmd"][2]
    c.create(spec)
    t, result = run_in_background(c)
    pod = wait_for("a running pod", lambda: running_user_pod(c))
    name = pod["metadata"]["name"]
    c.kube.delete("pods", NS, name)
    retry = wait_for("the replacement pod", lambda: running_user_pod(c, but=name))
    rctl = pod_volume(c, retry, "pfsfs-ctl")
    wait_for("the retry's datum", lambda: (rctl / "datum.1").exists())
    (rctl / "go").write_text("")
    t.join(300)
    assert result[0].returncode == 0, c.explain()
    assert totals(c) == FRUIT_TOTALS
    assert len(c.json("log", "sum@master")) == 1
    (kjob,) = c.kube.list("jobs", NS)
    assert kjob["status"]["failed"] == 1 and kjob["status"]["succeeded"] == 1


@pytest.mark.parametrize("grace", [3, None], ids=["kubelet-sigkill", "sidecar-gives-up"])
def test_sigterm_while_the_sidecar_stores_overruns_the_grace(
    cluster: Cluster, grace: int | None
) -> None:
    """The pod is deleted while the sidecar stores the datum's output and the bucket hangs: the
    wrapper forwards the SIGTERM and exits 143, and the store cannot end. With
    `kubectl delete pod --grace-period=3` (below the sidecar's own 5 s) the kubelet SIGKILLs
    the sidecar; with the pod's 10 s the sidecar gives up after its 5 s and exits 1, saying
    so. Either way: no record, no commit; Kubernetes retries the index, the retry stores and
    records the datum, and the scheduler makes one commit."""
    import kubernetes

    c = cluster
    spec = fruit_spec()
    spec["transform"]["cmd"][2] += "; " + HOLD
    c.create(spec)
    t, result = run_in_background(c)
    pod = wait_for("a running pod", lambda: running_user_pod(c))
    name = pod["metadata"]["name"]
    ctl, pfs = pod_volume(c, pod, "pfsfs-ctl"), pod_volume(c, pod, "pfs")
    wait_for("the output written", lambda: (pfs / "out" / "apple").exists())
    c.proxy.stall()  # the bucket hangs: the store of /pfs/out cannot end
    try:
        (ctl / "go").write_text("")
        wait_for("the store requested", lambda: (ctl / "request.1").exists())
        time.sleep(0.5)  # the sidecar is in its first PUT
        api = kubernetes.config.new_client_from_config(str(c.kubeconfig))
        kubernetes.client.CoreV1Api(api).delete_namespaced_pod(
            name, NS, grace_period_seconds=grace, _preload_content=False
        )
        wait_for(
            "the pod stopped",
            lambda: name not in {p["metadata"]["name"] for p in c.kube.list("pods", NS)},
        )
    finally:
        c.proxy.resume()
    gone = c.kubelet.history[name]
    user = gone["statuses"]["user"]["state"]["terminated"]
    assert user["exitCode"] == 143 and "SIGTERM" in user["message"], user
    sidecar = gone["statuses"]["pfsfs"]["state"]["terminated"]
    if grace is not None:  # the deletion's grace ran out first: SIGKILL
        assert gone["sigkilled"] == ["pfsfs"] and sidecar["exitCode"] == 137
    else:  # the sidecar's own deadline came first
        assert gone["sigkilled"] == [] and sidecar["exitCode"] == 1
        log = c.kube.logs[(NS, name, "pfsfs")].decode()
        assert "shutdown overran the 5 s grace: the output of datum" in log, log
    assert [k for k in c.record_keys() if "/datums/" in k] == []  # nothing recorded

    retry = wait_for("the replacement pod", lambda: running_user_pod(c, but=name))
    rctl = pod_volume(c, retry, "pfsfs-ctl")
    wait_for("the retry's datum", lambda: (rctl / "datum.1").exists())
    (rctl / "go").write_text("")
    t.join(300)
    assert result[0].returncode == 0, c.explain()
    assert totals(c) == FRUIT_TOTALS
    assert len(c.json("log", "sum@master")) == 1  # one commit, never a partial one
    (job,) = c.json("job", "list", "--pipeline", "sum")
    assert job["state"] == "success"
    assert c.record_keys() == []
    c.pfsfs("fsck", "--deep")


def test_deadline_overrun_fails_the_job_and_the_rerun_keeps_what_was_stored(
    cluster: Cluster,
) -> None:
    """activeDeadlineSeconds ends the Job while one datum's command still runs and ignores
    SIGTERM: the kubelet SIGKILLs it after the grace. The job fails with the deadline as its
    reason and commits nothing; the datum that was stored before is kept (its record stays,
    gc keeps its output) and the rerun with a longer deadline reuses it instead of running
    it again, and commits both."""
    c = cluster
    # sales2's command waits for a "go" that never comes in the first run, and ignores SIGTERM.
    # The deadline is run out on the Job controller's clock once the other datum's output is
    # stored: a wall-clock deadline had to guess how long that takes under CI load (15 s, then
    # 40 s were too short, and both datums failed).
    slow = f'if [ -e /pfs/data/sales2 ]; then trap "" TERM; {HOLD}; fi; ' + SUM_ONE
    c.create(per_file_spec(slow, parallelism=2, kubernetes={"job_timeout": "10m"}))
    t, result = run_in_background(c)
    wait_for("the other datum stored", lambda: datum_recorded(c))
    c.kubelet.pass_time(600)
    t.join(300)
    assert not t.is_alive(), "the run did not end at the deadline"
    assert result[0].returncode != 0
    (job,) = c.json("job", "list", "--pipeline", "sum")
    inspect = c.pfsfs("job", "inspect", job["id"]).stdout
    assert job["state"] == "failure", c.explain()
    assert "ran past its deadline (activeDeadlineSeconds 600)" in inspect, inspect
    assert "1 of 2 datums failed" in job["reason"]
    assert not c.json("log", "sum@master")  # nothing committed
    killed = [h for h in c.kubelet.history.values() if "user" in h["sigkilled"]]
    assert len(killed) == 1, c.kubelet.history  # the held command overran the grace: SIGKILL
    datums = {d["desc"]: d for d in c.json("datum", "list", job["id"])}
    stored = next(d for desc, d in datums.items() if "sales2" not in desc)
    assert stored["state"] == "processed"
    assert f"{job['id']}/datums/{stored['id']}" in c.record_keys()
    c.pfsfs("gc", "--grace", "0")  # the record keeps the stored output
    c.pfsfs("fsck", "--deep")

    c.pfsfs(
        "pipeline",
        "update",
        "-f",
        c.spec_file(per_file_spec(slow, parallelism=2, kubernetes={"job_timeout": "5m"})),
    )
    t, result = run_in_background(c)
    ctl = wait_for("the rerun's datum offered", lambda: offered_ctl(c))
    (ctl / "go").write_text("")
    t.join(300)
    assert not t.is_alive(), "the rerun did not end"
    assert result[0].returncode == 0, c.explain()
    (rerun,) = [j for j in c.json("job", "list", "--pipeline", "sum") if j["id"] != job["id"]]
    assert rerun["state"] == "success"
    again = {d["desc"]: d for d in c.json("datum", "list", rerun["id"])}
    reused = next(d for desc, d in again.items() if "sales2" not in desc)
    assert reused["state"] == "skipped"  # reused from the failed job, not run again
    assert c.pfsfs("ls", "sum@master").stdout.split() == ["sales.total", "sales2.total"]
    assert c.pfsfs("cat", "sum@master:/sales2.total").stdout == "16\n"
    assert len(c.json("log", "sum@master")) == 1
    assert c.record_keys() == []  # the commit supersedes the failed job: its records go too
    c.pfsfs("gc", "--grace", "0")
    c.pfsfs("fsck", "--deep")
    assert c.pfsfs("cat", "sum@master:/sales.total").stdout.strip().isdigit()


def test_missing_image_fails_with_the_reason(cluster: Cluster) -> None:
    c = cluster
    spec = fruit_spec()
    spec["transform"]["image"] = "localhost/pfsfs/no-such-image"
    c.create(spec)
    assert c.pfsfs("pipeline", "run", code=None).returncode != 0
    (job,) = c.json("job", "list", "--pipeline", "sum")
    assert job["state"] == "failure"
    assert "ImagePullBackOff" in job["reason"] and "no-such-image" in job["reason"]
    assert c.kube.list("jobs", NS) == []  # given up: the Job is deleted
    assert "ImagePullBackOff" in c.pfsfs("logs", job["id"]).stdout


def test_old_cluster_is_refused(cluster: Cluster) -> None:
    c = cluster
    c.kube.version = (1, 28)
    c.create(fruit_spec())
    assert c.pfsfs("pipeline", "run", code=None).returncode != 0
    (job,) = c.json("job", "list", "--pipeline", "sum")
    assert "needs 1.29 or newer (native sidecars" in job["reason"]
    assert c.posts() == 0


def test_api_errors_are_retried_and_a_restarted_scheduler_adopts(cluster: Cluster) -> None:
    c = cluster
    c.kube.inject("POST", r"/jobs$", 500)
    c.kube.inject("GET", r"/jobs/[^/?]+$", 429, times=2, retry_after="1")
    c.kube.inject("GET", r"watch=true", 410)
    spec = fruit_spec()
    spec["transform"]["cmd"][2] = SLOW_SUM
    c.create(spec)
    proc = subprocess.Popen(
        [PFSFS, "--home", str(c.home), "pipeline", "run"],
        env=c.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for("a running pod", lambda: running_user_pod(c))
    proc.kill()  # the scheduler dies mid-job; its Job runs on
    proc.wait(30)
    result = c.pfsfs("pipeline", "run", code=None)
    assert result.returncode == 0, c.explain()
    assert totals(c) == FRUIT_TOTALS
    assert c.posts() == 2  # the injected 500, then the one Job: the restart adopted it
    assert len(c.kube.list("jobs", NS)) == 1
    assert len(c.json("log", "sum@master")) == 1


def test_missing_client_is_one_clear_line(tmp_path: Path) -> None:
    """Without the optional `kubernetes` package the job fails with one line saying what to
    install (the package is imported only when a kubernetes job runs)."""
    blocker = tmp_path / "block" / "kubernetes"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent), "PFSFS_NO_DAEMON": "1"}
    home = tmp_path / "home"

    def pfsfs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PFSFS, "--home", str(home), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert pfsfs("repo", "create", "data").returncode == 0
    assert pfsfs("put", "data@master:/sales", "-f", str(FRUIT / "sales")).returncode == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(fruit_spec()))
    assert pfsfs("pipeline", "create", "-f", str(spec)).returncode == 0
    proc = pfsfs("pipeline", "run")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (job,) = json.loads(pfsfs("job", "list", "--json").stdout)
    assert job["reason"] == (
        "runner kubernetes needs the kubernetes client: pip install 'pfsfs[kubernetes]'"
    )
