"""The record pipeline without a kernel: stages (stack frames, line limit), outputs, and the run loop's read
loop (drain after a stop, the line limit). Also "how to add an output": a binary output writing bytes to a
sink beside the text one (``test_a_new_output_consumes_batches``)."""

from __future__ import annotations

from typing import Any

from pwru.config import OutputConfig
from pwru.ebpf.kallsyms import Symbol
from pwru.output import TextFormatter
from pwru.pipeline import LineOutput, Pipeline
from pwru.records import Batch
from pwru.run import read_loop
from pwru.stages import LimitStage, StackStage, trim_bpf_frames
from tests.unit.test_output_text import FakeNames, make_event, schema, two_type_schema


def records(n: int, **kw: Any) -> list[bytes]:
    layout = schema().layout("event")
    return [layout.encode(make_event(skb=0x1000 + i, **kw)) for i in range(n)]


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.data = b""
        self.flushes = 0
        self.closed = False

    def write_lines(self, lines: Any) -> None:
        self.lines += lines

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class FakeKsyms:
    table = {0x10: Symbol("bpf_prog_1234_tp_skb", 0, "bpf"), 0x20: Symbol("bpf_trace_run3", 0),
             0x30: Symbol("__udp4_lib_rcv", 0), 0x40: Symbol("ip_rcv", 0)}  # fmt: skip

    def lookup(self, addr: int) -> Symbol | None:
        return self.table.get(addr)


def test_trim_bpf_frames() -> None:
    lookup = FakeKsyms().lookup
    assert trim_bpf_frames([0x10, 0x20, 0x30, 0x40], lookup) == (0x30, 0x40)
    assert trim_bpf_frames([0x30, 0x10], lookup) == (0x30, 0x10)  # only from the top
    assert trim_bpf_frames([0x10, 0x99, 0x30], lookup) == (0x99, 0x30)  # an unknown address is not machinery
    assert trim_bpf_frames([0x10, 0x20], lookup) == (0x10, 0x20)  # nothing else: keep all


def test_stack_stage_reads_each_stack_once_and_outputs_only_format() -> None:
    reads: list[int] = []

    def read(stack_id: int) -> list[int]:
        reads.append(stack_id)
        return [0x10, 0x20, 0x30, 0x40]

    stage = StackStage(read, FakeKsyms())  # type: ignore[arg-type]
    batch = stage.process(Batch(schema(), records(3, stack_id=4) + records(1, stack_id=-1)))
    assert reads == [4]
    assert batch.stacks == {4: (0x30, 0x40)}
    lines = TextFormatter(OutputConfig(stack=True, meta=False, tuple=False), FakeNames()).format_batch(batch)
    assert lines[0].split("\n")[1:] == ["0x30", "0x40"]  # FakeNames.symbol: unknown addresses in hex
    assert "\n" not in lines[3]


def test_limit_stage_passes_the_first_n_events() -> None:
    stage = LimitStage(5)
    first = stage.process(Batch(schema(), records(3)))
    assert len(first.records) == 3 and not stage.done
    second = stage.process(Batch(schema(), records(4)))
    assert len(second.records) == 2 and stage.done
    assert stage.process(Batch(schema(), records(4))).records == []


def test_limit_stage_counts_only_events_and_keeps_other_records() -> None:
    layout = schema().layout("event")
    other = layout.encode({**make_event(), "type": 2})
    stage = LimitStage(2)
    batch = stage.process(Batch(two_type_schema(), [other, *records(3), other]))
    assert batch.records == [other, *records(2), other]
    assert stage.done and len(batch.of_type("event")) == 2


def test_pipeline_counts_events_and_closes_outputs() -> None:
    sink = ListSink()
    out = LineOutput(TextFormatter(OutputConfig(), FakeNames()), sink)
    p = Pipeline(schema(), [LimitStage(4)], [out])
    p.start()
    p.feed(records(3))
    p.idle()
    p.feed(records(3))
    p.close()
    assert p.events == 4
    assert sink.lines[0].startswith("SKB ") and len(sink.lines) == 5
    assert sink.flushes == 1 and sink.closed


class HoldBack:
    """A stage that keeps every record until the end (as a journey stage will)."""

    def __init__(self) -> None:
        self.held: list[bytes] = []

    def process(self, batch: Batch) -> Batch:
        self.held += batch.records
        return Batch(batch.schema, [])

    def finish(self) -> Batch | None:
        return Batch(schema(), self.held)


class BytesOutput:
    """How to add an output: start, consume batches, idle, close; here the skb addresses as raw bytes."""

    def __init__(self, sink: ListSink) -> None:
        self.sink = sink

    def start(self) -> None:
        self.sink.write(b"HDR")

    def consume(self, batch: Batch) -> None:
        skb = batch.schema.layout("event").unpacker("skb")
        self.sink.write(b"".join(skb(r)[0].to_bytes(8, "little") for r in batch.records))

    def idle(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


def test_a_new_output_consumes_batches_and_held_records_pass_later_stages() -> None:
    text, raw = ListSink(), ListSink()
    p = Pipeline(
        schema(), [HoldBack(), LimitStage(2)],
        [LineOutput(TextFormatter(OutputConfig(meta=False, tuple=False), FakeNames()), text), BytesOutput(raw)],
    )  # fmt: skip
    p.start()
    p.feed(records(3))
    assert p.events == 0 and len(text.lines) == 1  # header only: everything is held back
    p.close()
    assert p.events == 2  # the limit after the holding stage still applies
    assert raw.data == b"HDR" + (0x1000).to_bytes(8, "little") + (0x1001).to_bytes(8, "little")
    assert len(text.lines) == 3 and text.closed and raw.closed


class FakeSource:
    def __init__(self, batches: list[list[bytes]], size: int) -> None:
        self.batches = batches
        self.size = size
        self.waits = 0

    def read_batch(self, limit: int) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def wait(self, timeout: float) -> None:
        self.waits += 1


def _pipeline() -> Pipeline:
    return Pipeline(schema(), [], [LineOutput(TextFormatter(OutputConfig(), FakeNames()), ListSink())])


def test_read_loop_drains_at_most_one_ring_after_a_stop() -> None:
    size = schema().layout("event").size
    # the writer keeps the ring full: batches keep coming after the stop
    source = FakeSource([records(4) for _ in range(100)], size * 10)
    p = _pipeline()
    read_loop(source, p, lambda: True, None, size, batch=4)
    assert p.events == 10  # one ring's worth, not the 400 still coming


def test_read_loop_waits_when_idle_and_stops() -> None:
    size = schema().layout("event").size
    source = FakeSource([records(2), [], [], records(1)], size * 100)
    stopped = [False]

    def stop() -> bool:
        stopped[0] = stopped[0] or source.waits >= 3
        return stopped[0]

    p = _pipeline()
    read_loop(source, p, stop, None, size)
    assert p.events == 3 and source.waits == 3


def test_read_loop_ends_at_the_line_limit() -> None:
    size = schema().layout("event").size
    source = FakeSource([records(3) for _ in range(10)], size * 100)
    limit = LimitStage(7)
    p = Pipeline(schema(), [limit], [LineOutput(TextFormatter(OutputConfig(), FakeNames()), ListSink())])
    read_loop(source, p, lambda: False, limit, size)
    assert p.events == 7 and len(source.batches) == 7
