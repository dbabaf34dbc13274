"""The nodes' JSON lines -> one output: JSON lines with ``node`` added, or text lines with a NODE column.

Every pod runs pwru with ``--output-json``; a cluster keeps a container's standard output and error in one log,
so a line that is not a JSON object (pwru's "Attaching ...", warnings, errors) goes to our standard error with
the node's name in front. The text form keeps pwru's column order (SKB CPU PROCESS, NETNS MARK/x IFACE PROTO MTU
LEN with --output-meta, TUPLE with --output-tuple, FUNC) after a NODE column, from the JSON keys; what pwru adds
on lines of their own (stacks, dumps) follows as in pwru. A JSON object that is not an event (a --summary table)
is shown as it came, after the node's name.
"""

from __future__ import annotations

import json
import threading
from typing import Any, TextIO

from pwru.output import fields

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class Merger:
    """Writes the lines of every node's stream, one whole line at a time (the streams' threads share it)."""

    def __init__(self, out: TextIO, err: TextIO, json_out: bool, meta: bool = True, tuple_: bool = True,
                 node_width: int = 16) -> None:  # fmt: skip
        self._out, self._err, self._json = out, err, json_out
        self._meta, self._tuple, self._width = meta, tuple_, max(4, node_width)
        self._lock = threading.Lock()
        self._header_done = False
        self.events = 0

    def header(self) -> str:
        parts = [f"{'NODE':<{self._width}} {'SKB':<18} {'CPU':<3} {'PROCESS':<16}"]
        if self._meta:
            parts.append(f" {'NETNS':<10} {'MARK/x':<8} {'IFACE':<16} {'PROTO':<6} {'MTU':<5} {'LEN':<5}")
        if self._tuple:
            parts.append(f" {'TUPLE':<48}")
        parts.append(" FUNC")
        return "".join(parts)

    def line(self, node: str, line: str) -> None:
        text = line.rstrip("\r\n")
        obj: Any = None
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
        with self._lock:
            if not isinstance(obj, dict):
                if text:
                    self._err.write(f"[{node}] {text}\n")
                    self._err.flush()
                return
            if self._json:
                self._out.write(_encoder.encode({**obj, "node": node}) + "\n")
            else:
                if not self._header_done:
                    self._out.write(self.header() + "\n")
                    self._header_done = True
                self._out.write(self.text(node, obj) + "\n")
            self._out.flush()
            self.events += 1

    def text(self, node: str, ev: dict[str, Any]) -> str:
        if "func" not in ev:
            return f"{node:<{self._width}} {_encoder.encode(ev)}"
        parts = [f"{node:<{self._width}} {ev.get('skb', ''):<18} {ev.get('cpu', 0):<3} {ev.get('process', ''):<16}"]
        if self._meta:
            parts.append(
                f" {ev.get('netns', 0):<10} {int(ev.get('mark', 0)):<8x} {ev.get('iface', '0'):>16}"
                f" 0x{int(ev.get('proto', 0)):04x} {ev.get('mtu', 0):<5} {ev.get('len', 0):<5}"
            )
        if self._tuple:
            parts.append(f" {_tuple(ev.get('tuple')):<48}")
        parts.append(f" {ev['func']}")
        extra = [str(ev[k]).rstrip("\n") for k in ("stack", "sk_buff", "skb_shared_info") if ev.get(k)]
        return "".join(parts) + "".join("\n" + e for e in extra)


def _tuple(t: object) -> str:
    """pwru's text tuple: ``SADDR:SPORT->DADDR:DPORT(PROTO)`` (IPv6 addresses in brackets), ``-`` without one."""
    if not isinstance(t, dict) or "saddr" not in t:
        return "-"

    def end(addr: str, port: object) -> str:
        a = f"[{addr}]" if ":" in addr else addr
        return f"{a}:{port}" if port else a

    src, dst = end(str(t["saddr"]), t.get("sport")), end(str(t.get("daddr", "")), t.get("dport"))
    proto = t.get("proto", 0)
    return f"{src}->{dst}({fields.l4_name(proto) if isinstance(proto, int) else proto})"
