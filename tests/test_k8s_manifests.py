"""Every manifest in k8s/ validated offline (kubernetes-validate, strict, for 1.29 — the first
release with native sidecars on by default — and the newest schemas it has) and linted by
``pfsfs.k8s.lint`` for what the schemas miss. No API server can run here: what only a cluster
can check (admission, PSA, webhooks) is the manual checklist in k8s/README.md."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pfsfs.k8s.lint import lint, lint_all

K8S = Path(__file__).resolve().parent.parent / "k8s"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    # the ConfigMap every pod reads its store from is generated there
    names = [g["name"] for g in kustomization["configMapGenerator"]]
    assert names == ["pfsfs-store"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any problem


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_the_lint(path: Path) -> None:
    assert lint_all(docs(path)) == []


def _example() -> dict[str, Any]:
    (deployment,) = docs(K8S / "sidecar-example.yaml")
    return deployment


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def test_example_has_the_pod_shape() -> None:
    pod = _pod(_example())
    (sidecar,) = pod["initContainers"]
    (app,) = pod["containers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["securityContext"]["privileged"]
    assert {"name": "pfs", "mountPath": "/pfs", "mountPropagation": "Bidirectional"} in sidecar[
        "volumeMounts"
    ]
    assert app["securityContext"]["runAsUser"] != 0 and "privileged" not in app["securityContext"]
    assert app["volumeMounts"] == [
        {"name": "pfs", "mountPath": "/pfs", "mountPropagation": "HostToContainer"}
    ]
    # credentials only in the sidecar
    assert any("secretRef" in e for e in sidecar["envFrom"])
    assert "envFrom" not in app and "env" not in app
    assert pod["automountServiceAccountToken"] is False


def test_rbac_is_limited_to_jobs_pods_and_logs() -> None:
    role = next(d for d in docs(K8S / "scheduler-rbac.yaml") if d["kind"] == "Role")
    resources = sorted(r for rule in role["rules"] for r in rule["resources"])
    assert resources == ["jobs", "pods", "pods/log"]
    assert all("*" not in rule["verbs"] for rule in role["rules"])


def _broken(change: str) -> dict[str, Any]:
    obj = copy.deepcopy(_example())
    pod = _pod(obj)
    sidecar, app = pod["initContainers"][0], pod["containers"][0]
    if change == "unprivileged":
        sidecar["securityContext"] = {"privileged": False}
    elif change == "sideways":
        sidecar["volumeMounts"][0]["mountPropagation"] = "Sideways"
    elif change == "onfailure":
        sidecar["restartPolicy"] = "OnFailure"
    elif change == "app-bidirectional":
        app["volumeMounts"][0]["mountPropagation"] = "Bidirectional"
        app["securityContext"] = {"privileged": True}
    elif change == "no-propagation":
        del app["volumeMounts"][0]["mountPropagation"]
    return obj


@pytest.mark.parametrize(
    "change, expected",
    [
        ("unprivileged", "Bidirectional propagation needs a privileged container"),
        ("sideways", "mountPropagation 'Sideways'"),
        ("onfailure", "restartPolicy 'OnFailure'"),
        ("app-bidirectional", "Bidirectional on an app container"),
        ("no-propagation", "sees an empty directory"),
    ],
)
def test_lint_catches_what_the_schemas_pass(change: str, expected: str) -> None:
    obj = _broken(change)
    kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)  # the schema says fine
    problems = lint(obj)
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith("Deployment/pfsfs-notebook: ")


def test_lint_of_kinds_without_pods() -> None:
    assert lint({"kind": "ConfigMap", "metadata": {"name": "x"}}) == []
    cron = {
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": _pod(_broken("unprivileged"))}}}},
    }
    assert len(lint(cron)) == 1
