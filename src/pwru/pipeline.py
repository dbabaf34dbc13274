"""The record pipeline: reader -> decode -> stages -> outputs.

The run loop hands each batch of raw records read from the ring buffer to :meth:`Pipeline.feed`. The batch
carries the object's :class:`~pwru.records.Schema` (record types and layouts from BTF) so every stage and
output decodes what it needs, and only that. Stages run in order (see :mod:`pwru.stages`); then every output
consumes the batch. An output is a formatter and a sink (:class:`LineOutput`); binary outputs (pcapng) will
write bytes to their sink the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pwru.output import Formatter
from pwru.output.sink import Sink
from pwru.records import Batch, Schema
from pwru.stages import Stage


class Output(Protocol):
    """The end of the pipeline: consumes batches."""

    def start(self) -> None:
        """Before the first batch (a header line, a file header)."""
        ...

    def consume(self, batch: Batch) -> None:
        """One batch, after every stage."""
        ...

    def idle(self) -> None:
        """The reader found nothing to read: hand buffered output on."""
        ...

    def close(self) -> None:
        """The end of the run; idempotent."""
        ...


class LineOutput:
    """Text or JSON lines: a formatter's lines into a sink."""

    def __init__(self, formatter: Formatter, sink: Sink) -> None:
        self.formatter = formatter
        self.sink = sink

    def start(self) -> None:
        header = self.formatter.header()
        if header:
            self.sink.write_lines([header])

    def consume(self, batch: Batch) -> None:
        lines = self.formatter.format_batch(batch)
        if lines:
            self.sink.write_lines(lines)

    def idle(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


class Pipeline:
    """Stages and outputs for one run; counts the event records that reached the outputs."""

    def __init__(self, schema: Schema, stages: Sequence[Stage], outputs: Sequence[Output]) -> None:
        self.schema = schema
        self.stages = list(stages)
        self.outputs = list(outputs)
        self.events = 0  # event records handed to the outputs

    def start(self) -> None:
        for out in self.outputs:
            out.start()

    def feed(self, records: list[bytes]) -> None:
        """One batch of raw records, in ring order."""
        self._deliver(Batch(self.schema, records), 0)

    def _deliver(self, batch: Batch, first_stage: int) -> None:
        for stage in self.stages[first_stage:]:
            batch = stage.process(batch)
        if not batch.records:
            return
        self.events += len(batch.of_type("event"))
        for out in self.outputs:
            out.consume(batch)

    def idle(self) -> None:
        for out in self.outputs:
            out.idle()

    def close(self) -> None:
        """Flush what stages hold back (each through the stages after it), then close the outputs."""
        try:
            for i, stage in enumerate(self.stages):
                held = stage.finish()
                if held is not None and held.records:
                    self._deliver(held, i + 1)
        finally:
            for out in self.outputs:
                out.close()
