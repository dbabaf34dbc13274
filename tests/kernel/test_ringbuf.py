"""The ring buffer reader fed by a real program: order, content, discards, wrap-around, big batches and
epoll wake-ups. (Its speed is measured by bench/run.py, not by a test.)"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import R0, R1, R2, R3, R4, R7, R8, R10, AluOp, AtomicOp, JmpOp, Size
from pwru.ebpf.maps import Map
from pwru.ebpf.prog import Program
from pwru.ebpf.ringbuf import RingBufReader
from pwru.ebpf.syscall import MapType, ProgType

pytestmark = pytest.mark.root

RECORD = 40  # five u64: seq, seq+1, ..., seq+4


def producer_insns(seq: Map, out: Map, discard_every: int = 0, queue: bool = False) -> bytes:
    """A tc program: seq = counter++; write [seq..seq+4] to ``out`` (ring buffer, or queue map with
    ``queue``); every ``discard_every``-th record is reserved and discarded instead."""
    body = [
        asm.st(Size.W, R10, -44, 0),
        asm.ld_map_fd(R1, seq.fd),
        asm.mov_reg(R2, R10),
        asm.alu_imm(AluOp.ADD, R2, -44),
        asm.call("map_lookup_elem"),
        asm.jmp_imm(JmpOp.JEQ, R0, 0, "out"),
        asm.mov_imm(R7, 1),
        asm.atomic(Size.DW, AtomicOp.ADD | AtomicOp.FETCH, R0, 0, R7),  # r7 = old counter
    ]
    for i in range(5):
        body += [asm.mov_reg(R8, R7), asm.alu_imm(AluOp.ADD, R8, i), asm.stx(Size.DW, R10, -40 + 8 * i, R8)]
    if discard_every:
        body += [
            asm.mov_reg(R1, R7),
            asm.alu_imm(AluOp.MOD, R1, discard_every),
            asm.jmp_imm(JmpOp.JEQ, R1, 0, "discard"),
        ]
    if queue:
        body += [
            asm.ld_map_fd(R1, out.fd),
            asm.mov_reg(R2, R10),
            asm.alu_imm(AluOp.ADD, R2, -40),
            asm.mov_imm(R3, 0),
            asm.call("map_push_elem"),
        ]
    else:
        body += [
            asm.ld_map_fd(R1, out.fd),
            asm.mov_reg(R2, R10),
            asm.alu_imm(AluOp.ADD, R2, -40),
            asm.mov_imm(R3, RECORD),
            asm.mov_imm(R4, 0),
            asm.call("ringbuf_output"),
        ]
    if discard_every:
        body += [
            asm.ja("out"),
            asm.ld_map_fd(R1, out.fd).with_label("discard"),
            asm.mov_imm(R2, RECORD),
            asm.mov_imm(R3, 0),
            asm.call("ringbuf_reserve"),
            asm.jmp_imm(JmpOp.JEQ, R0, 0, "out"),
            asm.mov_reg(R1, R0),
            asm.mov_imm(R2, 0),
            asm.call("ringbuf_discard"),
        ]
    body += [asm.mov_imm(R0, 0).with_label("out"), asm.exit_()]
    return asm.assemble(body)


class Producer:
    def __init__(self, ring_size: int = 4096 * 4, discard_every: int = 0) -> None:
        self.seq = Map.create(MapType.ARRAY, 4, 8, 1)
        self.ring = Map.ringbuf(ring_size)
        self.prog = Program.load(ProgType.SCHED_CLS, producer_insns(self.seq, self.ring, discard_every))

    def produce(self, n: int) -> None:
        self.prog.test_run(b"\x00" * 64, repeat=n)

    def close(self) -> None:
        self.prog.close()
        self.ring.close()
        self.seq.close()


@pytest.fixture
def producer() -> Iterator[Producer]:
    p = Producer()
    yield p
    p.close()


def check(records: list[memoryview], first: int) -> int:
    for i, r in enumerate(records):
        vals = struct.unpack("<5Q", r)
        assert vals == tuple(first + i + k for k in range(5)), (i, vals)
    return first + len(records)


def test_empty_and_basic(producer: Producer) -> None:
    with RingBufReader(producer.ring) as rd:
        assert rd.read_batch() == []
        assert not rd.wait(0.01)
        producer.produce(10)
        assert rd.pending() == 10 * 48
        assert rd.wait(0)
        recs = rd.read_batch()
        assert len(recs) == 10 and all(len(r) == RECORD for r in recs)
        check(recs, 0)
        assert rd.pending() == 0 and rd.consumer_pos == 480
        assert rd.read_batch() == []
        rd.close()
        rd.close()
        with pytest.raises(ValueError):
            rd.read_batch()


def test_max_records_and_records_survive_reuse(producer: Producer) -> None:
    with RingBufReader(producer.ring) as rd:
        producer.produce(100)
        first = rd.read_batch(max_records=30)
        assert len(first) == 30 and rd.pending() == 70 * 48
        nxt = check(first, 0)
        nxt = check(rd.read_batch(), nxt)
        # Overwrite the whole ring several times: the records we hold are private copies.
        for _ in range(4):
            producer.produce(300)
            nxt = check(rd.read_batch(), nxt)
        check(first, 0)


def test_wrap_around_many_times(producer: Producer) -> None:
    with RingBufReader(producer.ring) as rd:
        nxt = 0
        for n in (7, 300, 250, 341, 1, 333, 299):  # 16 KB ring, 48-byte records: wraps mid-record
            producer.produce(n)
            recs = rd.read_batch()
            assert len(recs) == n
            nxt = check(recs, nxt)
        assert rd.consumer_pos > 4 * rd.size


def test_full_ring_drops_are_not_corruption(producer: Producer) -> None:
    with RingBufReader(producer.ring) as rd:
        producer.produce(1000)  # only 341 fit; the rest fail in the kernel
        recs = rd.read_batch()
        assert len(recs) == (16384 // 48)
        check(recs, 0)


def test_discarded_records_are_skipped() -> None:
    p = Producer(discard_every=3)
    try:
        with RingBufReader(p.ring) as rd:
            seen: list[int] = []
            for _ in range(5):
                p.produce(200)
                seen += [struct.unpack_from("<Q", r)[0] for r in rd.read_batch()]
            assert seen == [s for s in range(1000) if s % 3]
            assert rd.discarded == len([s for s in range(1000) if s % 3 == 0])
    finally:
        p.close()


def test_wait_wakes_up_on_data(producer: Producer) -> None:
    with RingBufReader(producer.ring) as rd:
        t = threading.Timer(0.1, producer.produce, args=(5,))
        t.start()
        try:
            assert rd.wait(30.0)  # woken by the data, not the timeout
        finally:
            t.join()
        assert check(rd.poll(0), 0) == 5
        assert rd.pending() == 0


def test_not_a_ring_buffer() -> None:
    with Map.create(MapType.ARRAY, 4, 4, 1) as m, pytest.raises(ValueError):
        RingBufReader(m)


def test_big_batch_delivers_every_record_in_order_like_a_queue() -> None:
    """20,000 records in one batch: exactly the records written, in order, the same as a queue map holds
    when the same program writes there instead."""
    n = 20000
    p = Producer(ring_size=1 << 21)
    try:
        with RingBufReader(p.ring) as rd:
            p.produce(n)
            ring = [bytes(r) for r in rd.read_batch()]
            assert rd.read_batch() == [] and rd.discarded == 0
    finally:
        p.close()
    assert len(ring) == n
    check([memoryview(r) for r in ring], 0)
    seq = Map.create(MapType.ARRAY, 4, 8, 1)
    q = Map.create(MapType.QUEUE, 0, RECORD, n)
    with seq, q, Program.load(ProgType.SCHED_CLS, producer_insns(seq, q, queue=True)) as prog:
        prog.test_run(b"\x00" * 64, repeat=n)
        queued = []
        while (v := q.pop()) is not None:
            queued.append(v)
    assert queued == ring
