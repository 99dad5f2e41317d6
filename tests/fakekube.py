"""A small fake Kubernetes API server the REAL ``kubernetes`` client talks to over HTTP.

Enough of the API for pfsfs's kubernetes runner, served by stdlib ``http.server`` on loopback:
``/version``; Jobs (create 201 / 409, get 404, list with ``labelSelector`` and
``fieldSelector=metadata.name=``, ``?watch=true`` as chunked newline-delimited JSON that honours
``timeoutSeconds`` and ``resourceVersion``, with BOOKMARK events and an ERROR 410 event for a
resourceVersion older than the kept history, delete with propagation to its pods, ``/status``);
Pods (list with labels, get, graceful delete — ``deletionTimestamp`` until the kubelet is done,
``gracePeriodSeconds`` honoured —, ``/log?container=``); Secrets (create, get).
Server-set ``uid``, ``resourceVersion``, ``creationTimestamp``. ``inject(method, pattern,
status, times)`` makes the next matching requests answer ``status`` (404/409/410/429/500...)
with a Status object; ``requests`` logs every request for assertions.

What it does not do: validation, defaulting, admission, RBAC, a scheduler. The Job controller
and kubelet are ``tests/kubelet.py``, which use the ``FakeKube`` object directly.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

KINDS = {"jobs": ("batch/v1", "Job"), "pods": ("v1", "Pod"), "secrets": ("v1", "Secret")}
HISTORY = 500  # watch events kept; older resourceVersions get 410 Gone

ROUTE = re.compile(
    r"^/(?:api/v1|apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<kind>jobs|pods|secrets)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
)


@dataclass
class Injected:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: str | None = None


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


REASONS = {
    404: "NotFound",
    409: "AlreadyExists",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def match_labels(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


def match_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if k == "metadata.name" and obj["metadata"]["name"] != v:
            return False
        if k == "metadata.namespace" and obj["metadata"].get("namespace") != v:
            return False
    return True


class FakeKube:
    """The API state; thread-safe. ``version`` is what ``/version`` answers."""

    def __init__(self, version: tuple[int, int] = (1, 33)) -> None:
        self.version = version
        self.lock = threading.Condition()
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.logs: dict[tuple[str, str, str], bytes] = {}
        self.rv = 100
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, kind, type, obj
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.injected: list[Injected] = []

    # -- state (used by the handler and by the kubelet) ------------------------------------
    def _bump(self, kind: str, etype: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, etype, copy.deepcopy(obj)))
        del self.events[:-HISTORY]
        self.lock.notify_all()

    def create(self, kind: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (ns, meta["name"])
            if key in self.objects[kind]:
                raise ApiError(409, f'{kind} "{meta["name"]}" already exists')
            api, k = KINDS[kind]
            obj.setdefault("apiVersion", api)
            obj.setdefault("kind", k)
            meta.update(
                namespace=ns,
                uid=str(uuid.uuid4()),
                creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            meta["creationTimestamp"] += f".{time.monotonic_ns()}"  # sortable within a second
            obj.setdefault("status", {})
            self.objects[kind][key] = obj
            self._bump(kind, "ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects[kind].get((ns, name))
            if obj is None:
                raise ApiError(404, f'{kind} "{name}" not found')
            return copy.deepcopy(obj)

    def list(self, kind: str, ns: str, labels: str = "", fields: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (n, _), o in sorted(self.objects[kind].items())
                if n == ns and match_labels(o, labels) and match_fields(o, fields)
            ]

    def list_all(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for _, o in sorted(self.objects[kind].items())]

    def update(self, kind: str, ns: str, name: str, fn: Any) -> dict[str, Any] | None:
        """Apply ``fn(obj)`` in place under the lock (the controller's status writes)."""
        with self.lock:
            obj = self.objects[kind].get((ns, name))
            if obj is None:
                return None
            fn(obj)
            self._bump(kind, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(
        self, kind: str, ns: str, name: str, grace: int | None = None
    ) -> dict[str, Any]:
        """Delete an object. A pod is deleted gracefully, as the API server does: it gets
        ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` (``grace``, else its
        ``terminationGracePeriodSeconds``) and stays until its kubelet has stopped its
        containers and calls ``remove``; ``grace=0`` removes it at once (``--force``). A Job's
        pods are deleted with it (propagation), gracefully."""
        with self.lock:
            obj = self.objects[kind].get((ns, name))
            if obj is None:
                raise ApiError(404, f'{kind} "{name}" not found')
            if kind == "pods" and grace != 0:
                meta = obj["metadata"]
                if "deletionTimestamp" not in meta:
                    default = obj.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                    meta["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    meta["deletionGracePeriodSeconds"] = default if grace is None else grace
                    self._bump(kind, "MODIFIED", obj)
                return copy.deepcopy(obj)
            self.objects[kind].pop((ns, name))
            self._bump(kind, "DELETED", obj)
            if kind == "jobs":
                for (n, pname), pod in list(self.objects["pods"].items()):
                    owner = pod["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
                    if n == ns and owner == name:
                        self.delete("pods", n, pname)
            return obj

    def remove(self, kind: str, ns: str, name: str) -> None:
        """The kubelet's last word on a deleted pod: its containers are gone, so is it."""
        with self.lock:
            obj = self.objects[kind].pop((ns, name), None)
            if obj is not None:
                self._bump(kind, "DELETED", obj)

    def events_after(self, kind: str, rv: int) -> list[tuple[int, str, dict[str, Any]]]:
        return [(r, t, o) for r, k, t, o in self.events if r > rv and k == kind]

    def oldest_rv(self) -> int:
        return self.events[0][0] if self.events else self.rv

    def inject(
        self, method: str, pattern: str, status: int, times: int = 1, retry_after: str | None = None
    ) -> None:
        with self.lock:
            self.injected.append(Injected(method, re.compile(pattern), status, times, retry_after))

    def _take_injected(self, method: str, path: str) -> Injected | None:
        with self.lock:
            for inj in self.injected:
                if inj.times > 0 and inj.method == method and inj.pattern.search(path):
                    inj.times -= 1
                    return inj
        return None

    def count(self, method: str, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for m, p, _ in self.requests if m == method and rx.search(p))


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def make_handler(kube: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(
            self,
            code: int,
            body: Any,
            ctype: str = "application/json",
            headers: dict[str, str] | None = None,
        ) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(
                code, status_body(code, REASONS.get(code, "Error"), message), headers=headers
            )

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            kube.requests.append((method, url.path, query))
            inj = kube._take_injected(method, url.path + ("?" + url.query if url.query else ""))
            if inj is not None:
                if method in ("POST", "PUT", "PATCH"):
                    self._body()
                headers = {"Retry-After": inj.retry_after} if inj.retry_after else None
                self._error(inj.status, f"injected {inj.status}", headers)
                return
            try:
                self._route(method, url.path, query)
            except ApiError as exc:
                self._error(exc.code, exc.message)

        def _route(self, method: str, path: str, q: dict[str, list[str]]) -> None:
            if path.rstrip("/") == "/version":
                major, minor = kube.version
                self._send(
                    200,
                    {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.0"},
                )
                return
            m = ROUTE.match(path)
            if m is None:
                raise ApiError(404, f"the server could not find the requested resource {path}")
            ns, kind, name, sub = m["ns"], m["kind"], m["name"], m["sub"]
            one = lambda key: (q.get(key) or [""])[0]  # noqa: E731
            if name is None:
                if method == "POST":
                    self._send(201, kube.create(kind, ns, self._body()))
                elif method == "GET" and one("watch") in ("true", "1"):
                    self._watch(kind, ns, q)
                elif method == "GET":
                    items = kube.list(kind, ns, one("labelSelector"), one("fieldSelector"))
                    api, k = KINDS[kind]
                    self._send(
                        200,
                        {
                            "apiVersion": api,
                            "kind": f"{k}List",
                            "metadata": {"resourceVersion": str(kube.rv)},
                            "items": items,
                        },
                    )
                else:
                    raise ApiError(405, "method not allowed")
                return
            if sub == "log":
                kube.get(kind, ns, name)
                data = kube.logs.get((ns, name, one("container")), b"")
                self._send(200, data, "text/plain")
                return
            if method == "GET":
                self._send(200, kube.get(kind, ns, name))
            elif method == "DELETE":
                options = self._body()  # V1DeleteOptions
                grace = options.get("gracePeriodSeconds", one("gracePeriodSeconds") or None)
                obj = kube.delete(kind, ns, name, None if grace is None else int(grace))
                self._send(200, obj)
            elif method in ("PUT", "PATCH") and sub == "status":
                body = self._body()
                current = kube.get(kind, ns, name)
                want = body.get("metadata", {}).get("resourceVersion")
                if method == "PUT" and want and want != current["metadata"]["resourceVersion"]:
                    raise ApiError(409, "the object has been modified")
                got = kube.update(
                    kind, ns, name, lambda o: o.__setitem__("status", body.get("status", {}))
                )
                self._send(200, got)
            else:
                raise ApiError(405, "method not allowed")

        def _watch(self, kind: str, ns: str, q: dict[str, list[str]]) -> None:
            one = lambda key: (q.get(key) or [""])[0]  # noqa: E731
            timeout = float(one("timeoutSeconds") or 30)
            labels, fields = one("labelSelector"), one("fieldSelector")
            bookmarks = one("allowWatchBookmarks") == "true"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            deadline = time.monotonic() + timeout
            with kube.lock:
                start = one("resourceVersion")
                if start and start != "0" and int(start) < kube.oldest_rv() - 1:
                    chunk(
                        {
                            "type": "ERROR",
                            "object": status_body(
                                410, "Expired", f"too old resource version: {start}"
                            ),
                        }
                    )
                    self.wfile.write(b"0\r\n\r\n")
                    return
                rv = int(start) if start and start != "0" else kube.rv
                initial = (
                    [] if start else [("ADDED", o) for o in kube.list(kind, ns, labels, fields)]
                )
            try:
                for etype, obj in initial:
                    chunk({"type": etype, "object": obj})
                last_bookmark = time.monotonic()
                while True:
                    with kube.lock:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        events = kube.events_after(kind, rv)
                        if not events:
                            kube.lock.wait(min(left, 0.5))
                            events = kube.events_after(kind, rv)
                    for erv, etype, obj in events:
                        rv = erv
                        if (
                            obj["metadata"].get("namespace") == ns
                            and match_labels(obj, labels)
                            and match_fields(obj, fields)
                        ):
                            chunk({"type": etype, "object": obj})
                    if bookmarks and time.monotonic() - last_bookmark > 1:
                        last_bookmark = time.monotonic()
                        api, k = KINDS[kind]
                        chunk(
                            {
                                "type": "BOOKMARK",
                                "object": {
                                    "apiVersion": api,
                                    "kind": k,
                                    "metadata": {"resourceVersion": str(rv)},
                                },
                            }
                        )
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def do_PATCH(self) -> None:  # noqa: N802
            self._handle("PATCH")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

    return Handler


@contextmanager
def serve(kube: FakeKube, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``kube`` on loopback; yields (URL, kubeconfig path)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(kube))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "fake", "namespace": "pfsfs"},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    try:
        yield url, config
    finally:
        server.shutdown()
        server.server_close()
