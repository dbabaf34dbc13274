"""Output: events -> text columns or JSON lines -> standard output or a rotating file.

Typical use by the run loop::

    formatter = make_formatter(config, names)
    sink = open_sink(config)
    if formatter.header():
        sink.write_lines([formatter.header()])
    sink.write_lines(formatter.format_records(records, decoder))  # or [formatter.format(e) for e in events]
    ...
    sink.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pwru.config import Config
from pwru.event import Buffer, Event, EventDecoder
from pwru.output.json import JsonFormatter
from pwru.output.names import Names, ProcessNames, sanitize
from pwru.output.sink import RotatingFileSink, Sink, StdoutSink, open_sink
from pwru.output.text import TextFormatter


class Formatter(Protocol):
    """Turns events into output lines."""

    def header(self) -> str:
        """A header line, or an empty string when the format has none."""
        ...

    def format(self, event: Event) -> str:
        """One event as text without a trailing newline (it may span lines, e.g. stacks)."""
        ...

    def format_records(self, records: Sequence[Buffer], decoder: EventDecoder) -> list[str]:
        """Raw ring-buffer records as lines, the same as ``format(decoder.decode(r))`` for each, faster."""
        ...


def make_formatter(config: Config, names: Names) -> Formatter:
    """The formatter --output-json asks for."""
    if config.output_json:
        return JsonFormatter(config, names)
    return TextFormatter(config, names)


__all__ = [
    "Formatter",
    "JsonFormatter",
    "Names",
    "ProcessNames",
    "RotatingFileSink",
    "Sink",
    "StdoutSink",
    "TextFormatter",
    "make_formatter",
    "open_sink",
    "sanitize",
]
