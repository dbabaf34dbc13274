"""What happened to a packet, from the names of the probes its skb passed: the rules of ``--output-journey``.

Every rule is here, in one place. A hop is named as the outputs name it: ``tp:kfree_skb`` (a tracepoint),
``nf:INPUT@first`` (a netfilter observation point), ``ip_rcv`` or ``veth_xmit[veth]`` (a function, kprobe and
fentry backends). Each hop gets a :class:`Role`:

* **ends** the skb (its journey is printed once every skb of it ended): the ``kfree_skb`` and ``consume_skb``
  tracepoints (they fire on the last reference) and the functions every freed skb passes last
  (:data:`END_FUNCTIONS`; they follow ``kfree_skb_reason`` and the other frees, so the journey keeps the whole
  free path). A free seen by neither (the NAPI skb cache on a kernel without kprobes) leaves the journey to the
  idle timeout.
* an **outcome**, one of:

  ``dropped``   an event with a drop reason other than ``SKB_CONSUMED`` (``tp:kfree_skb``, ``kfree_skb_reason``,
                ``sk_skb_reason_drop``), or ``kfree_skb`` without one (kernels before 5.17): where (the drop
                location, else the hop), why (the reason, explained);
  ``delivered`` the skb's data was copied to a process (:data:`DELIVER`: ``tp:skb_copy_datagram_iovec``,
                ``skb_copy_datagram_iter``, ...): the process is the event's (the reader's context);
  ``sent``      handed to a device's driver (:data:`XMIT`: ``tp:net_dev_xmit``, ``dev_hard_start_xmit``, ...):
                the device is the event's; a later receive hop (:data:`RECEIVE`, e.g. loopback or a veth peer)
                takes it back: the packet went on;
  ``consumed``  freed without a drop reason (``tp:consume_skb``, ``consume_skb``, a reason ``SKB_CONSUMED``)
                with no outcome before.

The verdict of an skb is the last outcome of its hops (``consumed`` never overrides ``delivered`` or ``sent``:
an skb is consumed after its data was read or its frame sent). Without one, the verdict says how the journey
ended (idle, cut, the run's end). A drop with reason ``NETFILTER_DROP`` names its hook: the event's own
(``nf_hook``, when the kernel side records it), else the hook whose ``@first`` point the skb passed last without
passing its ``@last`` (a rule of that hook dropped it).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The outcomes, by strength (see the module's rules).
DROPPED, DELIVERED, SENT, CONSUMED = "dropped", "delivered", "sent", "consumed"
#: No outcome seen (the journey ended before its skb did, or its end had no outcome).
UNKNOWN = "unknown"

#: Tracepoints on the last reference of an skb.
END_TRACEPOINTS = frozenset({"kfree_skb", "consume_skb"})
#: Functions a freed skb passes last (the slab free, the NAPI cache, the bulk free, 5.10's deferred free): the
#: same as :data:`pwru.tracking.FREE_FUNCTIONS` (a unit test keeps them equal).
END_FUNCTIONS = frozenset({"kfree_skbmem", "napi_skb_cache_put", "kfree_skb_add_bulk", "_kfree_skb_defer"})
#: A free without a drop: consumed (when nothing better was seen).
CONSUME = frozenset({"consume_skb", "__consume_stateless_skb", "napi_consume_skb", "dev_consume_skb_any"})
#: The skb's data copied to a process: delivered (tracepoint and functions; ``skb_consume_udp`` runs in the
#: reader's context after the copy: UDP copies a linear skb with ``copy_linear_skb``, which neither a tracepoint
#: nor a probe sees, so on the tracepoint backend a small delivered datagram shows no delivery).
DELIVER = frozenset({"skb_copy_datagram_iovec", "skb_copy_datagram_iter", "skb_copy_and_csum_datagram_msg",
                     "skb_copy_and_hash_datagram_iter", "__skb_datagram_iter", "skb_consume_udp"})  # fmt: skip
#: Handed to a device driver: sent (tracepoints and functions).
XMIT = frozenset({"net_dev_xmit", "net_dev_start_xmit", "dev_hard_start_xmit", "__dev_direct_xmit"})
#: A packet coming in: an earlier "sent" did not leave the host (loopback, veth, a tunnel device).
RECEIVE = frozenset({"netif_receive_skb", "netif_rx", "netif_rx_entry", "netif_receive_skb_entry",
                     "netif_receive_skb_list_entry", "napi_gro_receive_entry", "napi_gro_frags_entry",
                     "netif_rx_internal", "__netif_rx", "__netif_receive_skb", "__netif_receive_skb_core",
                     "netif_receive_skb_internal", "napi_gro_receive", "enqueue_to_backlog"})  # fmt: skip
#: A drop on kernels without drop reasons (before 5.17: the ``kfree_skb`` tracepoint and function carry none).
DROP = frozenset({"kfree_skb", "kfree_skb_list"})
#: The drop reason of a free that is no drop.
CONSUMED_REASON = "SKB_CONSUMED"
#: The drop reason whose hook is named (with or without the ``SKB_DROP_REASON_`` prefix).
NETFILTER_DROP = "NETFILTER_DROP"
REASON_PREFIX = "SKB_DROP_REASON_"
#: How netfilter observation points are named (pwru.netfilter.PREFIX; ``nf:HOOK@first|last``).
NF_PREFIX = "nf:"


@dataclass(frozen=True)
class Role:
    """What a hop means for its skb (see the module's rules)."""

    ends: bool = False
    outcome: str | None = None  # DELIVERED, SENT, CONSUMED (DROPPED depends on the event's reason)
    receives: bool = False  # a receive hop: undoes an earlier SENT


def bare(name: str) -> tuple[str, bool]:
    """``tp:kfree_skb`` -> (``kfree_skb``, True); ``veth_xmit[veth]`` -> (``veth_xmit``, False)."""
    if name.startswith("tp:"):
        return name[3:].split("[", 1)[0], True
    return name.split("[", 1)[0], False


def role(name: str) -> Role:
    """The role of a hop by its probe's display name (its drop reason is looked at by :func:`outcome`)."""
    base, tracepoint = bare(name)
    if name.startswith(NF_PREFIX):
        return Role()
    ends = base in (END_TRACEPOINTS if tracepoint else END_FUNCTIONS)
    if base in DELIVER:
        return Role(ends, DELIVERED)
    if base in XMIT:
        return Role(ends, SENT)
    if base in CONSUME:
        return Role(ends, CONSUMED)
    if base in DROP:
        return Role(ends, DROPPED)
    return Role(ends, None, base in RECEIVE)


def outcome(r: Role, reason: str | None) -> str | None:
    """The hop's outcome: its role's, or DROPPED/CONSUMED by its drop reason (``reason`` None: the hop has
    none; an empty string: a number without a name, still a drop)."""
    if reason is not None:
        return CONSUMED if reason == CONSUMED_REASON else DROPPED
    return r.outcome


def short_reason(reason: str) -> str:
    """``SKB_DROP_REASON_NO_SOCKET`` -> ``NO_SOCKET``."""
    return reason.removeprefix(REASON_PREFIX)


def next_outcome(current: str | None, new: str | None, r: Role) -> str | None:
    """An skb's outcome after one more hop (the order rules of the module)."""
    if new is None:
        return None if (r.receives and current == SENT) else current
    if new == CONSUMED and current in (DELIVERED, SENT, DROPPED):
        return current
    return new


def nf_point(name: str) -> tuple[str, str] | None:
    """``nf:INPUT@first`` -> (``INPUT``, ``first``); None for other hops."""
    if not name.startswith(NF_PREFIX) or "@" not in name:
        return None
    hook, where = name[len(NF_PREFIX) :].split("@", 1)
    return hook, where


def open_hook(names: list[str]) -> str | None:
    """The hook whose ``@first`` point came last in ``names`` (an skb's hops in order) without its ``@last``
    after it: where a netfilter rule took the packet."""
    inside: str | None = None
    for n in names:
        point = nf_point(n)
        if point is None:
            continue
        hook, where = point
        if where == "first":
            inside = hook
        elif where == "last" and inside == hook:
            inside = None
    return inside
