"""pwru's text columns: ``SKB CPU PROCESS [TIMESTAMP] NETNS MARK/x IFACE PROTO MTU LEN TUPLE FUNC [CALLER]
[TUNNEL]``.

Every column has a fixed width, so the header lines up with every line and ``awk '{print $N}'`` finds the same
column all the way down (pwru pads TUPLE, and FUNC before CALLER, to the widest value seen so far, which moves
the columns after them mid-stream). TUPLE fits the longest IPv4 tuple (:func:`tuple_width`); FUNC, when a
column follows it, :data:`FUNC_WIDTH`; CALLER, when TUNNEL follows it, :data:`CALLER_WIDTH`. A longer value (an
IPv6 tuple, a long function name) widens its own line only, by its overflow: the columns stay separated by
spaces and the next line is back under the header. A kfree_skb drop location is shown after the function as
``at symbol+0xNN``, a netfilter drop's hook after it as ``nf=ipv4/INPUT``. TUNNEL (--output-tunnel) ends
the line: the inner packet's tuple, ``-`` for an skb without one. With --output-explain a drop's line is followed by
``  explain: WHAT; check: NEXT`` (:mod:`pwru.explain`). Stack frames (--output-stack) follow on their own lines,
then the structs the kernel printed (--output-skb, --output-skb-shared-info), as pwru.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pwru.config import OutputConfig
from pwru.output import fields
from pwru.output.fields import remember
from pwru.output.metadata import MetadataFormat
from pwru.output.names import Names, sanitize
from pwru.records import Batch, Record, RecordLayout

if TYPE_CHECKING:  # the output layer loads no kernel-side module (pwru.cexpr emits eBPF)
    from pwru.cexpr import MetadataField

#: FUNC's width when CALLER or TUNNEL follows it: a function with a drop reason
#: (``kfree_skb_reason(SKB_DROP_REASON_NETFILTER_DROP)``) fits.
FUNC_WIDTH = 48
#: ``__sk_buff->cb[]``'s width (--output-skb-cb): five words as ``0x%08X``, commas and brackets.
CB_WIDTH = 56
#: CALLER's width when TUNNEL follows it (``__netif_receive_skb_one_core+0x87`` fits).
CALLER_WIDTH = 40
_LONGEST_V4 = b"\xff" * 16  # 255.255.255.255
_THREE_TCP_FLAGS = 0x19  # FIN|PSH|ACK


def tuple_width(with_tcp_flags: bool) -> int:
    """TUPLE's width: the longest IPv4 tuple with ports (``255.255.255.255:65535->255.255.255.255:65535(udplite)``);
    with TCP flags also a TCP one with three of them set (``(tcp:FIN|PSH|ACK)``)."""
    def width(l4: int, flags: int) -> int:
        t = fields.Tuple(_LONGEST_V4, _LONGEST_V4, 65535, 65535, fields.ETH_P_IP, l4, flags)
        return len(fields.tuple_text(t, with_tcp_flags))

    widest = max(width(l4, 0) for l4 in fields.PORT_PROTOS)
    return max(widest, width(6, _THREE_TCP_FLAGS)) if with_tcp_flags else widest


def _center(text: str, width: int) -> str:
    if len(text) >= width:
        return text
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - len(text) - left)


class TextFormatter:
    """Formats events as pwru's text lines."""

    def __init__(
        self,
        config: OutputConfig,
        names: Names,
        netns_names: Callable[[int], str] | None = None,
        metadata: Sequence[MetadataField] = (),
    ) -> None:
        self._config = config
        self._names = names
        self._netns_names = netns_names if config.netns_names else None
        self._metadata_fields = tuple(metadata)
        self._metadata: MetadataFormat | None = None
        self._ts = fields.Timestamps(config.timestamp)
        self._tuple_width = tuple_width(config.tcp_flags)
        self._func_width = FUNC_WIDTH if config.caller or config.tunnel else 0
        self._caller_width = CALLER_WIDTH if config.tunnel else 0
        self._layout: RecordLayout | None = None
        self._stack_id: Any = None
        self._rule_span = (0, 0)
        self._verdict_span = (0, 0)
        self._spans: tuple[tuple[int, int], ...] = ()
        self._unpack: Any = None
        self._caches: tuple[dict[Any, str], ...] = ({}, {}, {}, {}, {}, {})
        self._explained: dict[Any, str] = {}  # FUNC's key -> "\n" + explanation line, "" for none

    def header(self) -> str:
        """The column header line (no trailing newline)."""
        c = self._config
        parts: list[str] = []
        if c.timestamp == "absolute":
            parts.append(f"{'TIME':<23} ")
        parts.append(f"{'SKB':<18} {'CPU':<3} {'PROCESS':<16}")
        if c.timestamp != "none":
            parts.append(f" {'TIMESTAMP':<16}")
        if c.meta:
            parts.append(
                f" {'NETNS':<10} {'MARK/x':<8} {_center('IFACE', fields.IFACE_WIDTH):>16}"
                f" {'PROTO':<6} {'MTU':<5} {'LEN':<5}"
            )
            if c.skb_cb:
                parts.append(f" {'__sk_buff->cb[]':<{CB_WIDTH}}")
        if c.netns_names:
            parts.append(" " + _center("NETNS NAME", c.netns_names_max_length))
        if c.tuple:
            parts.append(" " + "TUPLE".ljust(self._tuple_width))
        parts.append(" " + "FUNC".ljust(self._func_width))
        if c.caller:
            parts.append(" " + "CALLER".ljust(self._caller_width))
        if c.tunnel:
            parts.append(" TUNNEL")
        return "".join(parts)

    # -- pieces of a line, each computed from a decoded event record (on cache misses) --

    def _proc(self, event: Record) -> str:
        """CPU and PROCESS columns (with their leading spaces): depends on cpu, pid and comm."""
        return f" {event.cpu:<3} {self._names.process(event.pid, event.comm):<16}"

    def _meta(self, event: Record) -> str:
        """NETNS .. LEN columns (with the leading space): depends on the meta fields only."""
        iface = _center(fields.iface_text(event), fields.IFACE_WIDTH)
        text = (
            f" {event.netns:<10} {event.mark:<8x} {iface:>16}"
            f" 0x{event.protocol:04x} {event.mtu:<5} {event.len:<5}"
        )
        return text + " " + fields.cb_text(event.cb) if self._config.skb_cb else text

    def _tuple(self, event: Record) -> str:
        """TUPLE, padded, with its leading space: depends on the tuple fields only."""
        return " " + fields.tuple_text(fields.tuple_of(event), self._config.tcp_flags).ljust(self._tuple_width)

    def _tunnel(self, event: Record) -> str:
        """TUNNEL with its leading space: depends on the tunnel tuple's fields only."""
        return " " + fields.tuple_text(fields.tuple_of(event, fields.TUNNEL_PREFIX), self._config.tcp_flags)

    def _func(self, event: Record) -> str:
        """FUNC with drop reason, location and a netfilter drop's hook (``nf=ipv4/INPUT``), padded when a column
        follows, with its leading space: depends on addr, kind, reason, location, nf_pf and nf_hook."""
        func = fields.func_text(event, self._names)
        location = fields.location_text(event, self._names)
        text = f"{func} at {location}" if location else func
        nf = fields.nf_text(event.nf_pf, event.nf_hook)
        if nf:
            text += f" nf={nf}"
        rule = fields.nf_rule_text(event)
        if rule:
            text += f" {rule}"
        verdict = fields.verdict_text(event)
        if verdict:
            text += f" verdict={verdict}"
        return " " + text.ljust(self._func_width)

    def _caller(self, event: Record) -> str:
        """CALLER, padded when TUNNEL follows, with its leading space: depends on caller only."""
        caller = sanitize(self._names.symbol(event.caller)) if event.caller else "-"
        return " " + caller.ljust(self._caller_width)

    def _netns_name(self, netns_names: Callable[[int], str], inode: int) -> str:
        """NETNS NAME (--output-netns-names) with its leading space: pwru's width, the name cut to it and
        centred; ``-`` when the namespace has no known name (so the columns after it stay countable)."""
        width = self._config.netns_names_max_length
        return " " + _center(sanitize(netns_names(inode))[:width] or "-", width)

    def _head(self, skb: int, proc: str, ts: int) -> str:
        """TIME (absolute), SKB, CPU, PROCESS and TIMESTAMP; ``ts`` is the event's raw timestamp."""
        mode = self._config.timestamp
        if mode == "none":
            return f"{skb:<#18x}{proc}"
        head = f"{skb:<#18x}{proc} {self._ts.value_at(skb, ts):<16}"
        return f"{self._ts.wall_clock_at(ts):<23} {head}" if mode == "absolute" else head

    # -- formatting: the only path --

    def format_batch(self, batch: Batch) -> list[str]:
        """The lines of a batch's event records (other record types are not text-column material).

        Fast path: no record object is built for most records. Each piece of a line (CPU+PROCESS, the meta
        columns, TUPLE, FUNC, CALLER, TUNNEL) is cached, keyed by the record bytes it is computed from (spans located
        by :meth:`RecordLayout.span`, i.e. from the object's BTF) or by the integers it depends on; a miss
        decodes the record once and computes the piece from it. One skb passing many probes repeats all of them
        but FUNC. Caches are emptied when they reach :data:`~pwru.output.fields.CACHE_LIMIT` entries. Stack
        frames (--output-stack) come from ``batch.stacks``, read by the stack stage.
        """
        c = self._config
        layout = batch.schema.layout("event")
        if self._layout is not layout:
            self._layout = layout
            self._spans, self._unpack = fields.record_views(layout)
            self._rule_span = layout.span(*fields.NF_RULE_FIELDS)
            self._verdict_span = layout.span(*fields.VERDICT_FIELDS)
            self._stack_id = layout.unpacker("stack_id")
            for cache in (*self._caches, self._explained):
                cache.clear()
            if self._metadata_fields:
                assert layout.tail is not None, "struct event has no metadata tail"
                self._metadata = MetadataFormat(
                    self._metadata_fields, layout.tail.offset, layout.offset(fields.XDP_MARK)
                )
        (p0, p1), (m0, m1), (t0, t1), (u0, u1) = self._spans
        procs, metas, tuples, funcs, callers, tunnels = self._caches
        unpack, decode, stack_id_of = self._unpack, layout.decode, self._stack_id
        with_meta, with_tuple, with_caller, with_stack = c.meta, c.tuple, c.caller, c.stack
        with_tunnel = c.tunnel
        netns_names, netns_of = self._netns_names, layout.unpacker("netns")
        with_explain, explained = c.explain, self._explained
        plain_head = c.timestamp == "none"
        stacks, symbol = batch.stacks, self._names.symbol
        lines: list[str] = []
        append = lines.append
        events = batch.of_type("event")
        for buf in events:
            ev: Record | None = None
            ts, skb, probe, probe_kind, caller_addr, location, reason, nf_pf, nf_hook = unpack(buf)
            key = buf[p0:p1]
            proc = procs.get(key)
            if proc is None:
                ev = decode(buf)
                proc = remember(procs, key, self._proc(ev))
            meta = ""
            if with_meta:
                key = buf[m0:m1]
                cached = metas.get(key)
                if cached is None:
                    ev = ev or decode(buf)
                    cached = remember(metas, key, self._meta(ev))
                meta = cached
            tup = ""
            if with_tuple:
                key = buf[t0:t1]
                cached = tuples.get(key)
                if cached is None:
                    ev = ev or decode(buf)
                    cached = remember(tuples, key, self._tuple(ev))
                tup = cached
            rule = fields.rule_key(buf, self._rule_span, reason)
            verdict = fields.verdict_key(buf, self._verdict_span)
            fk = (probe, probe_kind, reason, location, nf_pf, nf_hook, rule, verdict)
            func = funcs.get(fk)
            if func is None:
                ev = ev or decode(buf)
                func = remember(funcs, fk, self._func(ev))
            caller = ""
            if with_caller:
                cached = callers.get(caller_addr)
                if cached is None:
                    ev = ev or decode(buf)
                    cached = remember(callers, caller_addr, self._caller(ev))
                caller = cached
            tunnel = ""
            if with_tunnel:
                key = buf[u0:u1]
                cached = tunnels.get(key)
                if cached is None:
                    ev = ev or decode(buf)
                    cached = remember(tunnels, key, self._tunnel(ev))
                tunnel = cached
            head = f"{skb:<#18x}{proc}" if plain_head else self._head(skb, proc, ts)
            if netns_names is not None:
                meta += self._netns_name(netns_names, ev.netns if ev is not None else netns_of(buf)[0])
            extra = self._metadata.text(buf) if self._metadata is not None else ""
            line = f"{head}{meta}{tup}{func}{caller}{tunnel}{extra}"
            if with_explain and reason >= 0:
                explanation = explained.get(fk)
                if explanation is None:
                    ev = ev or decode(buf)
                    e = fields.explanation_of(ev, self._names)
                    explanation = remember(explained, fk, "\n" + fields.explanation_text(e) if e else "")
                line += explanation
            append(line)
        if with_stack:
            for i, buf in enumerate(events):
                stack_id = stack_id_of(buf)[0]
                frames = [sanitize(symbol(a)) for a in stacks.get(stack_id, ()) if a] if stack_id >= 0 else []
                if frames:
                    lines[i] += "\n" + "\n".join(frames)
        if batch.dumps:
            fields.add_dumps(lines, events, batch.dumps, unpack, _with_dumps)
        if batch.map_ops:
            fields.add_dumps(lines, events, batch.map_ops, unpack, lambda line, op: line + "\n" + op.text())
        return lines


def _with_dumps(line: str, dumps: dict[str, str]) -> str:
    """An event's line followed by its struct dumps, each from a new line (pwru's layout); a note
    (:data:`fields.NOTE_KEYS`) as ``name: text``."""
    return line + "".join("\n" + (f"{k}: {text}" if k in fields.NOTE_KEYS else text) for k, text in dumps.items())
