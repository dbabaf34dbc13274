"""Pieces of an event's output shared by the text and JSON formatters: tuple (and the tunnel's inner tuple),
TCP flags, iface, function, timestamps.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from pwru.explain import Explanation, explain
from pwru.output.names import Names, sanitize, shorten_left
from pwru.records import Record, RecordLayout

V = TypeVar("V")

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IFACE_WIDTH = 16

L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp", 136: "udplite"}
PORT_PROTOS = frozenset({6, 17, 132, 136})
TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
ABSOLUTE_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: The :class:`Record` fields of ``struct skb_meta`` and ``struct skb_tuple`` (keys of the formatters' caches).
META_FIELDS = ("netns", "mark", "ifindex", "len", "mtu", "protocol", "ifname", "cb")
TUPLE_FIELDS = ("saddr", "daddr", "sport", "dport", "l3_proto", "l4_proto", "tcp_flags")
#: ``struct event``'s second ``struct skb_tuple``, ``tunnel`` (the inner packet's), flattened with its member
#: name as prefix (see :mod:`pwru.records`).
TUNNEL_PREFIX = "tunnel_"
TUNNEL_FIELDS = tuple(TUNNEL_PREFIX + f for f in TUPLE_FIELDS)
#: Entries a formatter's piece cache holds before it is emptied (a bound on memory, not a tuning knob:
#: one skb's pieces repeat across consecutive probes, so a cold cache refills within a few events).
CACHE_LIMIT = 4096


def tcp_flags(flags: int) -> str:
    """TCP flags byte -> ``SYN|ACK`` (pwru's spelling and order); empty when none are set."""
    return "|".join(name for bit, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << bit))


def address(l3_proto: int, raw: bytes) -> str:
    """An address from the tuple: IPv4 dotted, IPv6 in brackets, empty for other L3 protocols."""
    if l3_proto == ETH_P_IP:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if l3_proto == ETH_P_IPV6:
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[:16])}]"
    return ""


def l4_name(proto: int) -> str:
    """``tcp``, ``udp``, ``icmp``, ``icmp6``, ... or the protocol number."""
    return L4_NAMES.get(proto, str(proto))


class Tuple(NamedTuple):
    """One ``struct skb_tuple`` of an event."""

    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    l3_proto: int
    l4_proto: int
    tcp_flags: int


def tuple_of(event: Record, prefix: str = "") -> Tuple:
    """The event's tuple; with ``prefix`` :data:`TUNNEL_PREFIX`, its tunnel's inner tuple."""
    return Tuple(*(getattr(event, prefix + name) for name in TUPLE_FIELDS))


def has_ports(t: Tuple) -> bool:
    """Whether the tuple's L4 protocol carries ports."""
    return t.l4_proto in PORT_PROTOS


def tuple_text(t: Tuple, with_tcp_flags: bool) -> str:
    """``10.0.0.1:4242->10.0.0.2:80(tcp)``; ICMP without ports; ``(tcp:SYN|ACK)`` with TCP flags (pwru's
    way); ``-`` when the skb carries neither IPv4 nor IPv6 (or, for the tunnel tuple, no inner packet).
    """
    if t.l3_proto not in (ETH_P_IP, ETH_P_IPV6):
        return "-"
    src = address(t.l3_proto, t.saddr)
    dst = address(t.l3_proto, t.daddr)
    if has_ports(t):
        src, dst = f"{src}:{t.sport}", f"{dst}:{t.dport}"
    l4 = l4_name(t.l4_proto)
    if with_tcp_flags and t.l4_proto == 6 and t.tcp_flags:
        l4 = f"{l4}:{tcp_flags(t.tcp_flags)}"
    return f"{src}->{dst}({l4})"


def iface_text(event: Record) -> str:
    """IFACE: ``name:ifindex`` shortened to 16 columns as pwru does, the bare ifindex when the name is
    unknown (``0`` when the skb has no device).
    """
    name = sanitize(event.ifname)
    if event.ifindex == 0 or not name:
        return str(event.ifindex)
    return shorten_left(f"{name}:{event.ifindex}", IFACE_WIDTH)


def func_text(event: Record, names: Names) -> str:
    """FUNC: the function or tracepoint, with ``(DROP_REASON)`` when the hook reports one."""
    name = sanitize(names.probe_name(event.probe_kind, event.probe))
    if event.reason >= 0:
        reason = sanitize(names.reason_name(event.reason)) or str(event.reason)
        name = f"{name}({reason})"
    return name


#: Netfilter families (NFPROTO_*) and hooks (NF_INET_*) by number, for a netfilter drop's hook
#: (``struct event``'s ``nf_pf``/``nf_hook``); the hooks by their iptables chain names.
NF_FAMILIES = {1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
NF_HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def nf_family_name(pf: int) -> str:
    """``ipv4``, ``ipv6``, ... or the number."""
    return NF_FAMILIES.get(pf, str(pf))


def nf_hook_name(hook: int) -> str:
    """``PREROUTING`` .. ``POSTROUTING`` or the number."""
    return NF_HOOKS[hook] if 0 <= hook < len(NF_HOOKS) else str(hook)


def nf_known(pf: int, hook: int) -> bool:
    """Whether an event's ``nf_pf``/``nf_hook`` name a hook (the kernel leaves 0/-1 when they do not)."""
    return pf != 0 and hook >= 0


def nf_text(pf: int, hook: int) -> str:
    """``ipv4/INPUT``: the hook of a netfilter drop; empty when it is not one."""
    return f"{nf_family_name(pf)}/{nf_hook_name(hook)}" if nf_known(pf, hook) else ""


#: ``struct event``'s netfilter table and chain (a drop after a table's verdict DROP; kprobe/fentry backends).
NF_RULE_FIELDS = ("nf_table", "nf_chain")


def nf_rule_text(event: Record) -> str:
    """``table=filter`` (iptables), ``table=pwl chain=out`` (nftables: the base chain); empty when unknown."""
    table, chain = sanitize(event.nf_table), sanitize(event.nf_chain)
    if not table:
        return ""
    return f"table={table}" + (f" chain={chain}" if chain else "")


#: struct event's byte set in an XDP program's event (--output-xdp-metadata's fields apply to it).
XDP_MARK = "xdp_ctx"
#: struct event's prog_ret and prog_ret_kind: a traced tc or XDP program's return value at its exit.
VERDICT_FIELDS = ("prog_ret", "prog_ret_kind")
#: TC_ACT_* and XDP_* by value (uapi/linux/pkt_cls.h, uapi/linux/bpf.h).
TC_VERDICTS = {
    -1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT", 3: "TC_ACT_PIPE",
    4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT", 7: "TC_ACT_REDIRECT", 8: "TC_ACT_TRAP",
}  # fmt: skip
XDP_VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
#: prog_ret_kind (pwru.h's enum pwru_prog_ret_kind: 1 tc, 2 XDP) -> the names of its values.
VERDICTS_BY_KIND = {1: TC_VERDICTS, 2: XDP_VERDICTS}


def verdict_text(event: Record) -> str:
    """A program's verdict at its exit (``TC_ACT_SHOT``, ``XDP_DROP``, the number for one without a name);
    ``""`` for an event that is not a program's exit."""
    kind = event.prog_ret_kind
    if not kind:
        return ""
    return VERDICTS_BY_KIND.get(kind, {}).get(event.prog_ret, str(event.prog_ret))


def verdict_key(buf: bytes, span: tuple[int, int]) -> bytes:
    """The cache key part of a program exit's verdict."""
    return bytes(buf[span[0] : span[1]])


def rule_key(buf: bytes, span: tuple[int, int], reason: int) -> bytes:
    """The cache key part of a drop event's table and chain (empty for an event without a drop reason, whose
    table and chain the kernel leaves empty)."""
    return bytes(buf[span[0] : span[1]]) if reason >= 0 else b""


def explanation_of(event: Record, names: Names) -> Explanation | None:
    """The explanation of a drop event's reason (refined by its location and netfilter hook); None for an event
    without a reason, or a reason the table does not know (``SKB_CONSUMED``, a subsystem's own)."""
    if event.reason < 0:
        return None
    reason = names.reason_name(event.reason)
    if not reason:
        return None
    return explain(reason, location_text(event, names) or None, nf_text(event.nf_pf, event.nf_hook) or None)


def explanation_text(e: Explanation) -> str:
    """--output-explain's line after a drop (text output): indented, so it never reads as an event."""
    return sanitize(f"  explain: {e.text}; check: {e.check}")


def location_text(event: Record, names: Names) -> str:
    """Where the kernel dropped the packet (``__udp4_lib_rcv+0x5b1``), empty when unknown."""
    return sanitize(names.symbol(event.location)) if event.location else ""


_RECORDED_OFFSET: list[int] = []  # `pwru print`: the offset of the recording's moment


def monotonic_offset_ns() -> int:
    """What to add to a ``bpf_ktime_get_ns()`` value (CLOCK_MONOTONIC) to get ns since the epoch (wall time),
    read now (or as recorded, see :func:`use_clock_offset`): ``--timestamp absolute`` and the pcapng output
    convert with it."""
    if _RECORDED_OFFSET:
        return _RECORDED_OFFSET[0]
    return time.time_ns() - time.monotonic_ns()


def use_clock_offset(offset_ns: int) -> None:
    """From now on, :func:`monotonic_offset_ns` is ``offset_ns`` (printing a recording: its timestamps are of
    the recording machine's clock, at that time)."""
    _RECORDED_OFFSET[:] = [offset_ns]


class Timestamps:
    """The timestamp column, per ``--timestamp`` (pwru's meanings):

    * ``current``: the event's ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC, ns);
    * ``relative``: ns since the same skb was last seen (0 the first time);
    * ``absolute``: wall-clock time of the event (``2006-01-02T15:04:05.000``, local time), computed from its
      monotonic timestamp, plus the ``current`` value.
    """

    def __init__(self, mode: str, max_skbs: int = 65536) -> None:
        self.mode = mode
        self._last_seen: dict[int, int] = {}
        self._max = max_skbs
        self._offset_ns = monotonic_offset_ns()

    def value(self, event: Record) -> int:
        """The TIMESTAMP column's number; records the skb as seen. Call once per event."""
        return self.value_at(event.skb, event.ts)

    def value_at(self, skb: int, ts: int) -> int:
        """:meth:`value` from the event's ``skb`` and ``ts`` alone."""
        last = self._last_seen.pop(skb, None)
        if len(self._last_seen) >= self._max:
            # Forget the skb seen longest ago (dicts keep insertion order; a re-seen skb moves to the end).
            del self._last_seen[next(iter(self._last_seen))]
        self._last_seen[skb] = ts
        if self.mode == "relative":
            return 0 if last is None else ts - last
        return ts

    def wall_clock(self, event: Record) -> str:
        """The event's local wall-clock time with milliseconds."""
        return self.wall_clock_at(event.ts)

    def wall_clock_at(self, ts: int) -> str:
        """:meth:`wall_clock` from the event's ``ts`` alone."""
        ns = ts + self._offset_ns
        dt = datetime.fromtimestamp(ns // 1_000_000_000)
        return f"{dt.strftime(ABSOLUTE_FORMAT)}.{(ns // 1_000_000) % 1000:03d}"


#: The per-probe fields the fast paths unpack from every record, in this order.
PROBE_FIELDS = ("ts", "skb", "probe", "probe_kind", "caller", "location", "reason", "nf_pf", "nf_hook")

Spans = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]


def record_views(layout: RecordLayout) -> tuple[Spans, Callable[[bytes], tuple[Any, ...]]]:
    """For the formatters' fast paths: the byte spans of an event record whose formatted pieces are cached
    (process, meta, tuple, tunnel tuple; offsets from the object's BTF) and an unpacker of :data:`PROBE_FIELDS`."""
    spans = (
        layout.span("pid", "cpu", "comm"),
        layout.span(*META_FIELDS),
        layout.span(*TUPLE_FIELDS),
        layout.span(*TUNNEL_FIELDS),
    )
    return spans, layout.unpacker(*PROBE_FIELDS)


def remember(cache: dict[Any, str], key: Any, value: str) -> str:
    """Store ``value`` in a formatter's piece cache and return it; the cache is emptied at
    :data:`CACHE_LIMIT` entries. A ``memoryview`` key (a span of a record) is stored as ``bytes`` so the
    cache never pins a batch's buffer (views hash and compare like the bytes they show).
    """
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[bytes(key) if isinstance(key, memoryview) else key] = value
    return value


#: ``Batch.dumps`` entries that are notes of ours rather than struct dumps: text shows them as ``name: text``
#: (--filter-trace-tc-chain's ``tc_rewrite``, pwru.tc_chain), JSON as a key like every dump.
REWRITE_KEY = "tc_rewrite"
NOTE_KEYS = frozenset({REWRITE_KEY})


def add_dumps(
    lines: list[str],
    events: list[bytes],
    dumps: Mapping[tuple[int, int, int], V],
    unpack: Callable[[bytes], tuple[Any, ...]],
    combine: Callable[[str, V], str],
) -> None:
    """``lines[i] = combine(lines[i], what dumps has for event i)`` for each event it has something for (struct
    dumps, --output-skb; map operations, --output-bpfmap); ``unpack`` is the formatter's fast unpacker (ts, skb,
    probe first), the key."""
    for i, buf in enumerate(events):
        found = dumps.get(unpack(buf)[:3])
        if found:
            lines[i] = combine(lines[i], found)


def cb_words(cb: bytes) -> tuple[int, ...]:
    """--output-skb-cb: the control block bytes of an event (``meta.cb``) as 32-bit words in host byte order,
    as BPF programs see ``__sk_buff->cb[]``."""
    return struct.unpack(f"={len(cb) // 4}I", cb[: len(cb) // 4 * 4])


def cb_text(cb: bytes) -> str:
    """pwru's spelling of the words: ``[0x00000000,0x0000002A,...]``."""
    return "[" + ",".join(f"0x{w:08X}" for w in cb_words(cb)) + "]"
