"""JSON lines: one object per event with pwru's keys.

Keys: ``skb`` (hex string), ``cpu``, ``process``, ``func`` (with the drop reason, as in the text output),
``caller_func`` (--output-caller), ``time`` (per --timestamp: a number, or the wall-clock string when
absolute), ``netns``, ``mark``, ``iface``, ``proto``, ``mtu``, ``len`` (--output-meta), ``tuple``
{``saddr``, ``daddr``, ``sport``, ``dport``, ``proto``, ``flags``} (--output-tuple), ``stack`` (list of
symbols, --output-stack). Additions to pwru's set: ``reason`` (drop reason name) and ``location`` (drop
location symbol) when known. Unlike pwru (Go's omitempty) zero values are kept, so every line has the same
keys for the same flags; ``tuple`` is left out for skbs carrying neither IPv4 nor IPv6, ``sport``/``dport``
for protocols without ports, ``flags`` when no TCP flag is set. Addresses carry no brackets.
"""

from __future__ import annotations

import json
from typing import Any

from pwru.config import Config
from pwru.event import Event
from pwru.output import fields
from pwru.output.names import Names, sanitize

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class JsonFormatter:
    """Formats events as JSON objects, one per line."""

    def __init__(self, config: Config, names: Names) -> None:
        self._config = config
        self._names = names
        self._ts = fields.Timestamps(config.timestamp)

    def header(self) -> str:
        """JSON output has no header: an empty string."""
        return ""

    def record(self, event: Event) -> dict[str, Any]:
        """The event as a dict of JSON-ready values."""
        c = self._config
        names = self._names
        d: dict[str, Any] = {
            "skb": f"{event.skb:#x}",
            "cpu": event.cpu,
            "process": names.process(event.pid, event.comm),
            "func": fields.func_text(event, names),
        }
        if event.reason >= 0:
            d["reason"] = sanitize(names.reason_name(event.reason)) or str(event.reason)
        location = fields.location_text(event, names)
        if location:
            d["location"] = location
        if c.output_caller:
            d["caller_func"] = sanitize(names.symbol(event.caller)) if event.caller else ""
        if c.timestamp == "absolute":
            self._ts.value(event)
            d["time"] = self._ts.wall_clock(event)
        elif c.timestamp != "none":
            d["time"] = self._ts.value(event)
        if c.output_meta:
            d.update(
                netns=event.netns,
                mark=event.mark,
                iface=fields.iface_text(event),
                proto=event.protocol,
                mtu=event.mtu,
                len=event.len,
            )
        if c.output_tuple and event.l3_proto in (fields.ETH_P_IP, fields.ETH_P_IPV6):
            t: dict[str, Any] = {
                "saddr": fields.address(event.l3_proto, event.saddr).strip("[]"),
                "daddr": fields.address(event.l3_proto, event.daddr).strip("[]"),
            }
            if fields.has_ports(event):
                t.update(sport=event.sport, dport=event.dport)
            t["proto"] = event.l4_proto
            if c.output_tcp_flags and event.l4_proto == 6 and event.tcp_flags:
                t["flags"] = fields.tcp_flags(event.tcp_flags)
            d["tuple"] = t
        if c.output_stack and event.stack_id >= 0:
            d["stack"] = [sanitize(names.symbol(a)) for a in names.stack(event.stack_id) if a]
        return d

    def format(self, event: Event) -> str:
        """One event as one line of JSON (no trailing newline)."""
        return _encoder.encode(self.record(event))
