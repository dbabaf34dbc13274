"""``pwru k8s`` arguments: its own flags, and the pwru flags it passes to every pod, checked here by pwru's parser.

``pwru k8s (--node NAME | --all-nodes) [--namespace NS] [--image IMAGE] [--kubeconfig FILE] [--context NAME]
[--pod-ready-timeout SECONDS] [pwru flags] [pcap filter]``, or ``pwru k8s --cleanup [--namespace NS] ...``.
The k8s flags' names are none of pwru's (a unit test checks it). Every other argument goes to pwru in the pods,
after :func:`pwru.flags.build_config` accepted it, so a wrong pwru flag is refused here, before anything is made.
pwru's ``--output-json`` chooses the merged output's format, ``--ready-file`` is made here once every pod is ready;
the flags that name a file or a listing on the node (``--output-file``, ``--output-pcap``, ``--list-funcs``,
``--list-backends``) are refused: their result would stay inside the pod.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pwru import flags
from pwru.errors import UserError

#: pwru k8s's own flags: name -> (takes a value, help text, metavar).
K8S_FLAGS: dict[str, tuple[bool, str, str]] = {
    "node": (True, "run pwru as one Pod on this node", "NAME"),
    "all-nodes": (False, "run pwru on every node (a DaemonSet)", ""),
    "namespace": (True, 'the namespace of the pods (default "default")', "NS"),
    "image": (True, "pwru's container image, as the nodes pull it (default localhost/pwru:VERSION)", "IMAGE"),
    "kubeconfig": (True, "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)", "FILE"),
    "context": (True, "kubeconfig context", "NAME"),
    "pod-ready-timeout": (True, "seconds every pod is given to be ready (default 300)", "SECONDS"),
    "cleanup": (False, "delete every pod and DaemonSet pwru k8s made in the namespace, then exit", ""),
}
#: pwru flags whose result would stay on the node.
REFUSED = ("output-file", "output-pcap", "list-funcs", "list-backends")
#: A node name (a DNS-1123 subdomain) and a namespace (a DNS-1123 label).
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class K8sOptions:
    """A checked ``pwru k8s`` invocation."""

    node: str | None = None
    all_nodes: bool = False
    namespace: str = "default"
    image: str = ""
    kubeconfig: str | None = None
    context: str | None = None
    ready_timeout: int = 300
    cleanup: bool = False
    help: bool = False
    pwru_args: tuple[str, ...] = ()  # passed to pwru in every pod (without --ready-file)
    json: bool = False  # --output-json: the merged output's format
    meta: bool = True  # --output-meta, --output-tuple: the text output's columns
    tuple: bool = True
    ready_file: str | None = None  # made here once every pod is ready


def default_image() -> str:
    from pwru import __version__

    return f"localhost/pwru:{__version__}"


def usage() -> str:
    lines = [
        "Usage: pwru k8s (--node NAME | --all-nodes) [k8s options] [pwru options] [pcap-filter]",
        "       pwru k8s --cleanup [--namespace NS] [--kubeconfig FILE] [--context NAME]",
        "    Runs pwru on Kubernetes nodes and merges their events (needs pip install 'pwru[k8s]').",
        "    pwru options: as pwru --help lists them (--output-json for JSON lines with a \"node\" key).",
        "    k8s options:",
    ]
    for name, (value, text, metavar) in K8S_FLAGS.items():
        left = f"--{name}" + (f" {metavar}" if value else "")
        lines.append(f"      {left:<28}{text}")
    return "\n".join(lines) + "\n"


def _split(argv: Sequence[str]) -> tuple[dict[str, str | bool], list[str]]:
    """The k8s flags' values, and every other argument in order (the words after ``--`` included)."""
    own: dict[str, str | bool] = {}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            rest += args[i - 1 :]
            break
        name, eq, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in K8S_FLAGS:
            rest.append(arg)
            continue
        takes_value = K8S_FLAGS[name][0]
        if not takes_value:
            if eq:
                raise UserError(f"--{name} takes no value")
            own[name] = True
            continue
        if eq:
            text = inline
        elif i < len(args) and not args[i].startswith("--"):
            text = args[i]
            i += 1
        else:
            raise UserError(f"--{name}: needs a value")
        if not text:
            raise UserError(f"--{name}: empty value")
        own[name] = text
    return own, rest


def parse(argv: Sequence[str]) -> K8sOptions:
    """``pwru k8s`` arguments (after ``k8s``) -> checked options; raises :class:`UserError` (exit 2)."""
    own, rest = _split(argv)
    values = flags.parse_argv(rest)
    if values["help"]:
        return K8sOptions(help=True)
    config = flags.build_config(values)  # every pwru flag checked by pwru's own parser (pure: no host access)
    node = own.get("node")
    assert node is None or isinstance(node, str)
    all_nodes, cleanup = bool(own.get("all-nodes")), bool(own.get("cleanup"))
    namespace = str(own.get("namespace", "default"))
    if not _LABEL.fullmatch(namespace) or len(namespace) > 63:
        raise UserError(f"--namespace: {namespace!r} is not a namespace name (a DNS-1123 label)")
    if node is not None and (not _SUBDOMAIN.fullmatch(node) or len(node) > 253):
        raise UserError(f"--node: {node!r} is not a node name (a DNS-1123 subdomain)")
    timeout_text = str(own.get("pod-ready-timeout", "300"))
    if not timeout_text.isdigit() or not 1 <= int(timeout_text) <= 86400:
        raise UserError(f"--pod-ready-timeout: {timeout_text!r} is not a number of seconds (1 to 86400)")
    if cleanup:
        if node is not None or all_nodes or rest:
            what = "--node" if node is not None else "--all-nodes" if all_nodes else rest[0]
            raise UserError(f"--cleanup: takes no {what} (it deletes every run's pods in the namespace)")
    elif node is None and not all_nodes:
        raise UserError("--node: pwru k8s needs --node NAME or --all-nodes")
    elif node is not None and all_nodes:
        raise UserError("--node: give --node NAME or --all-nodes, not both")
    for name in REFUSED:
        if name in values and values[name] != flags.TABLE.by_name(name).initial():  # type: ignore[union-attr]
            raise UserError(f"--{name}: not with pwru k8s (it would act inside the pod; redirect the output)")
    pod_args = _without(rest, "ready-file")
    return K8sOptions(
        node=node,
        all_nodes=all_nodes,
        namespace=namespace,
        image=str(own.get("image", default_image())),
        kubeconfig=str(own["kubeconfig"]) if "kubeconfig" in own else None,
        context=str(own["context"]) if "context" in own else None,
        ready_timeout=int(timeout_text),
        cleanup=cleanup,
        pwru_args=tuple(pod_args),
        json=config.output.json,
        meta=config.output.meta,
        tuple=config.output.tuple,
        ready_file=config.ready_file,
    )


def _without(args: list[str], name: str) -> list[str]:
    """``args`` without ``--name VALUE`` / ``--name=VALUE`` (before ``--``)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:]
        if arg == f"--{name}":
            i += 2
            continue
        if not arg.startswith(f"--{name}="):
            out.append(arg)
        i += 1
    return out
