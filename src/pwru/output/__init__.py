"""Output: batches of records -> text columns or JSON lines -> standard output or a rotating file.

Nothing here calls into the kernel: what an output shows beyond the records themselves (stack frames) has
been added to the :class:`~pwru.records.Batch` by a stage before. Typical use (see :mod:`pwru.pipeline`)::

    formatter = make_formatter(config, names)
    sink = open_sink(config)
    if formatter.header():
        sink.write_lines([formatter.header()])
    sink.write_lines(formatter.format_batch(batch))
    ...
    sink.close()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pwru.config import Config
from pwru.output.json import JsonFormatter
from pwru.output.names import Names, ProcessNames, sanitize
from pwru.output.sink import RotatingFileSink, Sink, StdoutSink, open_sink
from pwru.output.text import TextFormatter
from pwru.records import Batch

if TYPE_CHECKING:  # the output layer loads no kernel-side module (pwru.cexpr emits eBPF)
    from pwru.cexpr import MetadataField


class Formatter(Protocol):
    """Turns batches of records into output lines."""

    def header(self) -> str:
        """A header line, or an empty string when the format has none."""
        ...

    def format_batch(self, batch: Batch) -> list[str]:
        """The batch's records as text, one string per event without a trailing newline (a string may span
        lines, e.g. stacks)."""
        ...


def make_formatter(
    config: Config,
    names: Names,
    netns_names: Callable[[int], str] | None = None,
    metadata: Sequence[MetadataField] = (),
) -> Formatter:
    """The formatter --output-json asks for; ``netns_names`` (inode -> name, "" when unknown) for
    --output-netns-names; ``metadata``: the --output-skb-metadata fields events carry."""
    if config.output.json:
        return JsonFormatter(config.output, names, netns_names, metadata)
    return TextFormatter(config.output, names, netns_names, metadata)


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
