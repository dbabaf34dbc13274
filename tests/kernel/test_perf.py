"""PerfReader fed by a real bpf_perf_event_output program: samples, order, loss counting, wake-ups."""

from __future__ import annotations

import struct
import threading

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import R0, R1, R2, R3, R4, R5, R6, R7, R8, R10, AluOp, AtomicOp, JmpOp, Size
from pwru.ebpf.maps import Map, possible_cpus
from pwru.ebpf.perf import PerfReader
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import MapType, ProgType

pytestmark = pytest.mark.root

RECORD = 40


def output_insns(seq: Map, events: Map) -> bytes:
    """tc program: s = counter++; perf_event_output(ctx, events, CURRENT_CPU, [s..s+4], 40)."""
    body = [
        asm.mov_reg(R6, R1),
        asm.st(Size.W, R10, -44, 0),
        asm.ld_map_fd(R1, seq.fd),
        asm.mov_reg(R2, R10),
        asm.alu_imm(AluOp.ADD, R2, -44),
        asm.call("map_lookup_elem"),
        asm.jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        asm.mov_imm(R7, 1),
        asm.atomic(Size.DW, AtomicOp.ADD | AtomicOp.FETCH, R0, 0, R7),
    ]
    for i in range(5):
        body += [asm.mov_reg(R8, R7), asm.alu_imm(AluOp.ADD, R8, i), asm.stx(Size.DW, R10, -40 + 8 * i, R8)]
    body += [
        asm.mov_reg(R1, R6),
        asm.ld_map_fd(R2, events.fd),
        asm.mov_imm(R3, -1, bits=32),  # BPF_F_CURRENT_CPU
        asm.mov_reg(R4, R10),
        asm.alu_imm(AluOp.ADD, R4, -40),
        asm.mov_imm(R5, RECORD),
        asm.call("perf_event_output"),
        asm.mov_imm(R0, 0).with_label("out"),
        asm.exit_(),
    ]
    return asm.assemble(body)


class Setup:
    def __init__(self, pages: int) -> None:
        self.seq = Map.create(MapType.ARRAY, 4, 8, 1)
        self.events = Map.create(MapType.PERF_EVENT_ARRAY, 4, 4, possible_cpus())
        self.prog = Program.load(ProgType.SCHED_CLS, output_insns(self.seq, self.events))
        self.reader = PerfReader(self.events, pages)

    def produce(self, n: int) -> None:
        self.prog.test_run(b"\x00" * 64, repeat=n)

    def close(self) -> None:
        self.reader.close()
        self.reader.close()
        self.prog.close()
        self.events.close()
        self.seq.close()


def seqs(records: list[memoryview]) -> list[int]:
    out = []
    for r in records:
        assert len(r) >= RECORD
        vals = struct.unpack_from("<5Q", r)
        assert vals == tuple(vals[0] + k for k in range(5))
        out.append(vals[0])
    return out


def test_samples_in_order_across_wraps() -> None:
    s = Setup(pages=2)
    try:
        assert s.reader.read_batch() == []
        assert not s.reader.wait(0.01)
        got: list[int] = []
        for n in (5, 100, 120, 130, 7, 140):  # 56-byte records in an 8 KB ring: wraps mid-record
            s.produce(n)
            assert s.reader.wait(1.0)
            got += seqs(s.reader.read_batch())
        assert got == list(range(502))
        assert s.reader.lost == 0
    finally:
        s.close()
    # The events were removed from the map before the map was closed.


def test_lost_samples_are_counted() -> None:
    s = Setup(pages=1)
    try:
        s.produce(1000)  # 4 KB holds about 73 samples
        first = seqs(s.reader.read_batch())
        assert 0 < len(first) < 1000
        s.produce(1)  # now there is room: the kernel writes a LOST record, then this sample
        more = seqs(s.reader.read_batch())
        assert more == [1000]
        assert len(first) + s.reader.lost == 1000
    finally:
        s.close()


def test_wait_wakes_up() -> None:
    s = Setup(pages=4)
    try:
        t = threading.Timer(0.1, s.produce, args=(3,))
        t.start()
        try:
            assert s.reader.wait(5.0)
        finally:
            t.join()
        assert seqs(s.reader.read_batch()) == [0, 1, 2]
    finally:
        s.close()


def test_rejects_wrong_arguments() -> None:
    with Map.create(MapType.ARRAY, 4, 4, 1) as m, pytest.raises(ValueError):
        PerfReader(m)
    with Map.create(MapType.PERF_EVENT_ARRAY, 4, 4, possible_cpus()) as m, pytest.raises(ValueError):
        PerfReader(m, pages_per_cpu=3)
