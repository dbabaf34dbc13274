"""What the runner needs of a cluster, and the one place that talks to the official ``kubernetes`` client.

:class:`Cluster` is the runner's whole view of a cluster: create a run's objects, list its pods' states, follow
a pod's log, delete what carries a label selector. :class:`KubeCluster` implements it with the ``kubernetes``
client (untyped: every value it returns is read here, into the typed :class:`PodState`); other implementations
(the tests' ``podman kube play`` one) plug in the same way. :func:`pod_state` and :func:`desired_pods` read the
client's model objects (``V1Pod``, ``V1DaemonSet``), so they are tested with real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pwru.errors import UserError
from pwru.k8s.manifest import CONTAINER, Manifest

#: Reasons a container waits with that mean it will not start by itself.
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


class K8sError(UserError):
    """The cluster refused or a pod failed: exit 1 (the environment, not the invocation)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass(frozen=True)
class PodState:
    """One pod as the runner sees it. ``failure`` is why it will not become ready ("" when it still may);
    ``exit_code`` is pwru's exit status once its container terminated."""

    name: str
    node: str
    phase: str
    ready: bool
    waiting: str = ""  # the container's waiting reason (ContainerCreating, ...), for the progress line
    failure: str = ""
    exit_code: int | None = None


class Cluster(Protocol):
    def create(self, namespace: str, manifest: Manifest) -> None: ...

    def pods(self, namespace: str, selector: str) -> list[PodState]: ...

    def desired(self, namespace: str, manifest: Manifest) -> int | None:
        """How many pods the run's object wants (None while the cluster has not said yet)."""
        ...

    def logs(self, namespace: str, pod: str) -> Iterator[str]:
        """The pod's log lines (pwru's stdout and stderr, as the cluster keeps them), followed until it ends."""
        ...

    def delete(self, namespace: str, selector: str) -> list[str]:
        """Delete the DaemonSets and Pods the selector matches; what was deleted (``kind/name``)."""
        ...


def pod_state(pod: Any) -> PodState:
    """A ``V1Pod`` -> :class:`PodState`."""
    status, spec = pod.status, pod.spec
    phase = str(status.phase or "Pending") if status is not None else "Pending"
    node = str(spec.node_name or "") if spec is not None else ""
    ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])) if status else False
    waiting = failure = ""
    exit_code: int | None = None
    for cs in (status.container_statuses or []) if status else []:
        if cs.name != CONTAINER or cs.state is None:
            continue
        if cs.state.waiting is not None:
            waiting = str(cs.state.waiting.reason or "Waiting")
            if waiting in FATAL_WAITING:
                failure = f"{waiting}: {cs.state.waiting.message or ''}".rstrip(": ")
        if cs.state.terminated is not None:
            t = cs.state.terminated
            exit_code = int(t.exit_code)
            if exit_code != 0:
                said = [ln for ln in str(t.message or "").splitlines() if ln.strip()][-1:]  # pwru's error line
                failure = f"pwru exited {exit_code} ({t.reason or 'Error'})" + (f": {said[0]}" if said else "")
        if cs.restart_count and not failure:
            last = cs.last_state.terminated if cs.last_state is not None else None
            code = f" {last.exit_code}" if last is not None else ""
            failure = f"pwru exited{code} and was restarted {cs.restart_count} time(s)"
    if phase == "Failed" and not failure:
        failure = f"pod failed: {status.reason or ''} {status.message or ''}".strip()
    return PodState(str(pod.metadata.name), node, phase, ready, waiting, failure, exit_code)


def desired_pods(ds: Any) -> int | None:
    """A ``V1DaemonSet`` -> the pods it wants, once its controller has looked at the nodes."""
    status = ds.status
    if status is None or status.observed_generation is None:
        return None
    return int(status.desired_number_scheduled or 0)


class KubeCluster:
    """:class:`Cluster` on the official client: kubeconfig (or in-cluster config), CoreV1 and AppsV1 APIs."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        client, config = import_client()
        try:
            if kubeconfig is None and context is None and _in_cluster():
                config.load_incluster_config()
            else:
                config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as e:  # ConfigException, a missing or broken file
            raise K8sError(f"cannot read the Kubernetes configuration: {_first_line(e)}") from None
        self._core = client.CoreV1Api()
        self._apps = client.AppsV1Api()
        self._api_exception: type[Exception] = client.exceptions.ApiException

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._api_exception as e:
            raise K8sError(f"{what}: {getattr(e, 'status', '')} {getattr(e, 'reason', '')}".rstrip()) from None
        except Exception as e:  # urllib3's connection errors, a reply the client's models refuse
            raise K8sError(f"{what}: {type(e).__name__}: {_first_line(e)}") from None

    def create(self, namespace: str, manifest: Manifest) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        fn = self._core.create_namespaced_pod if kind == "Pod" else self._apps.create_namespaced_daemon_set
        self._call(f"create {kind} {namespace}/{name}", fn, namespace, manifest)

    def pods(self, namespace: str, selector: str) -> list[PodState]:
        found = self._call("list pods", self._core.list_namespaced_pod, namespace, label_selector=selector)
        return [pod_state(p) for p in found.items]

    def desired(self, namespace: str, manifest: Manifest) -> int | None:
        if manifest["kind"] == "Pod":
            return 1
        name = manifest["metadata"]["name"]
        ds = self._call(f"read DaemonSet {name}", self._apps.read_namespaced_daemon_set_status, name, namespace)
        return desired_pods(ds)

    def logs(self, namespace: str, pod: str) -> Iterator[str]:
        import importlib

        iter_resp_lines: Any = importlib.import_module("kubernetes.watch.watch").iter_resp_lines
        resp = self._call(f"logs of {pod}", self._core.read_namespaced_pod_log, pod, namespace,
                          container=CONTAINER, follow=True, _preload_content=False)  # fmt: skip
        try:
            for line in iter_resp_lines(resp):
                yield str(line)
        finally:
            resp.release_conn()

    def delete(self, namespace: str, selector: str) -> list[str]:
        done: list[str] = []
        sets = self._call("list DaemonSets", self._apps.list_namespaced_daemon_set, namespace, label_selector=selector)
        for ds in sets.items:
            self._call(f"delete DaemonSet {ds.metadata.name}", self._apps.delete_namespaced_daemon_set,
                       ds.metadata.name, namespace, propagation_policy="Foreground")  # fmt: skip
            done.append(f"daemonset/{ds.metadata.name}")
        for p in self._call("list pods", self._core.list_namespaced_pod, namespace, label_selector=selector).items:
            if p.metadata.owner_references:  # a DaemonSet's: goes with it
                continue
            self._call(f"delete pod {p.metadata.name}", self._core.delete_namespaced_pod, p.metadata.name, namespace)
            done.append(f"pod/{p.metadata.name}")
        return done


def import_client() -> tuple[Any, Any]:
    """The client's ``client`` and ``config`` modules; a one-line error when the ``k8s`` extra is missing."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise UserError("pwru k8s needs the kubernetes client: pip install 'pwru[k8s]'") from None
    return client, config


def _in_cluster() -> bool:
    import os

    return "KUBERNETES_SERVICE_HOST" in os.environ and "KUBECONFIG" not in os.environ


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
