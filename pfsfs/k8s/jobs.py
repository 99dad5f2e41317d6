"""The Kubernetes Job of one pfsfs job: a pure function from a pipeline spec to a manifest.

One Indexed Job per pfsfs job (``completions`` = shards, at most ``parallelism``); each pod has
- ``pfsfs-wrap``: an init container copying the POSIX-sh wrapper into the ``pfsfs-ctl``
  emptyDir;
- ``pfsfs``: a native sidecar (init container, ``restartPolicy: Always``) running
  ``pfsfs sidecar --job``: in fuse mode privileged, mounting inputs under the ``pfs`` emptyDir
  with ``Bidirectional`` propagation; in copy mode unprivileged, copying them there;
- ``user``: the transform's image, ``pfsfs-wrap -- <cmd>`` as PID 1, unprivileged (the spec's
  numeric ``user``, else uid 1000), ``resource_limits`` as its limits, ``pfs`` with
  ``HostToContainer`` (fuse) or no propagation (copy).
Per-index retries are ``datum_tries - 1`` (``backoffLimitPerIndex``), a wrapper exit of 86 fails
the Job (``podFailurePolicy``), ``podReplacementPolicy: Failed`` never runs a replacement
beside a pod that is still flushing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..pipeline.spec import PipelineSpec
from .protocol import COPY, EXIT_NO_RETRY, FUSE

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PIPELINE = "pfsfs.io/pipeline"
LABEL_JOB = "pfsfs.io/job"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CTL = "/run/pfsfs"
PFS = "/pfs"
HOME_VOLUME = "/var/lib/pfsfs"
HOME = f"{HOME_VOLUME}/home"  # a directory the sidecar creates: it owns it, whatever its uid
WRAPPER = f"{CTL}/pfsfs-wrap"
DEFAULT_UID = 1000
SIDECAR = "pfsfs"
USER = "user"


@dataclass(frozen=True)
class ClusterConfig:
    """How this scheduler's Jobs run in its cluster (not part of any spec)."""

    store_url: str
    """``s3://bucket/prefix`` the pods read and write (the scheduler's own store)."""
    endpoint_url: str | None = None
    namespace: str = "default"
    image: str = "pfsfs/pfsfs:0.1.0"
    """The pfsfs image of the sidecar and the wrapper's init container."""
    store_secret: str | None = "pfsfs-s3"
    """A Secret with AWS_* variables, given to the sidecar only (optional in the pod)."""
    service_account: str | None = None
    image_pull_policy: str | None = None
    grace_seconds: int = 60
    host_network: bool = False
    sidecar_env: Mapping[str, str] = field(default_factory=dict)


def job_name(pipeline: str, job_id: str) -> str:
    """A DNS-1123 name: ``pfsfs-<pipeline>-<job id tail>`` (at most 63 characters)."""
    base = re.sub(r"[^a-z0-9-]", "-", pipeline.lower()).strip("-")[:40] or "p"
    return f"pfsfs-{base}-{job_id[-12:]}"


def job_labels(pipeline: str, job_id: str) -> dict[str, str]:
    return {MANAGED_BY: "pfsfs", LABEL_PIPELINE: pipeline, LABEL_JOB: job_id}


def run_as(spec: PipelineSpec) -> tuple[int, int]:
    """The user container's uid and gid: the spec's numeric ``user``, else 1000 (never 0)."""
    user = spec.transform.user
    if user is None:
        return DEFAULT_UID, DEFAULT_UID
    uid_text, _, gid_text = user.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        raise InvalidInput(
            f"transform.user: the kubernetes runner needs a numeric uid[:gid], not {user!r}"
        )
    uid = int(uid_text)
    gid = int(gid_text) if gid_text else uid
    if uid == 0:
        raise InvalidInput("transform.user: the kubernetes runner does not run transforms as root")
    return uid, gid


def _quantity_cpu(cores: float) -> str:
    millis = math.ceil(cores * 1000)
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def _resources(spec: PipelineSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if spec.resource_limits.cpu is not None:
        limits["cpu"] = _quantity_cpu(spec.resource_limits.cpu)
    if spec.resource_limits.memory is not None:
        limits["memory"] = str(spec.resource_limits.memory)
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def active_deadline(spec: PipelineSpec, per_shard: int) -> int | None:
    """``kubernetes.job_timeout``, else every datum of the largest shard at ``datum_timeout``
    for every try plus five minutes of pod start-up; None when neither is set."""
    if spec.kubernetes.job_timeout is not None:
        return math.ceil(spec.kubernetes.job_timeout)
    if spec.datum_timeout is None:
        return None
    return math.ceil(spec.datum_timeout * per_shard * spec.datum_tries) + 300


def _user_container(spec: PipelineSpec, job_id: str, mode: str) -> dict[str, Any]:
    t = spec.transform
    uid, gid = run_as(spec)
    env = [{"name": k, "value": v} for k, v in t.env]
    env.append({"name": "PFS_JOB_ID", "value": job_id})
    env.append({"name": "PFSFS_CTL", "value": CTL})
    if spec.datum_timeout is not None:
        env.append({"name": "PFSFS_WRAP_TIMEOUT", "value": str(math.ceil(spec.datum_timeout))})
    if t.stdin:
        env.append({"name": "PFSFS_WRAP_STDIN", "value": "\n".join(t.stdin)})
    pfs_mount: dict[str, Any] = {"name": "pfs", "mountPath": PFS}
    if mode == FUSE:
        pfs_mount["mountPropagation"] = "HostToContainer"
    container: dict[str, Any] = {
        "name": USER,
        "image": t.image,
        "command": [WRAPPER, "--"],
        "args": list(t.cmd),
        "env": env,
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [pfs_mount, {"name": "pfsfs-ctl", "mountPath": CTL}],
    }
    if t.working_dir is not None:
        container["workingDir"] = t.working_dir
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    return container


def sidecar_grace(pod_grace: int) -> int:
    """The sidecar's own hard deadline at SIGTERM (``--grace``): below the pod's grace period,
    which the kubelet enforces with SIGKILL and which the user container's shutdown shares
    (10 s less, or half of a short one)."""
    return pod_grace - 10 if pod_grace > 20 else max(1, pod_grace // 2)


def _sidecar(spec: PipelineSpec, job_id: str, mode: str, cluster: ClusterConfig) -> dict[str, Any]:
    env = [
        {"name": "PFSFS_STORE", "value": cluster.store_url},
        {"name": "PFSFS_HOME", "value": HOME},
        {"name": "PFSFS_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
        },
    ]
    if cluster.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": cluster.endpoint_url})
    env += [{"name": k, "value": v} for k, v in sorted(cluster.sidecar_env.items())]
    grace = sidecar_grace(cluster.grace_seconds)
    container: dict[str, Any] = {
        "name": SIDECAR,
        "image": cluster.image,
        "restartPolicy": "Always",
        "args": ["sidecar", "--job", job_id, "--ctl", CTL, "--pfs", PFS, "--grace", str(grace)],
        "env": env,
        "startupProbe": {
            "exec": {"command": ["test", "-e", f"{CTL}/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 600,
        },
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "volumeMounts": [
            {"name": "pfs", "mountPath": PFS},
            {"name": "pfsfs-ctl", "mountPath": CTL},
            {"name": "pfsfs-home", "mountPath": HOME_VOLUME},
        ],
    }
    if cluster.store_secret:
        container["envFrom"] = [{"secretRef": {"name": cluster.store_secret, "optional": True}}]
    if mode == FUSE:
        container["securityContext"] = {"privileged": True}  # /dev/fuse and Bidirectional
        container["volumeMounts"][0]["mountPropagation"] = "Bidirectional"
    else:
        # the user's uid: it reads what the user writes to /pfs/out
        container["securityContext"] = _unprivileged(spec)
    if cluster.image_pull_policy:
        container["imagePullPolicy"] = cluster.image_pull_policy
    return container


def _unprivileged(spec: PipelineSpec) -> dict[str, Any]:
    """The securityContext of a container that runs as the transform's user, without any
    privilege (copy mode's sidecar, the wrapper installer)."""
    uid, gid = run_as(spec)
    return {
        "runAsUser": uid,
        "runAsGroup": gid,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _wrap_installer(cluster: ClusterConfig, mode: str, spec: PipelineSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "pfsfs-wrap",
        "image": cluster.image,
        "args": ["sidecar", "--install-wrapper", WRAPPER],
        "volumeMounts": [{"name": "pfsfs-ctl", "mountPath": CTL}],
    }
    if mode == COPY:
        container["securityContext"] = _unprivileged(spec)
    if cluster.image_pull_policy:
        container["imagePullPolicy"] = cluster.image_pull_policy
    return container


def build_job(
    spec: PipelineSpec,
    job_id: str,
    shards: int,
    per_shard: int,
    cluster: ClusterConfig,
) -> dict[str, Any]:
    """The Job manifest (a plain dict the client sends as is) for ``shards`` pods."""
    if spec.transform.image is None:
        raise InvalidInput("transform.image: required by the kubernetes runner")
    mode = spec.kubernetes.mode
    labels = job_labels(spec.name, job_id)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": cluster.grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "initContainers": [
            _wrap_installer(cluster, mode, spec),
            _sidecar(spec, job_id, mode, cluster),
        ],
        "containers": [_user_container(spec, job_id, mode)],
        "volumes": [
            {"name": "pfs", "emptyDir": {}},
            {"name": "pfsfs-ctl", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "pfsfs-home", "emptyDir": {"sizeLimit": "20Gi"}},
        ],
    }
    if mode == COPY:
        pod_spec["securityContext"] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if cluster.service_account:
        pod_spec["serviceAccountName"] = cluster.service_account
    if cluster.host_network:
        pod_spec["hostNetwork"] = True
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": shards,
        "parallelism": min(spec.parallelism, shards),
        "backoffLimitPerIndex": spec.datum_tries - 1,
        "maxFailedIndexes": 0,
        "podReplacementPolicy": "Failed",
        "ttlSecondsAfterFinished": math.ceil(spec.kubernetes.ttl_after_finished),
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": USER,
                        "operator": "In",
                        "values": [EXIT_NO_RETRY],
                    },
                }
            ]
        },
        "template": {
            "metadata": {
                "labels": dict(labels),
                "annotations": {"eks.amazonaws.com/skip-containers": f"{USER},pfsfs-wrap"},
            },
            "spec": pod_spec,
        },
    }
    deadline = active_deadline(spec, per_shard)
    if deadline is not None:
        job_spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(spec.name, job_id), "labels": labels},
        "spec": job_spec,
    }
