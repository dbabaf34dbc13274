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
        self._event_type = -1

    def process(self, batch: Batch) -> Batch:
        if self._stack_id is None:
            self._stack_id = batch.schema.layout("event").unpacker("type", "stack_id")
            self._event_type = batch.schema.type_id("event")
        unpack, stacks = self._stack_id, batch.stacks
        for buf in batch.records:
            rtype, stack_id = unpack(buf)
            if rtype == self._event_type and stack_id >= 0 and stack_id not in stacks:
                stacks[stack_id] = trim_bpf_frames(self._read(stack_id), self._lookup)
        return batch

    def finish(self) -> Batch | None:
        return None


class LimitStage:
    """--output-limit-lines: passes the first ``limit`` event records, then nothing; ``done`` once reached."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.passed = 0
        self._type_of: Callable[[bytes], tuple[int, ...]] | None = None

    @property
    def done(self) -> bool:
        return self.passed >= self.limit

    def process(self, batch: Batch) -> Batch:
        event_type = batch.schema.type_id("event")
        if self._type_of is None:
            self._type_of = batch.schema.header.unpacker("type")
        type_of = self._type_of
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
