"""pwru's text columns: ``SKB CPU PROCESS [TIMESTAMP] NETNS MARK/x IFACE PROTO MTU LEN TUPLE FUNC [CALLER]``.

Widths follow pwru: fixed for the leading columns; TUPLE (and FUNC when CALLER follows it) padded to the
widest value seen so far, so columns stay aligned as the trace goes on. A kfree_skb drop location is shown
after the function as ``at symbol+0xNN``. Stack frames (--output-stack) follow on their own lines.
"""

from __future__ import annotations

from pwru.config import Config
from pwru.event import Event
from pwru.output import fields
from pwru.output.names import Names, sanitize


def _center(text: str, width: int) -> str:
    if len(text) >= width:
        return text
    left = (width - len(text)) // 2
    return " " * left + text + " " * (width - len(text) - left)


class TextFormatter:
    """Formats events as pwru's text lines."""

    def __init__(self, config: Config, names: Names) -> None:
        self._config = config
        self._names = names
        self._ts = fields.Timestamps(config.timestamp)
        self._tuple_width = 0
        self._func_width = 0

    def header(self) -> str:
        """The column header line (no trailing newline)."""
        c = self._config
        parts: list[str] = []
        if c.timestamp == "absolute":
            parts.append(f"{'TIME':<23} ")
        parts.append(f"{'SKB':<18} {'CPU':<3} {'PROCESS':<16}")
        if c.timestamp != "none":
            parts.append(f" {'TIMESTAMP':<16}")
        if c.output_meta:
            parts.append(
                f" {'NETNS':<10} {'MARK/x':<8} {_center('IFACE', fields.IFACE_WIDTH):>16}"
                f" {'PROTO':<6} {'MTU':<5} {'LEN':<5}"
            )
        if c.output_tuple:
            parts.append(" TUPLE")
        parts.append(" FUNC")
        if c.output_caller:
            parts.append(" CALLER")
        return "".join(parts)

    def format(self, event: Event) -> str:
        """One event as a line (plus one line per stack frame), without a trailing newline."""
        c = self._config
        names = self._names
        parts: list[str] = []
        if c.timestamp == "absolute":
            parts.append(f"{self._ts.wall_clock(event):<23} ")
        process = names.process(event.pid, event.comm)
        parts.append(f"{event.skb:#x}".ljust(18) + f" {event.cpu:<3} {process:<16}")
        if c.timestamp != "none":
            parts.append(f" {self._ts.value(event):<16}")
        if c.output_meta:
            iface = _center(fields.iface_text(event), fields.IFACE_WIDTH)
            parts.append(
                f" {event.netns:<10} {event.mark:<8x} {iface:>16}"
                f" 0x{event.protocol:04x} {event.mtu:<5} {event.len:<5}"
            )
        if c.output_tuple:
            tup = fields.tuple_text(event, c.output_tcp_flags)
            self._tuple_width = max(self._tuple_width, len(tup))
            parts.append(f" {tup:<{self._tuple_width}}")
        func = fields.func_text(event, names)
        location = fields.location_text(event, names)
        if location:
            func = f"{func} at {location}"
        if c.output_caller:
            self._func_width = max(self._func_width, len(func))
            caller = sanitize(names.symbol(event.caller)) if event.caller else "-"
            parts.append(f" {func:<{self._func_width}} {caller}")
        else:
            parts.append(f" {func}")
        line = "".join(parts)
        if c.output_stack and event.stack_id >= 0:
            frames = [sanitize(names.symbol(a)) for a in names.stack(event.stack_id) if a]
            if frames:
                line += "\n" + "\n".join(frames)
        return line
