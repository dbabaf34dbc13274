"""Stages: what happens to a batch of records between the reader and the outputs.

A stage takes a :class:`~pwru.records.Batch` and returns one (the same or a new one): it may drop records,
add what it learns to the batch (the stack stage adds frames), or keep state across batches (tracking,
journeys and summaries will be stages). ``finish()`` is called once at the end, for stages that hold records
back. Stages may call into the kernel (map reads); outputs never do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pwru.ebpf.kallsyms import Kallsyms, Symbol
from pwru.records import Batch

#: Functions through which the kernel runs a BPF program; they sit on top of every stack the program takes.
BPF_FRAME_PREFIXES = ("bpf_trace_run", "__bpf_trace_", "bpf_trampoline", "__bpf_prog_enter", "bpf_dispatcher")


class Stage(Protocol):
    """One step of the record pipeline."""

    def process(self, batch: Batch) -> Batch:
        """The batch after this stage."""
        ...

    def finish(self) -> Batch | None:
        """Records held back until the end (or None); called once when the run stops."""
        ...


def is_bpf_machinery(sym: Symbol | None) -> bool:
    """Whether a stack frame belongs to a BPF program or the code that runs one (not to the traced kernel)."""
    return sym is not None and (sym.module == "bpf" or sym.name.startswith(BPF_FRAME_PREFIXES))


def trim_bpf_frames(frames: list[int], lookup: Callable[[int], Symbol | None]) -> tuple[int, ...]:
    """A kernel stack starting at the traced function: the frames of pwru's own program and of the BPF machinery
    that called it (``bpf_trace_run*``, trampolines, ``[bpf]`` symbols) are dropped from the top. An unknown
    address ends the trimming (it is not known to be machinery)."""
    for i, addr in enumerate(frames):
        if not is_bpf_machinery(lookup(addr)):
            return tuple(frames[i:])
    return tuple(frames)


class StackStage:
    """--output-stack: reads each event's stack from the stack map into ``batch.stacks`` (trimmed)."""

    def __init__(self, read_stack: Callable[[int], list[int]], ksyms: Kallsyms) -> None:
        self._read = read_stack
        self._lookup = ksyms.lookup
        self._stack_id: Callable[[bytes], tuple[int, ...]] | None = None

    def process(self, batch: Batch) -> Batch:
        if self._stack_id is None:
            self._stack_id = batch.schema.layout("event").unpacker("stack_id")
        unpack, stacks = self._stack_id, batch.stacks
        for buf in batch.of_type("event"):
            (stack_id,) = unpack(buf)
            if stack_id >= 0 and stack_id not in stacks:
                stacks[stack_id] = trim_bpf_frames(self._read(stack_id), self._lookup)
        return batch

    def finish(self) -> Batch | None:
        return None


class LimitStage:
    """--output-limit-lines: passes the first ``limit`` event records, then nothing; ``done`` once reached."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.passed = 0

    @property
    def done(self) -> bool:
        return self.passed >= self.limit

    def process(self, batch: Batch) -> Batch:
        event_type = batch.schema.type_id("event")
        if batch.schema.only_type == event_type:  # nothing but events: keep the first ones
            batch.records = batch.records[: max(0, self.limit - self.passed)]
            self.passed += len(batch.records)
            return batch
        type_of = batch.schema.type_of
        kept: list[bytes] = []
        for buf in batch.records:
            if type_of(buf)[0] == event_type:
                if self.passed >= self.limit:
                    continue
                self.passed += 1
            kept.append(buf)
        batch.records = kept
        return batch

    def finish(self) -> Batch | None:
        return None
