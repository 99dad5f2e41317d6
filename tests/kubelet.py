"""A small Job controller and "kubelet" for tests/fakekube.py that run pods with podman.

``Kubelet(kube, root)`` is a thread. As the Job controller it creates the pods of each Indexed Job
(``parallelism`` at a time, one per index, label ``batch.kubernetes.io/job-name``, the
completion-index annotation), counts failed pods per index against ``backoffLimitPerIndex``, applies
the ``podFailurePolicy`` exit-code rules and ``activeDeadlineSeconds`` (on a clock a test can move
on: ``pass_time``), and writes the Job's status and Complete/Failed conditions. As the kubelet it
runs every pod's containers with podman, in the order KEP-753 gives: regular init containers to
completion, then native sidecars (``restartPolicy: Always``) started detached — podman 4.3's ``kube
play`` cannot run those — and waited for through their startupProbe, then the main containers; a
sidecar that dies while they run is started again; when they have exited, sidecars get SIGTERM in
reverse order within ``terminationGracePeriodSeconds``. A pod deleted through the API
(``deletionTimestamp``: the fake API deletes pods gracefully) is stopped within ONE grace period,
the deletion's: SIGTERM to the main containers, then, once they have exited, to the sidecars in
reverse order, and SIGKILL to whatever still runs when the grace is over (a container gets at least
``MIN_GRACE`` seconds after its SIGTERM); then its phase is written and the API object removed.
Until then the Job controller counts it as active and starts no replacement (``podReplacementPolicy:
Failed``). emptyDirs are directories under ``root`` (a bind mount made rshared, as the kubelet's
root is), so ``Bidirectional`` -> ``rshared`` and ``HostToContainer`` -> ``rslave`` propagate the
sidecar's FUSE mounts; ``privileged`` -> ``--privileged`` (/dev/fuse), ``runAsUser`` -> ``--user``,
``resources.limits`` -> ``--memory``/``--cpus``, ``/dev/termination-log`` a file per container. A
missing image leaves the pod Pending with ``ImagePullBackOff``. Statuses (exit codes, OOMKilled,
termination messages) and logs go back into the fake API.

Only ``hostNetwork`` pods are supported (moto listens on the host's loopback).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .fakekube import FakeKube
from .fusehelpers import force_unmount, fuse_mounts
from .pipeline_fixtures import ROOT

log = logging.getLogger(__name__)

CONTAINERS_CONF = str(ROOT / "pfsfs" / "pipeline" / "containers.conf")
JOB_NAME = "batch.kubernetes.io/job-name"
INDEX = "batch.kubernetes.io/job-completion-index"
MIN_GRACE = 2.0  # seconds a container gets after its SIGTERM however late (kuberuntime's minimum)
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def podman(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}: {proc.stderr.strip()}")
    return proc


def memory_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]i?|k)?", str(text))
    assert m, text
    return int(m.group(1)) * QUANTITY.get(m.group(2) or "", 1)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Kubelet(threading.Thread):
    def __init__(self, kube: FakeKube, root: Path, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.kube = kube
        self.root = root
        self.interval = interval
        self.tag = uuid.uuid4().hex[:8]
        self.stopping = threading.Event()
        self.jobs: dict[str, dict[str, Any]] = {}  # job uid -> controller state
        self.pod_threads: dict[str, threading.Thread] = {}
        self.errors: list[str] = []
        self.history: dict[str, dict[str, Any]] = {}
        """pod name -> its last container statuses and the containers SIGKILLed at the end of
        their grace period (a deleted pod's API object is gone, not its story)."""
        self.skipped = 0.0
        """Seconds the Job controller's clock has been moved on by ``pass_time``."""

    def pass_time(self, seconds: float) -> None:
        """Move the Job controller's clock on, so ``activeDeadlineSeconds`` runs out at the
        moment a test chooses rather than after a wall-clock wait that CI load can upset."""
        self.skipped += seconds

    def clock(self) -> float:
        return time.monotonic() + self.skipped

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Kubelet:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(self.root), str(self.root)], check=True)
        subprocess.run(["mount", "--make-rshared", str(self.root)], check=True)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(30)
        for t in list(self.pod_threads.values()):
            t.join(60)
        found = podman("ps", "-aq", "--filter", f"label=io.pfsfs.kubelet={self.tag}").stdout
        if found.split():
            podman("rm", "-f", "-t", "0", *found.split())
        for mp in reversed(fuse_mounts(str(self.root))):
            force_unmount(mp)
        subprocess.run(["umount", "-l", str(self.root)], check=False)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                for job in self.kube.list_all("jobs"):
                    self.control(job)
            except Exception as exc:  # noqa: BLE001 - keep going; the test sees self.errors
                log.exception("kubelet")
                self.errors.append(repr(exc))
            time.sleep(self.interval)

    # -- the Job controller --------------------------------------------------------------------
    def control(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        state = self.jobs.setdefault(
            uid,
            {
                "start": self.clock(),
                "failures": {},
                "succeeded": set(),
                "seen": set(),
                "active": {},
                "done": False,
            },
        )
        if state["done"]:
            return
        pods = {p["metadata"]["name"]: p for p in self.kube.list("pods", ns, f"{JOB_NAME}={name}")}
        fail_job = ""
        for pname, index in list(state["active"].items()):
            pod = pods.get(pname)
            phase = pod["status"].get("phase") if pod else "Gone"
            if phase in ("Succeeded", "Failed", "Gone"):
                del state["active"][pname]
            if phase == "Succeeded":
                state["succeeded"].add(index)
            elif phase in ("Failed", "Gone"):
                state["failures"][index] = state["failures"].get(index, 0) + 1
                if pod and self.fail_job_rule(spec, pod):
                    fail_job = "PodFailurePolicy"
        completions = spec["completions"]
        limit = spec.get("backoffLimitPerIndex", 6)
        failed_indexes = [
            i for i, n in state["failures"].items() if n > limit and i not in state["succeeded"]
        ]
        deadline = spec.get("activeDeadlineSeconds")
        condition: tuple[str, str, str] | None = None
        if fail_job:
            condition = ("Failed", fail_job, "a pod matched a FailJob rule")
        elif failed_indexes:
            condition = ("Failed", "FailedIndexes", f"index {failed_indexes[0]} failed")
        elif deadline and self.clock() - state["start"] > deadline:
            condition = ("Failed", "DeadlineExceeded", "Job was active longer than allowed")
        elif len(state["succeeded"]) >= completions:
            condition = ("Complete", "", "")
        if condition is None:
            busy = set(state["active"].values())
            for index in range(completions):
                if len(state["active"]) >= spec.get("parallelism", 1):
                    break
                if index in state["succeeded"] or index in busy:
                    continue
                pod = self.make_pod(job, index)
                state["active"][pod["metadata"]["name"]] = index
                self.launch(pod)
        else:
            state["done"] = True
            for pname in state["active"]:
                try:
                    self.kube.delete("pods", ns, pname)
                except Exception:  # noqa: BLE001 - already gone
                    pass

        def write(obj: dict[str, Any]) -> None:
            st = obj.setdefault("status", {})
            st["active"] = len(state["active"])
            st["succeeded"] = len(state["succeeded"])
            st["failed"] = sum(state["failures"].values())
            st["completedIndexes"] = ",".join(str(i) for i in sorted(state["succeeded"]))
            st.setdefault("startTime", now_iso())
            if condition is not None:
                kind, reason, message = condition
                st["conditions"] = [
                    {
                        "type": kind,
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": now_iso(),
                    }
                ]
                st["completionTime" if kind == "Complete" else "failedTime"] = now_iso()

        self.kube.update("jobs", ns, name, write)

    @staticmethod
    def fail_job_rule(spec: dict[str, Any], pod: dict[str, Any]) -> bool:
        for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
            on = rule.get("onExitCodes") or {}
            if rule.get("action") != "FailJob" or on.get("operator") != "In":
                continue
            for cs in pod["status"].get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                if cs["name"] == on.get("containerName") and term.get("exitCode") in on["values"]:
                    return True
        return False

    def make_pod(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        template = job["spec"]["template"]
        meta = template.get("metadata", {})
        labels = {
            **meta.get("labels", {}),
            JOB_NAME: job["metadata"]["name"],
            "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
            INDEX: str(index),
        }
        pod = {
            "metadata": {
                "name": f"{job['metadata']['name']}-{index}-{uuid.uuid4().hex[:5]}",
                "labels": labels,
                "annotations": {**meta.get("annotations", {}), INDEX: str(index)},
            },
            "spec": json.loads(json.dumps(template["spec"])),
            "status": {"phase": "Pending"},
        }
        return self.kube.create("pods", job["metadata"]["namespace"], pod)

    def launch(self, pod: dict[str, Any]) -> None:
        t = threading.Thread(target=self.run_pod_safely, args=(pod,), daemon=True)
        self.pod_threads[pod["metadata"]["uid"]] = t
        t.start()

    # -- the kubelet ---------------------------------------------------------------------------
    def run_pod_safely(self, pod: dict[str, Any]) -> None:
        try:
            PodRun(self, pod).run()
        except Exception as exc:  # noqa: BLE001
            log.exception("pod %s", pod["metadata"]["name"])
            self.errors.append(f"pod {pod['metadata']['name']}: {exc!r}")


class PodRun:
    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        self.k = kubelet
        self.kube = kubelet.kube
        self.pod = pod
        self.meta = pod["metadata"]
        self.ns, self.name = self.meta["namespace"], self.meta["name"]
        self.spec = pod["spec"]
        self.dir = kubelet.root / "pods" / self.meta["uid"]
        self.grace = int(self.spec.get("terminationGracePeriodSeconds", 30))
        self.statuses: dict[str, dict[str, Any]] = {}
        self.restarts: dict[str, int] = {}
        self.sigkilled: list[str] = []  # containers that overran the grace period

    def cname(self, c: dict[str, Any]) -> str:
        return f"k8s-{self.name}-{c['name']}"

    def deletion(self) -> int | None:
        """The grace period of the pod's deletion (``deletionGracePeriodSeconds``), or None if
        it is not being deleted (0: the object is gone, a forced delete)."""
        try:
            meta = self.kube.get("pods", self.ns, self.name)["metadata"]
        except Exception:  # noqa: BLE001 - 404
            return 0
        if "deletionTimestamp" not in meta:
            return None
        return int(meta.get("deletionGracePeriodSeconds", self.grace))

    def deleted(self) -> bool:
        return self.deletion() is not None

    def set_status(self, phase: str, **extra: Any) -> None:
        def write(obj: dict[str, Any]) -> None:
            st = obj.setdefault("status", {})
            st["phase"] = phase
            inits = [c["name"] for c in self.spec.get("initContainers", [])]
            st["initContainerStatuses"] = [self.statuses[n] for n in inits if n in self.statuses]
            mains = [c["name"] for c in self.spec["containers"]]
            st["containerStatuses"] = [self.statuses[n] for n in mains if n in self.statuses]
            st.update(extra)

        self.kube.update("pods", self.ns, self.name, write)

    def volumes(self) -> dict[str, Path]:
        out = {}
        for v in self.spec.get("volumes", []):
            if "emptyDir" not in v and "hostPath" not in v:
                raise RuntimeError(f"volume {v['name']}: only emptyDir and hostPath")
            path = (
                Path(v["hostPath"]["path"]) if "hostPath" in v else self.dir / "volumes" / v["name"]
            )
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777)
            out[v["name"]] = path
        return out

    def env(self, c: dict[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            secret = ref.get("secretRef")
            if secret:
                try:
                    obj = self.kube.get("secrets", self.ns, secret["name"])
                except Exception:  # noqa: BLE001
                    if secret.get("optional"):
                        continue
                    raise
                for k, v in (obj.get("data") or {}).items():
                    out[k] = base64.b64decode(v).decode()
                out.update(obj.get("stringData") or {})
        for e in c.get("env", []):
            if "value" in e:
                out[e["name"]] = e["value"]
                continue
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            if path == "metadata.name":
                out[e["name"]] = self.name
            elif path == "metadata.namespace":
                out[e["name"]] = self.ns
            elif m := re.fullmatch(r"metadata\.annotations\['(.+)'\]", path):
                out[e["name"]] = self.meta.get("annotations", {}).get(m.group(1), "")
            else:
                raise RuntimeError(f"fieldPath {path} not supported")
        return out

    def argv(self, c: dict[str, Any], vols: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        name = self.cname(c)
        term = self.dir / "termination" / c["name"]
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_text("")
        os.chmod(term, 0o666)
        args = [
            "run",
            "-d",
            "--name",
            name,
            f"--label=io.pfsfs.kubelet={self.k.tag}",
            "--pull=never",
            "-v",
            f"{term}:/dev/termination-log",
        ]
        if not self.spec.get("hostNetwork"):
            raise RuntimeError("the test kubelet runs hostNetwork pods only")
        args.append("--network=host")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            args.append("--privileged")
        if "runAsUser" in sc:
            args.append(f"--user={sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}")
        if "ALL" in (sc.get("capabilities") or {}).get("drop", []):
            args.append("--cap-drop=all")
        if sc.get("allowPrivilegeEscalation") is False:
            args.append("--security-opt=no-new-privileges")
        limits = (c.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            mem = memory_bytes(limits["memory"])
            args += [f"--memory={mem}b", f"--memory-swap={mem}b"]
        if "cpu" in limits:
            cpu = limits["cpu"]
            cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
            args.append(f"--cpus={cores:g}")
        for vm in c.get("volumeMounts", []):
            opts = ["ro"] if vm.get("readOnly") else ["rw"]
            prop = {"Bidirectional": "rshared", "HostToContainer": "rslave"}.get(
                vm.get("mountPropagation", "")
            )
            if prop:
                opts.append(prop)
            args += ["-v", f"{vols[vm['name']]}:{vm['mountPath']}:{','.join(opts)}"]
        if c.get("workingDir"):
            args.append(f"--workdir={c['workingDir']}")
        env = self.env(c)
        for key in sorted(env):
            args += ["-e", key]
        if c.get("command"):
            args += ["--entrypoint", json.dumps(c["command"])]
        args.append(c["image"])
        args += c.get("args", [])
        return args, env

    def start(self, c: dict[str, Any], vols: dict[str, Path]) -> None:
        args, env = self.argv(c, vols)
        podman(*args, env=env, check=True)
        self.statuses[c["name"]] = {
            "name": c["name"],
            "ready": False,
            "started": True,
            "restartCount": self.restarts.get(c["name"], 0),
            "image": c["image"],
            "state": {"running": {}},
        }

    def inspect(self, c: dict[str, Any]) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}", self.cname(c))
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def finish(self, c: dict[str, Any]) -> int:
        """Record the exited container's status and logs; its exit code."""
        st = self.inspect(c)
        code = int(st.get("ExitCode", 137))
        logs = podman("logs", self.cname(c))
        self.kube.logs[(self.ns, self.name, c["name"])] = (logs.stdout + logs.stderr).encode()
        message = (self.dir / "termination" / c["name"]).read_text()
        if not message and c.get("terminationMessagePolicy") == "FallbackToLogsOnError" and code:
            message = "\n".join((logs.stdout + logs.stderr).splitlines()[-20:])
        reason = "OOMKilled" if st.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        self.statuses[c["name"]] = {
            "name": c["name"],
            "ready": False,
            "started": False,
            "image": c["image"],
            "restartCount": self.restarts.get(c["name"], 0),
            "state": {
                "terminated": {
                    "exitCode": code,
                    "reason": reason,
                    "message": message,
                    "finishedAt": now_iso(),
                }
            },
        }
        return code

    def running(self, c: dict[str, Any]) -> bool:
        return bool(self.inspect(c).get("Running"))

    def probe(self, c: dict[str, Any]) -> bool:
        probe = c.get("startupProbe")
        if not probe:
            return True
        return podman("exec", self.cname(c), *probe["exec"]["command"]).returncode == 0

    def run(self) -> None:
        try:
            self.run_containers()
        finally:
            self.k.history[self.name] = {
                "statuses": {n: json.loads(json.dumps(v)) for n, v in self.statuses.items()},
                "sigkilled": list(self.sigkilled),
            }
            for c in self.spec.get("initContainers", []) + self.spec["containers"]:
                podman("rm", "-f", "-t", "0", self.cname(c))
            for mp in reversed(fuse_mounts(str(self.dir))):
                force_unmount(mp)
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.deleted():  # the kubelet's final delete: the API object goes now
                self.kube.remove("pods", self.ns, self.name)

    def run_containers(self) -> None:
        vols = self.volumes()
        for c in self.spec.get("initContainers", []) + self.spec["containers"]:
            if podman("image", "exists", c["image"]).returncode != 0:
                self.statuses[c["name"]] = {
                    "name": c["name"],
                    "ready": False,
                    "image": c["image"],
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{c["image"]}"',
                        }
                    },
                }
                self.set_status("Pending")
                while not self.deleted() and not self.k.stopping.is_set():
                    time.sleep(0.3)
                return
        self.set_status("Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
        sidecars: list[dict[str, Any]] = []
        for c in self.spec.get("initContainers", []):
            self.start(c, vols)
            if c.get("restartPolicy") == "Always":
                sidecars.append(c)
                while not self.probe(c):
                    if self.deleted() or not self.running(c):
                        self.end(sidecars, [], failed=True)
                        return
                    time.sleep(0.3)
                continue
            podman("wait", self.cname(c), timeout=300)
            if self.finish(c) != 0:
                self.end(sidecars, [], failed=True)
                return
        mains = list(self.spec["containers"])
        for c in mains:
            self.start(c, vols)
        self.set_status("Running")
        while any(self.running(c) for c in mains):
            grace = self.deletion()
            if grace is not None:
                self.terminate(mains, sidecars, grace)
                break
            for side in sidecars:
                if not self.running(side):
                    self.restarts[side["name"]] = self.restarts.get(side["name"], 0) + 1
                    log.info("pod %s: restarting sidecar %s", self.name, side["name"])
                    podman("start", self.cname(side))
            time.sleep(0.3)
        codes = [self.finish(c) for c in mains]
        self.end(sidecars, mains, failed=any(codes))

    def terminate(
        self, mains: list[dict[str, Any]], sidecars: list[dict[str, Any]], grace: float
    ) -> None:
        """Stop the pod as the kubelet does, within ONE grace period: SIGTERM to the main
        containers; once they have exited, SIGTERM to the native sidecars in reverse order;
        whatever still runs when the grace is over gets SIGKILL (a container still gets
        ``MIN_GRACE`` seconds after its SIGTERM, as kuberuntime's minimum grace period)."""
        deadline = time.monotonic() + grace
        self.stop_within(mains, deadline)
        for side in reversed(sidecars):
            self.stop_within([side], deadline)

    def stop_within(self, containers: list[dict[str, Any]], deadline: float) -> None:
        live = [c for c in containers if self.running(c)]
        for c in live:
            podman("kill", "--signal", "TERM", self.cname(c))
        until = max(deadline, time.monotonic() + MIN_GRACE)
        while live and time.monotonic() < until:
            time.sleep(0.1)
            live = [c for c in live if self.running(c)]
        for c in live:
            log.info("pod %s: %s overran the grace period; SIGKILL", self.name, c["name"])
            self.sigkilled.append(c["name"])
            podman("kill", "--signal", "KILL", self.cname(c))
            podman("wait", self.cname(c), timeout=60)

    def end(
        self, sidecars: list[dict[str, Any]], mains: list[dict[str, Any]], failed: bool
    ) -> None:
        """Sidecars get SIGTERM in reverse order once the main containers are done (within the
        deletion's grace if the pod is being deleted, else terminationGracePeriodSeconds);
        then the pod's phase: sidecar exit codes do not count."""
        grace = self.deletion()
        self.terminate([], sidecars, self.grace if not grace else grace)
        for side in sidecars:
            self.finish(side)
        self.set_status("Failed" if failed else "Succeeded")
