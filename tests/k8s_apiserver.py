"""A small Kubernetes API server on loopback for the tests of ``pwru k8s``: no cluster can be had on these machines.

It answers the calls :class:`pwru.k8s.cluster.KubeCluster` makes through the official client (create, list by
label selector, read a DaemonSet's status, follow a pod's log with chunked transfer, delete), with the JSON of the
Kubernetes API, so the client's real request building, model deserialization and log streaming are what the tests
run. What the pods do is scripted per node (:class:`Script`): the states their status goes through, one per list
call, and the log lines they print. A DaemonSet makes one pod per node of :attr:`FakeApiServer.nodes`. Every request
is recorded (:attr:`FakeApiServer.requests`), the deletions too, so the tests see what the runner left behind.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RUNNING = {"phase": "Running", "containerStatuses": [{"name": "pwru", "ready": False, "restartCount": 0,
           "image": "i", "imageID": "", "state": {"running": {}}}]}  # fmt: skip
READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
         "containerStatuses": [{"name": "pwru", "ready": True, "restartCount": 0, "image": "i", "imageID": "",
                                "started": True, "state": {"running": {}}}]}  # fmt: skip
PENDING = {"phase": "Pending", "containerStatuses": [{"name": "pwru", "ready": False, "restartCount": 0, "image": "i",
           "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}]}  # fmt: skip
PULL_FAILED = {"phase": "Pending", "containerStatuses": [{"name": "pwru", "ready": False, "restartCount": 0,
               "image": "i", "imageID": "", "state": {"waiting": {"reason": "ErrImagePull",
               "message": "pull access denied for nosuch/pwru"}}}]}  # fmt: skip


def exited(code: int) -> dict[str, Any]:
    phase = "Succeeded" if code == 0 else "Failed"
    return {"phase": phase, "containerStatuses": [{"name": "pwru", "ready": False, "restartCount": 0, "image": "i",
            "imageID": "", "state": {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}}}]}


@dataclass
class Script:
    """A node's pod: its statuses, one per list call (the last one stays), and its log lines (then the log ends,
    or stays open until the pod is deleted when ``hold``)."""

    statuses: list[dict[str, Any]] = field(default_factory=lambda: [PENDING, RUNNING, READY])
    lines: list[str] = field(default_factory=list)
    hold: bool = False
    after_lines: dict[str, Any] | None = None  # the status once every line was sent


class FakeApiServer:
    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts
        self.nodes = list(scripts)
        self.pods: dict[str, dict[str, Any]] = {}
        self.daemonsets: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
        }))  # fmt: skip
        return path

    def add_pod(self, manifest: dict[str, Any], node: str, owner: str = "") -> None:
        pod = copy.deepcopy(manifest)
        pod.setdefault("apiVersion", "v1")
        pod["kind"] = "Pod"
        pod["spec"]["nodeName"] = node
        if owner:
            pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner,
                                                    "uid": "u", "controller": True}]  # fmt: skip
        pod["_step"] = 0
        pod["_sent"] = False
        self.pods[pod["metadata"]["name"]] = pod

    def status(self, pod: dict[str, Any]) -> dict[str, Any]:
        script = self.scripts[pod["spec"]["nodeName"]]
        if pod["_sent"] and script.after_lines is not None:
            return script.after_lines
        return script.statuses[min(pod["_step"], len(script.statuses) - 1)]


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels", {})
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _public(obj: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if not k.startswith("_")}
    if status is not None:
        out["status"] = status
    return out


def _handler(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            parts = url.path.strip("/").split("/")
            with api.lock:
                api.requests.append((method, url.path))
            body: dict[str, Any] = {}
            if method == "POST":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            # /api/v1/namespaces/NS/pods[/NAME[/log]] and /apis/apps/v1/namespaces/NS/daemonsets[/NAME[/status]]
            kind = parts[4] if parts[0] == "api" else parts[5]
            rest = parts[5:] if parts[0] == "api" else parts[6:]
            if kind == "pods" and rest[1:] == ["log"]:
                return self._log(rest[0])
            with api.lock:
                store = api.pods if kind == "pods" else api.daemonsets
                if method == "POST":
                    name = body["metadata"]["name"]
                    if name in store:
                        return self._send(409, {"kind": "Status", "apiVersion": "v1", "code": 409,
                                                "reason": "AlreadyExists"})  # fmt: skip
                    if kind == "pods":
                        api.add_pod(body, body["spec"]["nodeName"])
                    else:
                        store[name] = body
                        for node in api.nodes:
                            template = body["spec"]["template"]
                            meta = {"name": f"{name}-{node}", "labels": template["metadata"]["labels"]}
                            api.add_pod({"metadata": meta, "spec": copy.deepcopy(template["spec"])}, node, name)
                    return self._send(201, _public(store[name], None))
                if method == "GET" and not rest:
                    items = [o for o in store.values() if _matches(o, query.get("labelSelector", ""))]
                    out = []
                    for o in items:
                        out.append(_public(o, api.status(o) if kind == "pods" else None))
                        if kind == "pods":
                            o["_step"] += 1
                    return self._send(200, {"kind": "PodList" if kind == "pods" else "DaemonSetList",
                                            "apiVersion": "v1", "metadata": {}, "items": out})  # fmt: skip
                if method == "GET" and rest[1:] == ["status"]:
                    ds = store[rest[0]]
                    status = {"currentNumberScheduled": len(api.nodes), "desiredNumberScheduled": len(api.nodes),
                              "numberMisscheduled": 0, "numberReady": 0, "observedGeneration": 1}  # fmt: skip
                    return self._send(200, _public(ds, status))
                if method == "DELETE":
                    name = rest[0]
                    gone = store.pop(name, None)
                    api.deleted.append(f"{kind}/{name}")
                    if kind == "daemonsets":
                        for pod in [p for p in api.pods if api.pods[p]["metadata"].get("ownerReferences")]:
                            if api.pods[pod]["metadata"]["ownerReferences"][0]["name"] == name:
                                api.pods.pop(pod)
                    if gone is None:
                        return self._send(404, {"kind": "Status", "apiVersion": "v1", "code": 404})
                    if kind == "pods":  # the API answers a pod's deletion with the pod, a DaemonSet's with a Status
                        return self._send(200, _public(gone, api.status(gone)))
                    return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            self._send(404, {"kind": "Status", "apiVersion": "v1", "code": 404})

        def _log(self, name: str) -> None:
            with api.lock:
                pod = api.pods.get(name)
                script = api.scripts[pod["spec"]["nodeName"]] if pod else None
            if pod is None or script is None:
                return self._send(404, {"kind": "Status", "apiVersion": "v1", "code": 404})
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for line in script.lines:
                    data = (line + "\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
                with api.lock:
                    pod["_sent"] = True
                while script.hold:  # until the pod is deleted
                    with api.lock:
                        if name not in api.pods:
                            break
                    time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler
