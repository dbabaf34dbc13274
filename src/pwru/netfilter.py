"""Netfilter-hook observation points: where a packet is seen at the edges of each netfilter hook.

On kernels without kprobes and fentry, tracepoints never see a locally sent packet before NAT or before a tc
egress program: the first skb tracepoint on output is ``net_dev_queue``. BPF netfilter links (kernel >= 6.4)
hook a program into netfilter itself, so pwru attaches ``nf_skb`` at the first and the last priority of each
IPv4 and IPv6 hook, in every network namespace: a packet shows at ``nf:OUTPUT@first`` before any rule ran and
at ``nf:OUTPUT@last`` after all of them (a packet a rule dropped shows at the first and not the last).

The program only observes: it always returns NF_ACCEPT. The same name stands for IPv4 and IPv6 (the event's
protocol column tells them apart). A netfilter link hooks the network namespace of the thread that creates it,
so each namespace's links are made from a thread inside it (:data:`pwru.probes.EXECUTORS`).

**Drop attribution.** The same points tell which hook dropped a packet: at a hook's first point the program
remembers the skb's (family, hook) in the kernel (``nf_where`` in pwru.bpf.c), at its last point it forgets it;
a drop with reason ``NETFILTER_DROP`` in between (``kfree_skb``'s tracepoint, ``kfree_skb_reason``,
``sk_skb_reason_drop``) looks it up into the event's ``nf_pf``/``nf_hook``. So the points are attached whenever
the kernel has netfilter links and ``--filter-trace-netfilter`` is not ``false``: shown (``auto`` with the
tracepoint backend, ``true``), else as probes that keep that state only (``Probe.shows`` False, ``cfg_emit``
0: ``auto`` with a function backend, points ``--filter-func`` leaves out, ``--summary`` without events).
Families other than IPv4 and IPv6 (bridge, arp, netdev) have no points: their drops stay unattributed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pwru import netns
from pwru.config import Config
from pwru.ebpf import features
from pwru.ebpf.link import (
    NF_INET_FORWARD,
    NF_INET_LOCAL_IN,
    NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING,
    NF_INET_PRE_ROUTING,
    NFPROTO_IPV4,
    NFPROTO_IPV6,
)
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.probes import Attach, Probe

log = logging.getLogger("pwru")

#: The hooks by their iptables chain names, in the order a packet meets them.
HOOKS: dict[str, int] = {
    "PREROUTING": NF_INET_PRE_ROUTING,
    "INPUT": NF_INET_LOCAL_IN,
    "FORWARD": NF_INET_FORWARD,
    "OUTPUT": NF_INET_LOCAL_OUT,
    "POSTROUTING": NF_INET_POST_ROUTING,
}
HOOK_NAMES: dict[int, str] = {num: name for name, num in HOOKS.items()}
FAMILIES = (NFPROTO_IPV4, NFPROTO_IPV6)

#: NF_IP_PRI_FIRST / NF_IP_PRI_LAST (INT_MIN / INT_MAX): the kernel refuses both for BPF links (ERANGE), the
#: extremes belong to netfilter's own hooks; one step inside them is the first/last any rule can be.
NF_IP_PRI_FIRST = -(2**31)
NF_IP_PRI_LAST = 2**31 - 1
PRIORITIES: dict[str, int] = {"first": NF_IP_PRI_FIRST + 1, "last": NF_IP_PRI_LAST - 1}
POSITIONS: dict[int, str] = {prio: name for name, prio in PRIORITIES.items()}

#: pwru's program for every point, and the prefix of the points' display names.
PROGRAM = "nf_skb"
PREFIX = "nf:"
#: ``cfg_nf_point`` of each priority's loads (NF_POINT_FIRST / NF_POINT_LAST in pwru.bpf.c).
POINT_CONSTANTS: dict[int, int] = {PRIORITIES["first"]: 1, PRIORITIES["last"]: 2}
#: The drop reason whose drops are looked up (its value differs between kernels: read from BTF).
DROP_REASON = "SKB_DROP_REASON_NETFILTER_DROP"


@dataclass(frozen=True)
class Point:
    """One hook at one priority, for one family, in one network namespace (``netns_path`` enters it)."""

    pf: int
    hooknum: int
    priority: int
    netns_inode: int
    netns_path: str

    @property
    def name(self) -> str:
        """``OUTPUT@first``: the same for both families and every namespace."""
        return point_name(self.hooknum, self.priority)


def point_name(hooknum: int, priority: int) -> str:
    """``HOOK@first|last`` (the priority itself when it is neither)."""
    return f"{HOOK_NAMES.get(hooknum, str(hooknum))}@{POSITIONS.get(priority, str(priority))}"


def points(namespaces: Sequence[netns.NetnsRef]) -> list[Point]:
    """Every point in each namespace: per family, each hook (in path order) first then last."""
    return [
        Point(pf, hooknum, prio, ns.inode, ns.path)
        for ns in namespaces
        for pf in FAMILIES
        for hooknum in HOOKS.values()
        for prio in PRIORITIES.values()
    ]


def probes_for(
    pts: Sequence[Point], allowed: Callable[[str], bool] = lambda _: True, *, keep_state: bool = False
) -> list[Probe]:
    """The probes of ``pts`` that ``allowed`` (--filter-func, on the display name) lets through, shown; with
    ``keep_state`` also the others, as probes that keep the drop-attribution state only (no event)."""
    out = []
    for p in pts:
        constants = {"cfg_nf_point": POINT_CONSTANTS.get(p.priority, 0)}
        probe = Probe("nf_hook", p.name, PROGRAM, Attach.NETFILTER, netfilter=p, constants=constants)
        if allowed(probe.display_name):
            out.append(probe)
        elif keep_state:
            out.append(dataclasses.replace(probe, constants={**constants, "cfg_emit": 0}, shows=False))
    return out


def enabled(mode: str, backend: str, kernel: KernelContext) -> bool:
    """Whether this run observes netfilter hooks: ``mode`` is --filter-trace-netfilter."""
    if mode == "false":
        return False
    if mode == "auto" and backend != "tracepoint":
        return False  # the function backends see nf_hook_slow and the hooks' functions themselves
    feature = kernel.feature("netfilter_link", features.netfilter_link)
    if mode == "true" and not feature.available:
        raise UserError(f"--filter-trace-netfilter: not available on this kernel: {feature.reason}")
    return feature.available


def attributes(mode: str, kernel: KernelContext) -> bool:
    """Whether this run attaches the points for drop attribution (shown or not): on unless ``mode`` is
    ``false``, where the kernel has netfilter links (``true`` without them is refused by :func:`enabled`)."""
    if mode == "false":
        return False
    return kernel.feature("netfilter_link", features.netfilter_link).available


def namespaces(config: Config) -> list[netns.NetnsRef]:
    """The namespaces to observe: --filter-netns's (or --filter-ifname's) only, else every one present now.
    Empty when that namespace is given by inode and no file names it (nothing to enter it by)."""
    f = config.filter
    if f.netns is None:
        return netns.all_netns()
    path = f.netns_path or netns.find_netns_path(f.netns)
    return [] if path is None else [netns.NetnsRef(f.netns, path)]


def run_probes(config: Config, backend: str, kernel: KernelContext, show: bool = True) -> list[Probe]:
    """The netfilter probes of a run: shown when --filter-trace-netfilter (and ``show``, False when the run
    prints no events) says so, the others keeping drop-attribution state only; none with ``false`` or without
    netfilter links."""
    mode = config.filter.trace_netfilter
    shown = enabled(mode, backend, kernel) and show
    if not shown and not attributes(mode, kernel):
        return []
    found = namespaces(config)
    if not found:
        why = f"no /run/netns entry or process is in netns inode {config.filter.netns}, so it cannot be entered"
        if mode == "true":
            raise UserError(f"--filter-trace-netfilter: {why} (give --filter-netns as a path)")
        log.debug("netfilter hooks not observed: %s", why)
    allowed = config.filter.func_allowed if shown else (lambda _: False)
    return probes_for(points(found), allowed, keep_state=True)


def constants(plan: Sequence[Probe], reasons: Mapping[int, str]) -> dict[str, int]:
    """The kernel constants of drop attribution: on when the plan has netfilter points, and the value of
    ``NETFILTER_DROP`` on this kernel (0: it has none, nothing is looked up)."""
    value = next((v for v, name in reasons.items() if name == DROP_REASON), 0)
    return {"cfg_nf_attrib": int(any(p.kind == "nf_hook" for p in plan)), "cfg_nf_drop_reason": value}
