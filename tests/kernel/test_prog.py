"""Programs against the real kernel: load, verifier log on refusal, info, test_run."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import R0, R1, R2, R6, AluOp, JmpOp, Size
from pwru.ebpf.collection import load_btf
from pwru.ebpf.errors import BPFError, VerifierError
from pwru.ebpf.maps import Map
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, MapType, ProgType

pytestmark = pytest.mark.root


def _ret(value: int) -> bytes:
    return asm.assemble([asm.mov_imm(R0, value), asm.exit_()])


def test_load_info_close() -> None:
    prog = Program.load(ProgType.SOCKET_FILTER, _ret(7), name="t_ret7")
    info = prog.info()
    assert info.id > 0 and info.name == "t_ret7" and info.type == ProgType.SOCKET_FILTER
    assert len(info.tag) == 16 and info.verified_insns >= 2
    fd = prog.fd
    prog.close()
    prog.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        _ = prog.fd


def test_refusal_is_a_verifier_error_naming_the_instruction() -> None:
    # Reads R2 which was never written: the verifier refuses and says why, at which instruction.
    bad = asm.assemble([asm.mov_imm(R0, 1), asm.mov_reg(R0, R2), asm.exit_()])
    with pytest.raises(VerifierError) as e:
        Program.load(ProgType.SOCKET_FILTER, bad, name="t_bad_r2")
    assert e.value.errno == errno.EACCES and e.value.program == "t_bad_r2"
    tail = e.value.log_tail(3)
    assert "1: (bf) r0 = r2" in tail and "R2 !read_ok" in tail
    assert str(e.value).startswith("verifier refused program t_bad_r2: ")
    assert isinstance(e.value, BPFError) and isinstance(e.value, OSError)  # what older callers catch


def test_missing_exit_log() -> None:
    with pytest.raises(VerifierError) as e:
        Program.load(ProgType.SOCKET_FILTER, asm.assemble([asm.mov_imm(R0, 0)]))
    assert e.value.errno == errno.EINVAL
    assert e.value.log  # "last insn is not an exit or jmp" or similar


def test_map_and_btf_failures_are_not_verifier_errors() -> None:
    with pytest.raises(BPFError) as e:
        Map.create(MapType.ARRAY, 4, 0, 1)  # an array of zero-byte values
    assert e.value.errno == errno.EINVAL and not isinstance(e.value, VerifierError)
    with pytest.raises(BPFError) as e:
        Map.create(0x7FFF, 4, 4, 1)  # no such map type
    assert not isinstance(e.value, VerifierError)
    with pytest.raises(BPFError) as e:
        load_btf(b"\x9f\xeb\x01\x00" + bytes(20))  # a BTF header that describes nothing sensible
    assert not isinstance(e.value, VerifierError)


def test_refusal_before_the_verifier_is_not_a_verifier_error() -> None:
    # Without a log level there is no log; EPERM/EINVAL without a log is the kernel, not the verifier.
    with pytest.raises(BPFError) as e:
        Program.load(0x7FFF, _ret(0))  # no such program type
    assert e.value.errno == errno.EINVAL and not isinstance(e.value, VerifierError)


def test_big_log_grows() -> None:
    # A long straight-line program with log level 2 (every instruction) overflows the first 1 MB buffer.
    body = [asm.mov_imm(R0, 0)]
    body += [asm.alu_imm(AluOp.ADD, R0, 1) for _ in range(30000)]
    body += [asm.mov_reg(R0, R2), asm.exit_()]
    with pytest.raises(BPFError) as e:
        Program.load(ProgType.SOCKET_FILTER, asm.assemble(body), log_level=2)
    assert e.value.errno == errno.EACCES
    assert len(e.value.log) > 1 << 20
    assert "R2 !read_ok" in e.value.log_tail(5)


def test_log_on_success() -> None:
    with Program.load(ProgType.SOCKET_FILTER, _ret(0), log_on_success=True, log_level=4) as p:
        assert "processed" in p.log


def test_test_run_packet_program() -> None:
    # return skb->len (first field of __sk_buff)
    insns = asm.assemble([asm.ldx(Size.W, R0, R1, 0), asm.exit_()])
    with Program.load(ProgType.SCHED_CLS, insns, name="t_len") as p:
        retval, data_out, _ = p.test_run(b"\xaa" * 64, repeat=10)
        assert retval == 64
        assert data_out == b"\xaa" * 64
        assert p.test_run(b"\x00" * 100).retval == 100


def test_test_run_repeats_the_program() -> None:
    # Each run adds 1 to a counter in an array map: ``repeat`` runs it that many times.
    with Map.create(MapType.ARRAY, 4, 8, 1) as m:
        insns = asm.assemble(
            [
                asm.st(Size.W, asm.R10, -4, 0),
                asm.ld_map_fd(R1, m.fd),
                asm.mov_reg(R2, asm.R10),
                asm.alu_imm(AluOp.ADD, R2, -4),
                asm.call("map_lookup_elem"),
                asm.jmp_imm(JmpOp.JEQ, R0, 0, "out"),
                asm.mov_imm(R1, 1),
                asm.atomic(Size.DW, asm.AtomicOp.ADD, R0, 0, R1),
                asm.mov_imm(R0, 3).with_label("out"),
                asm.exit_(),
            ]
        )
        with Program.load(ProgType.SCHED_CLS, insns, name="t_count") as p:
            assert p.test_run(bytes(64), repeat=25).retval == 3
            assert m.lookup_u64(0) == 25
            p.test_run(bytes(64))
            assert m.lookup_u64(0) == 26


def test_test_run_raw_tp_ctx_and_map() -> None:
    # raw_tp: r0 = ctx[0] + ctx[1]; also store the sum in an array map element 0.
    with Map.create(MapType.ARRAY, 4, 8, 1) as m:
        insns = asm.assemble(
            [
                asm.ldx(Size.DW, R6, R1, 0),
                asm.ldx(Size.DW, R2, R1, 8),
                asm.alu_reg(AluOp.ADD, R6, R2),
                asm.st(Size.W, asm.R10, -4, 0),
                asm.ld_map_fd(R1, m.fd),
                asm.mov_reg(R2, asm.R10),
                asm.alu_imm(AluOp.ADD, R2, -4),
                asm.call("map_lookup_elem"),
                asm.jmp_imm(JmpOp.JEQ, R0, 0, "out"),
                asm.stx(Size.DW, R0, 0, R6),
                asm.mov_reg(R0, R6).with_label("out"),
                asm.exit_(),
            ]
        )
        with Program.load(ProgType.RAW_TRACEPOINT, insns) as p:
            assert m.info.id in p.info().map_ids
            res = p.test_run(ctx=struct.pack("<QQ", 40, 2))
            assert res.retval == 42 and res.data_out == b""
            assert m.lookup_u64(0) == 42


def test_fentry_load_refused_cleanly() -> None:
    # Locked-down kernels refuse tracing loads with EPERM; elsewhere a bogus BTF id is EINVAL/ESRCH.
    with pytest.raises(BPFError) as e:
        Program.load(
            ProgType.TRACING, _ret(0), expected_attach_type=AttachType.TRACE_FENTRY, attach_btf_id=1 << 30
        )
    assert e.value.errno in (errno.EPERM, errno.EINVAL, errno.ESRCH, errno.ENOENT)
    if e.value.errno == errno.EPERM:
        assert not isinstance(e.value, VerifierError)  # refused before the verifier ran


def test_bad_instruction_bytes() -> None:
    with pytest.raises(ValueError):
        Program.load(ProgType.SOCKET_FILTER, b"\x00" * 7)


def test_many_loads_leave_no_descriptor_behind() -> None:
    # The fentry backend loads the same instructions ~1,500 times; each close must release its fd.
    insns = _ret(0)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        Program.load(ProgType.SOCKET_FILTER, insns).close()
    assert len(os.listdir("/proc/self/fd")) == before
