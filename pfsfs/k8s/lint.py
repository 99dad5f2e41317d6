"""A semantic lint of pod specs, for what schema validation (``kubernetes-validate``) passes but
the API server or the kubelet would reject or get wrong in a pfsfs pod.

- ``mountPropagation`` is one of ``None``, ``HostToContainer``, ``Bidirectional``;
- ``Bidirectional`` only on a privileged container (the API server refuses anything else:
  "Bidirectional mount propagation is available only to privileged containers");
- an init container's ``restartPolicy`` can only be ``Always`` (a native sidecar);
- in a pod with a native sidecar, no regular (app) container uses ``Bidirectional``;
- a volume that a container mounts with ``Bidirectional`` (where FUSE mounts appear) is
  mounted with ``HostToContainer`` by every other container that mounts it: with the default
  ``None`` they see the empty directory, not the mounts (the propagation trap).

``lint(obj)`` takes one parsed manifest (Pod, Job, CronJob, Deployment, StatefulSet, DaemonSet,
ReplicaSet, ReplicationController; other kinds have no pod spec and pass) and returns the
problems, one readable line each, empty when there is none. Pure functions on dicts: the
Kubernetes runner lints the Jobs it generates with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PROPAGATION = ("None", "HostToContainer", "Bidirectional")
_TEMPLATE_KINDS = ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a manifest, or None for kinds that have none."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in _TEMPLATE_KINDS or kind == "ReplicationController":
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        return (job.get("template") or {}).get("spec")
    return None


def lint(obj: dict[str, Any]) -> list[str]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name', '?')}"
    return [f"{name}: {problem}" for problem in lint_pod_spec(spec)]


def lint_all(objs: Iterable[dict[str, Any] | None]) -> list[str]:
    return [p for obj in objs if obj for p in lint(obj)]


def _privileged(container: dict[str, Any]) -> bool:
    return bool((container.get("securityContext") or {}).get("privileged"))


def lint_pod_spec(spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    inits = list(spec.get("initContainers") or [])
    apps = list(spec.get("containers") or [])
    sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
    for c in inits:
        policy = c.get("restartPolicy")
        if policy is not None and policy != "Always":
            problems.append(
                f"init container {c.get('name')}: restartPolicy {policy!r} (only 'Always', "
                "which makes it a native sidecar)"
            )
    shared: dict[str, str] = {}  # volume -> the container mounting it Bidirectional
    for role, containers in (("init container", inits), ("container", apps)):
        for c in containers:
            for vm in c.get("volumeMounts") or []:
                prop = vm.get("mountPropagation")
                where = f"{role} {c.get('name')}: volume {vm.get('name')}"
                if prop is not None and prop not in PROPAGATION:
                    problems.append(
                        f"{where}: mountPropagation {prop!r} (one of {', '.join(PROPAGATION)})"
                    )
                if prop != "Bidirectional":
                    continue
                shared.setdefault(str(vm.get("name")), str(c.get("name")))
                if not _privileged(c):
                    problems.append(
                        f"{where}: Bidirectional propagation needs a privileged container"
                    )
                if role == "container" and sidecars:
                    problems.append(
                        f"{where}: Bidirectional on an app container; only the pfsfs sidecar "
                        "mounts, the app uses HostToContainer"
                    )
    for c in [*inits, *apps]:
        for vm in c.get("volumeMounts") or []:
            owner = shared.get(str(vm.get("name")))
            if owner is None or owner == c.get("name"):
                continue
            if vm.get("mountPropagation") not in ("HostToContainer", "Bidirectional"):
                problems.append(
                    f"container {c.get('name')}: volume {vm.get('name')} is where {owner} "
                    "mounts; without mountPropagation: HostToContainer it sees an empty "
                    "directory"
                )
    return problems
