"""The kubernetes runner: a whole pfsfs job as ONE Indexed Kubernetes Job.

Unlike the podman and local runners it does not run datums here. ``run_batch`` (the engine
calls it with the datums left to run) writes the job's plan to the store, creates the Job
(``pfsfs.k8s.jobs.build_job``) or adopts the one a previous scheduler created (label
``pfsfs.io/job``), follows it (a watch with a timeout, then a read: 410 and 5xx/429 answers
are retried), and surfaces what keeps pods from running (ImagePullBackOff, Unschedulable, a
webhook that stripped the native sidecar) as the job's failure. When the Job ends it reads the
datum records from the store and trusts only them: a datum without a record failed, whatever
the Job status says (Kubernetes ignores sidecar exit codes). The engine then merges the
records' outputs and makes the one output commit, as for any runner. Pod logs are split per
datum (the wrapper's ``begin datum``/``end datum`` lines) into the job's log directory, so
``pfsfs logs`` shows them; a failure's reason (OOMKilled, Evicted, the deadline...) is written
beside them and into the datum's error (``pfsfs job inspect``).

Cluster settings come from the constructor (``EngineOptions.runner_options["kubernetes"]``) or
the environment: ``PFSFS_K8S_NAMESPACE``, ``PFSFS_K8S_IMAGE`` (the pfsfs image),
``PFSFS_K8S_SECRET`` (AWS_* for the sidecar), ``PFSFS_K8S_SERVICE_ACCOUNT``,
``PFSFS_K8S_PENDING_TIMEOUT``, ``PFSFS_K8S_HOST_NETWORK``, ``PFSFS_K8S_GRACE`` (the pods'
``terminationGracePeriodSeconds``, default 60), ``KUBECONFIG``; in a pod, the
in-cluster config. The ``kubernetes`` package is an optional extra: ``pip install
'pfsfs[kubernetes]'``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from ...errors import PfsError
from ...k8s import jobs as k8sjobs
from ...k8s import protocol
from ..datums import Datum

log = logging.getLogger(__name__)

MIN_VERSION = (1, 29)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
STUCK_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)
BEGIN = re.compile(r"^pfsfs-wrap: begin datum ([0-9a-f]+)\s*$")
END = re.compile(r"^pfsfs-wrap: end datum ([0-9a-f]+)\b")


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise PfsError(
            "runner kubernetes needs the kubernetes client: pip install 'pfsfs[kubernetes]'"
        ) from None
    return kubernetes


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def cluster_from_store(store: Mapping[str, Any], **options: Any) -> k8sjobs.ClusterConfig:
    """The pods use the scheduler's own store, which must be S3 (they cannot see this disk)."""
    if store.get("type") != "s3":
        raise PfsError(
            "runner kubernetes needs an S3 store (the pods read inputs from and write outputs "
            f"to the bucket); this home's store is {store.get('type')}"
        )
    url = f"s3://{store['bucket']}/{store.get('prefix') or ''}".rstrip("/")
    return k8sjobs.ClusterConfig(store_url=url, endpoint_url=store.get("endpoint_url"), **options)


class KubernetesRunner:
    """Runs a pfsfs job as an Indexed Job through the ``kubernetes`` client."""

    kind = "kubernetes"

    def __init__(
        self,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        image: str | None = None,
        store_secret: str | None = None,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        grace_seconds: int | None = None,
        host_network: bool | None = None,
        sidecar_env: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
        pending_timeout: float | None = None,
        api_retries: int = 6,
    ) -> None:
        env = os.environ
        self.namespace = namespace or env.get("PFSFS_K8S_NAMESPACE") or "default"
        self.kubeconfig = kubeconfig or env.get("KUBECONFIG")
        self.context = context
        self.options: dict[str, Any] = {
            "namespace": self.namespace,
            "image": image or env.get("PFSFS_K8S_IMAGE") or "pfsfs/pfsfs:0.1.0",
            "store_secret": store_secret or env.get("PFSFS_K8S_SECRET") or "pfsfs-s3",
            "service_account": service_account or env.get("PFSFS_K8S_SERVICE_ACCOUNT"),
            "image_pull_policy": image_pull_policy,
            "grace_seconds": grace_seconds or int(env.get("PFSFS_K8S_GRACE") or 60),
            "host_network": (
                host_network if host_network is not None else _env_flag("PFSFS_K8S_HOST_NETWORK")
            ),
            "sidecar_env": dict(sidecar_env or {}),
        }
        self.poll_interval = poll_interval
        self.pending_timeout = pending_timeout or float(env.get("PFSFS_K8S_PENDING_TIMEOUT") or 300)
        self.api_retries = api_retries
        self._api_client: Any = None

    # -- the API -------------------------------------------------------------------------------
    def api(self) -> Any:
        if self._api_client is None:
            k = _kubernetes()
            configuration = k.client.Configuration()
            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.kubeconfig:
                    k.config.load_incluster_config(client_configuration=configuration)
                else:
                    k.config.load_kube_config(
                        config_file=self.kubeconfig,
                        context=self.context,
                        client_configuration=configuration,
                    )
            except (k.config.ConfigException, OSError) as exc:
                raise PfsError(f"runner kubernetes: no cluster configuration: {exc}") from None
            configuration.retries = 0  # our own retries, with backoff, in ``call``
            self._api_client = k.client.ApiClient(configuration)
        return self._api_client

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried on 429/5xx and connection errors; JSON decoded."""
        k = _kubernetes()
        import urllib3

        delay = 0.2
        for attempt in range(self.api_retries + 1):
            try:
                response = fn(*args, _preload_content=False, **kwargs)
                data = response.data
                return json.loads(data) if data and what != "log" else data
            except k.client.ApiException as exc:
                if exc.status not in RETRY_STATUSES or attempt == self.api_retries:
                    raise
                retry_after = (exc.headers or {}).get("Retry-After")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
                log.info("kubernetes %s: HTTP %s; retrying in %.1fs", what, exc.status, wait)
            except urllib3.exceptions.HTTPError as exc:
                if attempt == self.api_retries:
                    raise PfsError(
                        f"kubernetes {what}: cannot reach the API server: {exc}"
                    ) from None
                wait = delay
                log.info("kubernetes %s: %s; retrying", what, exc)
            time.sleep(wait)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _batch(self) -> Any:
        return _kubernetes().client.BatchV1Api(self.api())

    def _core(self) -> Any:
        return _kubernetes().client.CoreV1Api(self.api())

    def check(self) -> None:
        """Refuse clusters without native sidecars (before 1.29), clearly."""
        k = _kubernetes()
        try:
            info = self.call("version", k.client.VersionApi(self.api()).get_code)
        except k.client.ApiException as exc:
            raise PfsError(
                f"runner kubernetes: cannot read the cluster version: {exc.reason}"
            ) from None
        major = int(re.sub(r"\D", "", str(info.get("major", "0"))) or 0)
        minor = int(re.sub(r"\D", "", str(info.get("minor", "0"))) or 0)
        if (major, minor) < MIN_VERSION:
            raise PfsError(
                f"the cluster runs Kubernetes {info.get('gitVersion') or f'{major}.{minor}'}; "
                "runner kubernetes needs 1.29 or newer (native sidecars: init containers with "
                "restartPolicy Always)"
            )

    # -- one job -------------------------------------------------------------------------------
    async def run_batch(self, run: Any, todo: list[tuple[Datum, str]]) -> None:
        """Run ``todo`` (datum, hash) of the engine's job run ``run`` as one Indexed Job and
        record every datum's outcome in ``run`` (records, outputs, cache, gc roots)."""
        if not todo:
            return
        batch = _Batch(self, run, todo)
        try:
            await batch.run()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(batch.on_cancel)
            raise


class _Batch:
    """The Kubernetes side of one job run."""

    def __init__(self, runner: KubernetesRunner, run: Any, todo: list[tuple[Datum, str]]) -> None:
        self.runner = runner
        self.run_ = run
        self.todo = todo
        self.spec = run.spec
        self.job_id: str = run.job.id
        self.store = run.repository.store
        self.ns = runner.namespace
        self.name = k8sjobs.job_name(self.spec.name, self.job_id)
        self.selector = f"{k8sjobs.LABEL_JOB}={self.job_id}"
        self.cluster = cluster_from_store(run.repository.config.store, **runner.options)
        self.plan: protocol.Plan | None = None
        self.checked_pod = False
        self.stuck_since: dict[str, float] = {}
        self.fatal = ""

    async def run(self) -> None:
        await trio.to_thread.run_sync(self.start)
        resource_version = ""
        recreated = 0
        while True:
            job = await trio.to_thread.run_sync(self.read_job, abandon_on_cancel=True)
            if job is None:
                if await trio.to_thread.run_sync(self.all_recorded):
                    break  # finished and already cleaned up (ttl) before we looked
                if recreated >= 3:
                    self.fatal = "the Kubernetes Job was deleted three times; giving up"
                    break
                recreated += 1
                log.warning(
                    "job %s: the Kubernetes Job %s is gone; creating it again",
                    self.job_id,
                    self.name,
                )
                await trio.to_thread.run_sync(self.create)
                continue
            if finished(job):
                await trio.to_thread.run_sync(self.wait_pods_stopped, abandon_on_cancel=True)
                break
            pods = await trio.to_thread.run_sync(self.pods, abandon_on_cancel=True)
            self.fatal = self.inspect_pods(pods)
            if self.fatal:
                await trio.to_thread.run_sync(self.delete)
                break
            resource_version = await trio.to_thread.run_sync(
                self.wait_change,
                job.get("metadata", {}).get("resourceVersion", resource_version),
                abandon_on_cancel=True,
            )
        await trio.to_thread.run_sync(self.collect, job)

    # -- creating or adopting ----------------------------------------------------------------
    def start(self) -> None:
        plan = protocol.Plan(
            job=self.job_id,
            pipeline=self.spec.name,
            mode=self.spec.kubernetes.mode,
            shards=min(self.spec.parallelism, len(self.todo)),
            datums=tuple(self.plan_datum(d, h) for d, h in self.todo),
        )
        self.plan = protocol.put_plan(self.store, plan)
        known = {d.id for d in self.plan.datums}
        missing = [d.id for d, _ in self.todo if d.id not in known]
        if missing:
            raise PfsError(f"job {self.job_id}: its stored plan lacks datum {missing[0][:12]}")
        found = self.runner.call(
            "list jobs",
            self.runner._batch().list_namespaced_job,
            self.ns,
            label_selector=self.selector,
        )
        if found.get("items"):
            name = found["items"][0]["metadata"]["name"]
            log.info("job %s: adopting the running Kubernetes Job %s", self.job_id, name)
            self.name = name
            return
        self.create()

    def plan_datum(self, datum: Datum, dhash: str) -> protocol.PlanDatum:
        inputs = []
        for di in datum.inputs:
            files = tuple(f.path for f in di.files)
            total = len(self.run_.entries.get((di.repo, di.commit_id), {}))
            inputs.append(
                protocol.PlanInput(di.name, di.repo, di.commit_id, files, whole=len(files) == total)
            )
        return protocol.PlanDatum(datum.id, dhash, datum.describe(), tuple(inputs))

    def manifest(self) -> dict[str, Any]:
        assert self.plan is not None
        per_shard = -(-len(self.plan.datums) // self.plan.shards)
        return k8sjobs.build_job(self.spec, self.job_id, self.plan.shards, per_shard, self.cluster)

    def create(self) -> None:
        k = _kubernetes()
        body = self.manifest()
        try:
            self.runner.call(
                "create job", self.runner._batch().create_namespaced_job, self.ns, body
            )
            log.info(
                "job %s: created the Kubernetes Job %s (%d pods)",
                self.job_id,
                self.name,
                body["spec"]["completions"],
            )
        except k.client.ApiException as exc:
            if exc.status == 409:  # created meanwhile (our own retried POST, or a twin)
                log.info(
                    "job %s: the Kubernetes Job %s exists; adopting it", self.job_id, self.name
                )
                return
            raise PfsError(
                f"cannot create the Kubernetes Job {self.name}: {_api_message(exc)}"
            ) from None

    def delete(self) -> None:
        k = _kubernetes()
        try:
            self.runner.call(
                "delete job",
                self.runner._batch().delete_namespaced_job,
                self.name,
                self.ns,
                propagation_policy="Background",
            )
        except k.client.ApiException as exc:
            if exc.status != 404:
                log.warning("cannot delete the Kubernetes Job %s: %s", self.name, exc.reason)

    def on_cancel(self) -> None:
        """Stopped: delete the Job if the pipeline no longer wants it (deleted, stopped,
        updated); otherwise (the scheduler is stopping) leave it for the next one to adopt."""
        rec = self.run_.state.get_pipeline(self.spec.name)
        job = self.run_.job
        gone = rec is None or rec.state != "running" or rec.hash != job.spec_hash
        if gone or rec.epoch != job.epoch:
            log.info("job %s: deleting its Kubernetes Job %s", self.job_id, self.name)
            try:
                self.delete()
            except PfsError as exc:
                log.warning("%s", exc.message)
        else:
            log.info(
                "job %s: leaving the Kubernetes Job %s running (adopted on restart)",
                self.job_id,
                self.name,
            )

    # -- following ---------------------------------------------------------------------------
    def read_job(self) -> dict[str, Any] | None:
        k = _kubernetes()
        try:
            return self.runner.call(
                "read job",
                self.runner._batch().read_namespaced_job,  # type: ignore[no-any-return]
                self.name,
                self.ns,
            )
        except k.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise PfsError(
                f"cannot read the Kubernetes Job {self.name}: {_api_message(exc)}"
            ) from None

    def wait_change(self, resource_version: str) -> str:
        """Watch the Job until it changes or ``poll_interval`` passes (410: start afresh)."""
        k = _kubernetes()
        w = k.watch.Watch()
        timeout = max(1, round(self.runner.poll_interval))
        try:
            for event in w.stream(
                self.runner._batch().list_namespaced_job,
                self.ns,
                field_selector=f"metadata.name={self.name}",
                resource_version=resource_version or None,
                timeout_seconds=timeout,
                allow_watch_bookmarks=True,
                _request_timeout=timeout + 5,
            ):
                obj = event.get("raw_object") or {}
                rv = obj.get("metadata", {}).get("resourceVersion")
                if rv:
                    resource_version = rv
                if event.get("type") != "BOOKMARK":
                    w.stop()
                    break
        except k.client.ApiException as exc:
            if exc.status == 410:
                return ""  # too old: the next read gives a fresh resourceVersion
            if exc.status not in RETRY_STATUSES:
                raise PfsError(
                    f"cannot watch the Kubernetes Job {self.name}: {_api_message(exc)}"
                ) from None
            time.sleep(self.runner.poll_interval)
        except Exception as exc:  # noqa: BLE001 - a broken stream: read again
            log.debug("watch of %s ended: %r", self.name, exc)
            time.sleep(min(self.runner.poll_interval, 1.0))
        return resource_version

    def pods(self) -> list[dict[str, Any]]:
        found = self.runner.call(
            "list pods",
            self.runner._core().list_namespaced_pod,
            self.ns,
            label_selector=self.selector,
        )
        pods: list[dict[str, Any]] = found.get("items") or []
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def inspect_pods(self, pods: list[dict[str, Any]]) -> str:
        """The reason to give up on the Job now, or "": a webhook removed the native sidecar,
        or a pod has been unable to start (image, scheduling) for ``pending_timeout``."""
        now = time.monotonic()
        for pod in pods:
            name = pod["metadata"]["name"]
            if not self.checked_pod:
                self.checked_pod = True
                inits = {c["name"]: c for c in pod.get("spec", {}).get("initContainers") or []}
                side = inits.get(k8sjobs.SIDECAR)
                if side is None or side.get("restartPolicy") != "Always":
                    return (
                        f"pod {name}: the pfsfs sidecar lost restartPolicy: Always (a mutating "
                        "webhook built against an old Kubernetes API?); the pod would never start"
                    )
            if pod.get("status", {}).get("phase") != "Pending":
                self.stuck_since.pop(name, None)
                continue
            why = stuck_reason(pod)
            if not why:
                self.stuck_since.pop(name, None)
                continue
            first = self.stuck_since.setdefault(name, now)
            if now - first >= self.runner.pending_timeout:
                return f"pod {name} could not start for {self.runner.pending_timeout:g}s: {why}"
        return ""

    def wait_pods_stopped(self) -> None:
        """A finished Job may still have pods stopping (a deadline, a failed index: they get
        SIGTERM and their grace period); wait for them, so that a record their sidecar writes
        meanwhile counts and their statuses and logs are final. At most the grace period plus
        half a minute: what a pod does after that cannot matter (the kubelet SIGKILLs it)."""
        deadline = time.monotonic() + self.cluster.grace_seconds + 30
        said = False
        while time.monotonic() < deadline:
            live = [
                p["metadata"]["name"]
                for p in self.pods()
                if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            ]
            if not live:
                return
            if not said:
                log.info("job %s: waiting for pod(s) %s to stop", self.job_id, ", ".join(live))
                said = True
            time.sleep(self.runner.poll_interval)

    def all_recorded(self) -> bool:
        assert self.plan is not None
        return all(protocol.has_record(self.store, self.job_id, d.id) for d, _ in self.todo)

    # -- the end -----------------------------------------------------------------------------
    def collect(self, job: dict[str, Any] | None) -> None:
        """Records decide; the Job and its pods only explain failures."""
        from ..state import FAILED, PROCESSED, CacheEntry

        assert self.plan is not None
        run = self.run_
        job_reason = self.fatal or (job_failure(job) if job else "")
        try:
            pods = self.pods()
        except Exception as exc:  # noqa: BLE001 - only for explanations and logs
            log.warning("job %s: cannot list pods: %s", self.job_id, exc)
            pods = []
        position = {d.id: k for k, d in enumerate(self.plan.datums)}
        logs = self.split_logs(pods)
        reasons = self.shard_reasons(pods)
        new_locs = []
        for datum, dhash in self.todo:
            record = protocol.get_record(self.store, self.job_id, datum.id)
            shard = position[datum.id] % self.plan.shards
            tries = logs.get(datum.id, [])
            attempts = max(len(tries), 1)
            if record is not None:
                outputs = record.entries()
                rec = run._record(datum, dhash, PROCESSED, outputs)
                rec.attempts, rec.duration = attempts, record.duration
                run.outputs[datum.id] = outputs
                run.pending_cache[dhash] = CacheEntry(
                    self.job_id, datum.id, record.outputs, record.locs
                )
                locs = record.locators()
                run.roots.extend(locs)
                new_locs.extend(locs)
                error = ""
            else:
                rec = run._record(datum, dhash, FAILED)
                parts = [p for p in (job_reason, reasons.get(shard, "")) if p]
                error = "; ".join(parts) or (
                    "no datum record in the store although the Kubernetes Job completed"
                )
                rec.error, rec.attempts = error, attempts
            self.write_logs(datum.id, tries, error)
        if new_locs:  # the sidecars wrote them: known here, later jobs can reuse them
            run.repository.index.add_objects(new_locs)

    def split_logs(self, pods: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Per datum, the user container's log lines of each attempt (pod order)."""
        out: dict[str, list[str]] = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            text = self.pod_log(name, k8sjobs.USER)
            self.save_pod_log(name, k8sjobs.USER, text)
            self.save_pod_log(name, k8sjobs.SIDECAR, self.pod_log(name, k8sjobs.SIDECAR))
            current: str | None = None
            chunk: list[str] = []
            for line in text.splitlines(keepends=True):
                begin = BEGIN.match(line)
                if begin:
                    current, chunk = begin.group(1), [line]
                    continue
                if current is not None:
                    chunk.append(line)
                    if END.match(line):
                        out.setdefault(current, []).append("".join(chunk))
                        current = None
            if current is not None:
                out.setdefault(current, []).append("".join(chunk))
        return out

    def pod_log(self, pod: str, container: str) -> str:
        try:
            data = self.runner.call(
                "log",
                self.runner._core().read_namespaced_pod_log,
                pod,
                self.ns,
                container=container,
            )
        except Exception as exc:  # noqa: BLE001 - a pod gone or never started: no log
            log.debug("no log of %s/%s: %s", pod, container, exc)
            return ""
        return data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")

    def save_pod_log(self, pod: str, container: str, text: str) -> None:
        if text:
            d = self.run_.dir / "logs" / "pods"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{pod}.{container}.log").write_text(text)

    def write_logs(self, datum_id: str, tries: list[str], error: str) -> None:
        base: Path = self.run_.dir / "logs" / datum_id[:16]
        for n, text in enumerate(tries or [""], 1):
            d = base / f"try-{n}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "stdout.log").write_text(text)
        if error:
            (base / f"try-{max(len(tries), 1)}" / "stderr.log").write_text(f"pfsfs: {error}\n")

    def shard_reasons(self, pods: list[dict[str, Any]]) -> dict[int, str]:
        """Why each shard's last failed pod failed, by completion index."""
        out: dict[int, str] = {}
        for pod in pods:
            meta = pod["metadata"]
            index_text = (meta.get("annotations") or {}).get(k8sjobs.INDEX_ANNOTATION, "")
            if not index_text.isdigit():
                continue
            why = pod_failure(pod)
            if why:
                out[int(index_text)] = why
        return out


# -- reading statuses ---------------------------------------------------------------------------


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj.get("status", {}).get("conditions") or []


def finished(job: dict[str, Any]) -> bool:
    for c in _conditions(job):
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def job_failure(job: dict[str, Any]) -> str:
    for c in _conditions(job):
        if c.get("type") == "Failed" and c.get("status") == "True":
            reason = c.get("reason") or "Failed"
            if reason == "DeadlineExceeded":
                deadline = job.get("spec", {}).get("activeDeadlineSeconds")
                return (
                    f"the Kubernetes Job ran past its deadline (activeDeadlineSeconds {deadline})"
                )
            message = c.get("message") or ""
            return f"the Kubernetes Job failed: {reason}" + (f": {message}" if message else "")
    return ""


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    st = pod.get("status", {})
    return (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])


def stuck_reason(pod: dict[str, Any]) -> str:
    """Why a Pending pod cannot start ("" if it is merely starting)."""
    for cs in _statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            message = waiting.get("message") or ""
            return f"container {cs.get('name')}: {waiting['reason']}" + (
                f": {message}" if message else ""
            )
    for c in _conditions(pod):
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"{c.get('reason') or 'Unschedulable'}: {c.get('message') or ''}".strip(": ")
    return ""


def pod_failure(pod: dict[str, Any]) -> str:
    """Why a pod failed ("" if it did not): eviction, OOM, the user container's exit."""
    st = pod.get("status", {})
    name = pod["metadata"]["name"]
    if st.get("phase") == "Pending":
        why = stuck_reason(pod)
        return f"pod {name}: {why}" if why else ""
    if st.get("phase") != "Failed":
        return ""
    if st.get("reason"):
        return f"pod {name}: {st['reason']}" + (f": {st['message']}" if st.get("message") else "")
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") != k8sjobs.USER:
            continue
        term = (cs.get("state") or {}).get("terminated") or {}
        if term:
            code = term.get("exitCode")
            what = term.get("reason") or "Error"
            message = (term.get("message") or "").strip().splitlines()
            text = f"pod {name}: container user {what} (exit code {code})"
            return text + (f": {message[-1]}" if message else "")
    return f"pod {name} failed"


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
