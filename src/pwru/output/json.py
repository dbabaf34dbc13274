"""JSON lines: one object per event with pwru's keys, value types and omitted empty members.

pwru's keys (its JSON struct, ``jsonPrinter``): ``skb`` (the address, a hex string), ``cpu``, ``process``,
``func`` (with the drop reason, as in the text output), ``caller_func`` (--output-caller), ``time`` (per
--timestamp: a number, or the wall-clock string when absolute), ``netns``, ``netns_name``
(--output-netns-names, when known), ``mark``, ``iface``, ``proto``, ``mtu``, ``len`` (--output-meta), ``cb``
(five numbers, --output-skb-cb with --output-meta), ``tuple`` {``saddr``, ``daddr``, ``sport``, ``dport``,
``proto``, ``flags``} (--output-tuple), ``tunnel_tuple`` (the same keys, for the inner packet of an encapsulated
skb; --output-tunnel), ``stack`` (a string: each frame after a newline, as pwru; --output-stack),
``skb_shared_info`` (the struct's text, --output-skb-shared-info). As pwru (Go's ``omitempty``), a member whose
value is 0 or an empty string is left out (``cpu`` 0 included; ``time`` 0 stays, as in pwru), while ``tuple``
and ``tunnel_tuple`` are there whenever their flag is (``{}`` for an skb without an IPv4/IPv6 packet);
``sport``/``dport`` are also left out for protocols without ports.

Ours besides (new keys, never a pwru key with another meaning): ``reason`` (drop reason name) and ``location`` (drop
location symbol) when known, ``nf_family`` (``ipv4``, ``ipv6``) and ``nf_hook`` (``INPUT``, ...: the iptables chain
name) for a drop by netfilter whose hook is known, ``nf_table`` and ``nf_chain`` (nftables' base chain) for a
drop after a table's DROP verdict (kprobe and fentry backends), ``explanation`` {``text``, ``check``} for a drop with
--output-explain, ``skb_metadata`` (--output-skb-metadata's values), and ``sk_buff``: the struct sk_buff text of
--output-skb, which pwru puts under ``skb_metadata``, a key --output-skb-metadata uses for its own values. Addresses
carry no brackets (pwru writes IPv6 ones as ``[fd00::1]``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pwru.config import OutputConfig
from pwru.output import fields
from pwru.output.bpfmap import JSON_KEY, MapOp
from pwru.output.fields import remember
from pwru.output.metadata import MetadataFormat
from pwru.output.names import Names, sanitize
from pwru.records import Batch, Record, RecordLayout

if TYPE_CHECKING:  # the output layer loads no kernel-side module (pwru.cexpr emits eBPF)
    from pwru.cexpr import MetadataField

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class JsonFormatter:
    """Formats events as JSON objects, one per line."""

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
        self._layout: RecordLayout | None = None
        self._stack_id: Any = None
        self._rule_span = (0, 0)
        self._verdict_span = (0, 0)
        self._spans: tuple[tuple[int, int], ...] = ()
        self._unpack: Any = None
        self._caches: tuple[dict[Any, str], ...] = ({}, {}, {}, {}, {}, {})

    def header(self) -> str:
        """JSON output has no header: an empty string."""
        return ""

    # -- parts of an object, each computed from a decoded event record (on cache misses) --

    def _proc_part(self, event: Record) -> dict[str, Any]:
        """``cpu`` and ``process``: depends on cpu, pid and comm."""
        return _nonempty({"cpu": event.cpu, "process": self._names.process(event.pid, event.comm)})

    def _func_part(self, event: Record) -> dict[str, Any]:
        """``func``, ``reason``, ``location``, ``nf_family``+``nf_hook``: depends on addr, kind, reason, location,
        nf_pf and nf_hook."""
        names = self._names
        d: dict[str, Any] = {"func": fields.func_text(event, names)}
        if event.reason >= 0:
            d["reason"] = sanitize(names.reason_name(event.reason)) or str(event.reason)
        location = fields.location_text(event, names)
        if location:
            d["location"] = location
        if fields.nf_known(event.nf_pf, event.nf_hook):
            d["nf_family"] = fields.nf_family_name(event.nf_pf)
            d["nf_hook"] = fields.nf_hook_name(event.nf_hook)
        table, chain = sanitize(event.nf_table), sanitize(event.nf_chain)
        if table:
            d["nf_table"] = table
        if chain:
            d["nf_chain"] = chain
        verdict = fields.verdict_text(event)
        if verdict:
            d["prog_verdict"] = verdict
        if self._config.explain:
            e = fields.explanation_of(event, names)
            if e is not None:
                d["explanation"] = {"text": e.text, "check": e.check}
        return d

    def _caller_part(self, event: Record) -> dict[str, Any]:
        """``caller_func`` (--output-caller): depends on caller only."""
        if not self._config.caller:
            return {}
        return _nonempty({"caller_func": sanitize(self._names.symbol(event.caller)) if event.caller else ""})

    def _time_part(self, skb: int, ts: int) -> dict[str, Any]:
        """``time`` per --timestamp (records the skb as seen: call once per event)."""
        mode = self._config.timestamp
        if mode == "absolute":
            self._ts.value_at(skb, ts)
            return {"time": self._ts.wall_clock_at(ts)}
        if mode != "none":
            return {"time": self._ts.value_at(skb, ts)}
        return {}

    def _meta_part(self, event: Record) -> dict[str, Any]:
        """``netns`` .. ``len`` (--output-meta): depends on the meta fields only."""
        if not self._config.meta:
            return {}
        return _nonempty({
            "netns": event.netns,
            "mark": event.mark,
            "iface": fields.iface_text(event),
            "proto": event.protocol,
            "mtu": event.mtu,
            "len": event.len,
        }) | ({"cb": list(fields.cb_words(event.cb))} if self._config.skb_cb else {})

    def _tuple_part(self, event: Record) -> dict[str, Any]:
        """``tuple`` (--output-tuple, IPv4/IPv6 only): depends on the tuple fields only."""
        return self._tuple_dict("tuple", fields.tuple_of(event)) if self._config.tuple else {}

    def _tunnel_part(self, event: Record) -> dict[str, Any]:
        """``tunnel_tuple`` (--output-tunnel, an inner IPv4/IPv6 packet only): depends on its fields only."""
        if not self._config.tunnel:
            return {}
        return self._tuple_dict("tunnel_tuple", fields.tuple_of(event, fields.TUNNEL_PREFIX))

    def _tuple_dict(self, key: str, tup: fields.Tuple) -> dict[str, Any]:
        """pwru's tuple object: always there with its flag (``{}`` for an skb carrying neither IPv4 nor IPv6, as
        pwru's empty members are all left out)."""
        if tup.l3_proto not in (fields.ETH_P_IP, fields.ETH_P_IPV6):
            return {key: {}}
        t: dict[str, Any] = {
            "saddr": fields.address(tup.l3_proto, tup.saddr),
            "daddr": fields.address(tup.l3_proto, tup.daddr),
        }
        if fields.has_ports(tup):
            t.update(sport=tup.sport, dport=tup.dport)
        t["proto"] = tup.l4_proto
        if self._config.tcp_flags and tup.l4_proto == 6 and tup.tcp_flags:
            t["flags"] = fields.tcp_flags(tup.tcp_flags)
        return {key: _nonempty(t)}

    def format_batch(self, batch: Batch) -> list[str]:
        """One JSON object per event record of the batch; the only formatting path.

        Fast path: each part of the object (``cpu``+``process``, ``func``+``reason``+``location``,
        ``caller_func``, the meta keys, ``tuple``, ``tunnel_tuple``) is cached as its encoded JSON text (the
        members without the braces), keyed by the record bytes it is computed from (spans from
        :meth:`RecordLayout.span`, i.e. from the object's BTF) or by the integers it depends on. The compact
        encoder writes an object as its members joined by ``,``, so joining the parts gives the same bytes as
        encoding the whole dict. A miss decodes the record once and computes the part from it. Caches are
        emptied at :data:`~pwru.output.fields.CACHE_LIMIT` entries. ``stack`` comes from ``batch.stacks``.
        """
        layout = batch.schema.layout("event")
        if self._layout is not layout:
            self._layout = layout
            self._spans, self._unpack = fields.record_views(layout)
            self._rule_span = layout.span(*fields.NF_RULE_FIELDS)
            self._verdict_span = layout.span(*fields.VERDICT_FIELDS)
            self._stack_id = layout.unpacker("stack_id")
            for cache in self._caches:
                cache.clear()
            if self._metadata_fields:
                assert layout.tail is not None, "struct event has no metadata tail"
                self._metadata = MetadataFormat(
                    self._metadata_fields, layout.tail.offset, layout.offset(fields.XDP_MARK)
                )
        (p0, p1), (m0, m1), (t0, t1), (u0, u1) = self._spans
        procs, metas, tuples, funcs, callers, tunnels = self._caches
        unpack, decode, stack_id_of = self._unpack, layout.decode, self._stack_id
        with_time = self._config.timestamp != "none"
        with_stack = self._config.stack
        with_tunnel = self._config.tunnel
        netns_names, netns_of = self._netns_names, layout.unpacker("netns")
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
                proc = remember(procs, key, _members(self._proc_part(ev)))
            rule = fields.rule_key(buf, self._rule_span, reason)
            verdict = fields.verdict_key(buf, self._verdict_span)
            fk = (probe, probe_kind, reason, location, nf_pf, nf_hook, rule, verdict)
            func = funcs.get(fk)
            if func is None:
                ev = ev or decode(buf)
                func = remember(funcs, fk, _members(self._func_part(ev)))
            caller = callers.get(caller_addr)
            if caller is None:
                ev = ev or decode(buf)
                caller = remember(callers, caller_addr, _members(self._caller_part(ev)))
            key = buf[m0:m1]
            meta = metas.get(key)
            if meta is None:
                ev = ev or decode(buf)
                meta = remember(metas, key, _members(self._meta_part(ev)))
            key = buf[t0:t1]
            tup = tuples.get(key)
            if tup is None:
                ev = ev or decode(buf)
                tup = remember(tuples, key, _members(self._tuple_part(ev)))
            tunnel = ""
            if with_tunnel:
                key = buf[u0:u1]
                cached = tunnels.get(key)
                if cached is None:
                    ev = ev or decode(buf)
                    cached = remember(tunnels, key, _members(self._tunnel_part(ev)))
                tunnel = cached
            parts = [f'"skb":"{skb:#x}"', proc, func, caller]
            if with_time:
                parts.append(_members(self._time_part(skb, ts)))
            if netns_names is not None:
                name = netns_names(ev.netns if ev is not None else netns_of(buf)[0])
                if name:  # pwru's omitempty
                    parts.append(_members({"netns_name": sanitize(name)}))
            parts += (meta, tup, tunnel, self._metadata.json(buf) if self._metadata is not None else "")
            append("{" + ",".join([p for p in parts if p]) + "}")
        if with_stack:
            for i, buf in enumerate(events):
                stack_id = stack_id_of(buf)[0]
                if stack_id >= 0:
                    frames = [sanitize(symbol(a)) for a in stacks.get(stack_id, ()) if a]
                    lines[i] = _with_members(lines[i], {"stack": "".join("\n" + f for f in frames)})
        if batch.dumps:
            fields.add_dumps(lines, events, batch.dumps, unpack, _with_members)
        if batch.map_ops:
            fields.add_dumps(lines, events, batch.map_ops, unpack, _with_map_op)
        return lines


def _nonempty(part: dict[str, Any]) -> dict[str, Any]:
    """``part`` without its zero numbers and empty strings: pwru's ``omitempty`` (Go leaves such members out)."""
    return {k: v for k, v in part.items() if v != 0 and v != ""}


def _with_map_op(line: str, op: MapOp) -> str:
    return _with_members(line, {JSON_KEY: op.json()})


def _with_members(line: str, part: dict[str, Any]) -> str:
    """A JSON object's line with ``part``'s members added at its end."""
    return line[:-1] + "," + _members(part) + "}"


def _members(part: dict[str, Any]) -> str:
    """A dict's members as compact JSON without the braces (empty for an empty dict)."""
    return _encoder.encode(part)[1:-1]
