"""--filter-trace-tc-chain: the skb before and after each device's tc chain, with tcx links (no fentry needed).

Kernels that refuse fentry (lockdown) cannot trace a tc program itself (--filter-trace-tc). They still take tcx
links (kernel >= 6.6), and a tcx link can be placed before every other program of a device's hook
(``BPF_F_BEFORE``) or after all of them (``BPF_F_AFTER``). pwru's ``tc_chain`` program at both places, on the
ingress and egress of each device, shows the packet as the chain gets it (``tcx:egress@first``) and as it
leaves it (``tcx:egress@last``): a tc program's rewrite (NAT, a new destination) shows as the tuple of the
``@last`` event differing from the ``@first`` one, in the same skb. The program only observes (TCX_NEXT).

Where: every device of each namespace the run watches (--filter-netns's, else every namespace present, as the
netfilter points), or only --filter-ifname's device. A tcx link names its device by index in the netns of the
thread that makes it, so each namespace's links are made from inside it (:data:`pwru.probes.EXECUTORS`).
Legacy tc filters (``tc filter add ... bpf``, clsact) run after the whole tcx chain: their rewrites show only
at the next device's ``@first`` point.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pwru import netfilter, netns
from pwru.config import Config
from pwru.ebpf import features
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.output import fields
from pwru.probes import Attach, Probe
from pwru.records import Batch

log = logging.getLogger("pwru")

PROGRAM = "tc_chain"


@dataclass(frozen=True)
class TcPoint:
    """One tcx place: a device (by index, in a netns), its ingress or egress, first or last."""

    ifindex: int
    ifname: str
    ingress: bool
    first: bool
    netns_inode: int
    netns_path: str

    @property
    def name(self) -> str:
        """``ingress@first`` .. ``egress@last``: what the events show (the device is in their IFACE column)."""
        return f"{'ingress' if self.ingress else 'egress'}@{'first' if self.first else 'last'}"


def check(config: Config, kernel: KernelContext) -> None:
    """Before anything is loaded: the view needs tcx links (kernel >= 6.6)."""
    if not config.filter.trace_tc_chain:
        return
    feature = kernel.feature("tcx", features.tcx)
    if not feature.available:
        raise UserError(f"--filter-trace-tc-chain needs tcx links: {feature.reason}", exit_code=1)


def _devices(ns: netns.NetnsRef) -> list[tuple[int, str]]:
    return netns.run_in_netns(ns.path, socket.if_nameindex, inode=ns.inode)


def points(config: Config) -> list[TcPoint]:
    """Four points per device: ingress and egress, first and last."""
    found = netfilter.namespaces(config)
    out: list[TcPoint] = []
    for ns in found:
        try:
            devices = _devices(ns)
        except (netns.NetnsError, OSError) as e:
            log.debug("netns %s: devices not listed: %s", ns.path, e)
            continue
        for ifindex, ifname in devices:
            if config.filter.ifindex and ifindex != config.filter.ifindex:
                continue
            for ingress in (True, False):
                for first in (True, False):
                    out.append(TcPoint(ifindex, ifname, ingress, first, ns.inode, ns.path))
    return out


def probes(config: Config) -> list[Probe]:
    """The view's probes (none unless --filter-trace-tc-chain)."""
    if not config.filter.trace_tc_chain:
        return []
    found = points(config)
    if not found:
        raise UserError("--filter-trace-tc-chain: no device to attach to in the namespaces watched", exit_code=1)
    return [Probe("tc_hook", p.name, PROGRAM, Attach.TCX, tcx=p) for p in found]


#: skbs remembered between their ``@first`` event and the next one (the oldest forgotten beyond).
MAX_PENDING = 4096


class RewriteStage:
    """Tuple before -> after: for an skb seen at a ``tcx:*@first`` point, its next event (``@last``, or where
    it goes when a program ended the chain with a verdict, the next hook) carries the note ``tc_rewrite``
    (``batch.dumps``, ``fields.REWRITE_KEY``) when its tuple differs: what the tc programs in between rewrote."""

    def __init__(self, first_ids: set[int], index_kind: int) -> None:
        self._firsts = first_ids
        self._index_kind = index_kind
        self._pending: dict[int, tuple[bytes, bytes]] = {}  # skb -> (tuple bytes, the whole record)
        self._schema: object = None

    def process(self, batch: Batch) -> Batch:
        layout = batch.schema.layout("event")
        if batch.schema is not self._schema:
            self._schema = batch.schema
            self._head = layout.unpacker("ts", "skb", "probe", "probe_kind")
            self._span = layout.span(*fields.TUPLE_FIELDS)
        t0, t1 = self._span
        pending, head = self._pending, self._head
        for buf in batch.of_type("event"):
            ts, skb, probe, kind = head(buf)
            seen = pending.pop(skb, None)
            if seen is not None and seen[0] != bytes(buf[t0:t1]):
                before = fields.tuple_text(fields.tuple_of(layout.decode(seen[1])), False)
                after = fields.tuple_text(fields.tuple_of(layout.decode(buf)), False)
                batch.dumps.setdefault((ts, skb, probe), {})[fields.REWRITE_KEY] = f"{before} -> {after}"
            if kind == self._index_kind and probe in self._firsts:
                if len(pending) >= MAX_PENDING:
                    pending.pop(next(iter(pending)))
                pending[skb] = (bytes(buf[t0:t1]), bytes(buf))
        return batch

    def finish(self) -> Batch | None:
        return None


def stage(plan: Sequence[Probe], index_kind: int) -> RewriteStage | None:
    """The before -> after stage when the plan has the view's points (``index_kind``: probe_kind INDEX)."""
    firsts = {i for i, p in enumerate(plan) if p.tcx is not None and p.tcx.first}
    return RewriteStage(firsts, index_kind) if firsts else None
