"""The Pod (``--node``) and DaemonSet (``--all-nodes``) that run pwru, as plain dicts (JSON is YAML: ``kubectl apply``
and ``podman kube play`` read them as they are).

What every pod gets: privileged, the host's network and PID namespaces, the host paths pwru reads
(:data:`HOST_PATHS`), pwru with the run's flags plus ``--output-json`` (the runner merges JSON lines) and
``--ready-file`` (:data:`READY_FILE`), a startup probe that succeeds once that file exists, so the pod is Ready
only when every probe is attached, tolerations of every taint (a debugger must run where the packets are, control
plane nodes too), and the labels of :func:`labels`, by which the runner finds and deletes what it made.
``python -m pwru.k8s.manifest DIR`` writes the plain manifests of ``deploy/k8s/`` (a unit test checks they are
what this module makes).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

#: A manifest: what the API server, ``kubectl`` and ``podman kube play`` take.
Manifest = dict[str, Any]

CONTAINER = "pwru"
#: Where pwru makes its ready file inside the container; the startup probe tests it.
READY_FILE = "/tmp/pwru.ready"
LABEL_NAME, LABEL_MANAGED, LABEL_RUN = "app.kubernetes.io/name", "app.kubernetes.io/managed-by", "pwru/run"
MANAGED_BY = "pwru-k8s"
#: Label selector of everything ``pwru k8s`` made (``--cleanup``).
MANAGED_SELECTOR = f"{LABEL_MANAGED}={MANAGED_BY}"
#: (volume name, host path, mount path, read-only, hostPath type): BTF and kernel interfaces under /sys/kernel
#: (btf, tracing, debug: one bind of the tree with its submounts), the BPF file system, the named network
#: namespaces (``--filter-netns`` by name, ``--output-netns-names``; propagated, so ones made later show too).
HOST_PATHS = (
    ("sys-kernel", "/sys/kernel", "/sys/kernel", False, "Directory"),
    ("bpffs", "/sys/fs/bpf", "/sys/fs/bpf", False, "Directory"),
    ("netns", "/run/netns", "/run/netns", True, "DirectoryOrCreate"),
)
#: Seconds between the startup probe's tries.
PROBE_PERIOD = 1


def labels(run_id: str) -> dict[str, str]:
    return {LABEL_NAME: "pwru", LABEL_MANAGED: MANAGED_BY, LABEL_RUN: run_id}


def run_selector(run_id: str) -> str:
    """Label selector of one run's objects."""
    return f"{MANAGED_SELECTOR},{LABEL_RUN}={run_id}"


def pod_spec(image: str, pwru_args: Sequence[str], ready_timeout: int, restart: str) -> dict[str, Any]:
    """The pod spec shared by the Pod and the DaemonSet's template."""
    # pwru's flags go first: a "--" among the run's arguments makes every word after it part of the filter.
    args = ["--output-json", "--ready-file", READY_FILE, *pwru_args]
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for name, host, path, read_only, kind in HOST_PATHS:
        mount: dict[str, Any] = {"name": name, "mountPath": path}
        if read_only:
            mount.update(readOnly=True, mountPropagation="HostToContainer")
        mounts.append(mount)
        volumes.append({"name": name, "hostPath": {"path": host, "type": kind}})
    return {
        "hostNetwork": True,
        "hostPID": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 30,
        "tolerations": [{"operator": "Exists"}],
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "securityContext": {"privileged": True},
                # pwru's last lines become the terminated state's message when it fails (its error line)
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "startupProbe": {
                    "exec": {"command": ["test", "-e", READY_FILE]},
                    "periodSeconds": PROBE_PERIOD,
                    "failureThreshold": max(1, ready_timeout // PROBE_PERIOD),
                },
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }


def pod(name: str, node: str, run_id: str, image: str, pwru_args: Sequence[str], ready_timeout: int) -> Manifest:
    """The Pod of ``pwru k8s --node NODE``: bound to the node by ``nodeName`` (no scheduler, no taint in the way)."""
    spec = pod_spec(image, pwru_args, ready_timeout, "Never")
    spec = {"nodeName": node, **spec}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels(run_id)},
        "spec": spec,
    }


def daemonset(name: str, run_id: str, image: str, pwru_args: Sequence[str], ready_timeout: int) -> Manifest:
    """The DaemonSet of ``pwru k8s --all-nodes``: one pod on every node (a DaemonSet's pods restart always)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "labels": labels(run_id)},
        "spec": {
            "selector": {"matchLabels": {LABEL_NAME: "pwru", LABEL_RUN: run_id}},
            "template": {
                "metadata": {"labels": labels(run_id)},
                "spec": pod_spec(image, pwru_args, ready_timeout, "Always"),
            },
        },
    }


def pod_name(node: str, run_id: str) -> str:
    """``pwru-NODE-RUN``, within a pod name's 63 characters (a label's limit: the name is a hostname too)."""
    suffix = f"-{run_id}"
    head = f"pwru-{node.replace('.', '-')}"[: 63 - len(suffix)].rstrip("-")
    return head + suffix


#: The inputs of the plain manifests in deploy/k8s/: a node, a run id, the image, pwru's arguments.
EXAMPLE_NODE, EXAMPLE_RUN, EXAMPLE_IMAGE = "my-node", "manual", "localhost/pwru:0.1.0"
EXAMPLE_ARGS = ("--output-meta", "--output-tuple", "dst host 10.0.0.1 and udp")


def examples() -> dict[str, Manifest]:
    """File name -> manifest, as deploy/k8s/ ships them."""
    name = pod_name(EXAMPLE_NODE, EXAMPLE_RUN)
    return {
        "pwru-pod.yaml": pod(name, EXAMPLE_NODE, EXAMPLE_RUN, EXAMPLE_IMAGE, EXAMPLE_ARGS, 300),
        "pwru-daemonset.yaml": daemonset(f"pwru-{EXAMPLE_RUN}", EXAMPLE_RUN, EXAMPLE_IMAGE, EXAMPLE_ARGS, 300),
    }


def render(manifest: Manifest) -> str:
    """YAML for people (PyYAML comes with the ``k8s`` extra)."""
    import yaml

    return str(yaml.safe_dump(manifest, sort_keys=False, width=120))


def main(argv: Sequence[str]) -> int:
    from pathlib import Path

    if len(argv) != 1:
        print("usage: python -m pwru.k8s.manifest DIR", file=sys.stderr)
        return 2
    for name, manifest in examples().items():
        (Path(argv[0]) / name).write_text(render(manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
