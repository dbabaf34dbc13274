"""pwru.ebpf.asm: encoding round trips for every opcode class, disassembly text, label resolution."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import (
    AluOp,
    AsmError,
    AtomicOp,
    Class,
    Instruction,
    JmpOp,
    LdImm64Src,
    Reg,
    Size,
)

R0, R1, R2, R3, R6, R10 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R6, Reg.R10


def _every_kind() -> list[Instruction]:
    insns: list[Instruction] = []
    for bits in (32, 64):
        for op in AluOp:
            if op in (AluOp.NEG, AluOp.END):
                continue
            insns.append(asm.alu_imm(op, R1, -7, bits=bits))
            insns.append(asm.alu_reg(op, R1, R2, bits=bits))
        insns.append(asm.neg(R3, bits=bits))
        for op in JmpOp:
            if op in (JmpOp.JA, JmpOp.CALL, JmpOp.EXIT):
                continue
            insns.append(asm.jmp_imm(op, R1, 0x7FFFFFFF, -3, bits=bits))
            insns.append(asm.jmp_reg(op, R1, R2, 12, bits=bits))
    for width in (16, 32, 64):
        insns += [asm.endian(R1, width, big=True), asm.endian(R1, width, big=False)]
        insns.append(Instruction(Class.ALU64 | AluOp.END, R1, 0, 0, width))  # bswap
    for size in Size:
        insns += [
            asm.ldx(size, R1, R6, 76),
            asm.st(size, R10, -8, 3),
            asm.stx(size, R10, -16, R1),
            Instruction(Class.LDX | size | asm.Mode.MEMSX, R1, R2, -4),
        ]
        if size != Size.DW:
            insns += [asm.ld_abs(size, 12), asm.ld_ind(size, R2, 14)]
    for op in (AtomicOp.ADD, AtomicOp.OR | AtomicOp.FETCH, AtomicOp.XCHG, AtomicOp.CMPXCHG):
        insns += [asm.atomic(Size.DW, op, R1, 8, R2), asm.atomic(Size.W, op, R1, -8, R2)]
    insns += [
        asm.mov_imm(R0, -1),
        asm.mov_reg(R1, R2, bits=32),
        Instruction(Class.ALU64 | AluOp.MOV | asm.Source.X, R1, R2, 8),  # movsx
        Instruction(Class.ALU64 | AluOp.DIV | asm.Source.X, R1, R2, 1),  # sdiv
        asm.ja(-1),
        Instruction(Class.JMP32 | JmpOp.JA, 0, 0, 0, 100000),  # gotol
        asm.call(113),
        asm.call_pseudo(4),
        asm.call_kfunc(4242),
        asm.ld_imm64(R1, 0xFFFFFFFF00000001),
        asm.ld_imm64(R1, -1),
        asm.ld_map_fd(R1, 7),
        asm.ld_map_value(R2, 7, 24),
        asm.ld_btf_id(R3, 99),
        asm.ld_func(R1, -20),
        asm.exit_(),
    ]
    return insns


def test_round_trip_every_kind() -> None:
    insns = _every_kind()
    assert {i.cls for i in insns} == set(Class)
    data = asm.encode(insns)
    assert len(data) == 8 * asm.slot_count(insns)
    back = asm.decode(data)
    assert back == insns
    assert asm.encode(back) == data
    for insn in insns:
        assert "invalid" not in str(insn), str(insn)


def test_encoding_layout_little_endian() -> None:
    raw = asm.ldx(Size.W, R1, R6, 76).encode()
    assert raw == struct.pack("<BBhi", 0x61, (6 << 4) | 1, 76, 0)
    wide = asm.ld_imm64(R1, 0x1122334455667788).encode()
    assert wide == bytes.fromhex("18010000 88776655 00000000 44332211".replace(" ", ""))
    assert asm.ld_map_fd(R1, 5).encode()[1] == (1 << 4) | 1


def test_decode_rejects_malformed() -> None:
    with pytest.raises(AsmError, match="multiple of 8"):
        asm.decode(b"\x00" * 7)
    with pytest.raises(AsmError, match="second slot"):
        asm.decode(asm.ld_imm64(R1, 1).encode()[:8])
    bad = bytearray(asm.ld_imm64(R1, 1).encode())
    bad[8] = 0x07
    with pytest.raises(AsmError, match="malformed"):
        asm.decode(bytes(bad))


def test_field_range_checks() -> None:
    with pytest.raises(AsmError):
        asm.mov_imm(R1, 1 << 32)
    with pytest.raises(AsmError):
        asm.ldx(Size.W, R1, R2, 1 << 16)
    assert asm.mov_imm(R1, 0xFFFFFFFF).imm == -1  # normalised to signed 32 bits
    assert asm.ld_imm64(R1, -1).imm == (1 << 64) - 1  # normalised to unsigned 64 bits


@pytest.mark.parametrize(
    ("insn", "text"),
    [
        (asm.ldx(Size.W, R1, R6, 76), "r1 = *(u32 *)(r6 + 76)"),
        (asm.stx(Size.DW, R10, -8, R1), "*(u64 *)(r10 - 8) = r1"),
        (asm.st(Size.H, R10, -2, 5), "*(u16 *)(r10 - 2) = 5"),
        (asm.jmp_reg(JmpOp.JGT, R2, R3, 5), "if r2 > r3 goto +5"),
        (asm.jmp_imm(JmpOp.JSET, R1, 4, -2, bits=32), "if w1 & 0x4 goto -2"),
        (asm.jmp_imm(JmpOp.JSLT, R1, -1, 0), "if r1 s< -1 goto +0"),
        (asm.call("bpf_probe_read_kernel"), "call bpf_probe_read_kernel#113"),
        (asm.call(1), "call bpf_map_lookup_elem#1"),
        (asm.call_pseudo(-9), "call pc-9"),
        (asm.ld_imm64(R1, 0xDEADBEEF00), "r1 = 0xdeadbeef00 ll"),
        (asm.ld_map_fd(R1, 3), "r1 = map_fd(3) ll"),
        (asm.ld_map_value(R1, 3, 16), "r1 = map_value(3) + 16 ll"),
        (asm.mov_imm(R0, 0), "r0 = 0"),
        (asm.mov_reg(R1, R2, bits=32), "w1 = w2"),
        (asm.alu_imm(AluOp.AND, R1, 0xF0), "r1 &= 0xf0"),
        (asm.alu_imm(AluOp.ARSH, R1, 3, bits=32), "w1 s>>= 3"),
        (asm.neg(R1), "r1 = -r1"),
        (asm.endian(R1, 16), "r1 = be16 r1"),
        (asm.ld_abs(Size.H, 12), "r0 = *(u16 *)skb[12]"),
        (asm.ld_ind(Size.B, R1, 14), "r0 = *(u8 *)skb[r1 + 14]"),
        (asm.atomic(Size.DW, AtomicOp.ADD, R1, 0, R2), "lock *(u64 *)(r1 + 0) += r2"),
        (asm.ja(3), "goto +3"),
        (asm.exit_(), "exit"),
    ],
)
def test_disasm_text(insn: Instruction, text: str) -> None:
    assert str(insn) == text


def test_helper_names() -> None:
    assert asm.helper_id("probe_read_kernel") == 113
    assert asm.helper_id("bpf_ringbuf_output") == 130
    assert asm.helper_name(6) == "trace_printk"
    assert asm.helper_name(100000) is None
    with pytest.raises(AsmError, match="unknown helper"):
        asm.helper_id("no_such_helper")


def test_labels_count_ld_imm64_as_two_slots() -> None:
    prog = [
        asm.jmp_imm(JmpOp.JEQ, R1, 0, "out"),
        asm.ld_imm64(R2, 1 << 40),
        asm.ld_map_fd(R3, 4),
        asm.ja("out"),
        asm.mov_imm(R0, 1).with_label("back"),
        asm.exit_().with_label("out"),
        asm.jmp_imm(JmpOp.JNE, R0, 0, "back"),
    ]
    resolved = asm.resolve(prog)
    assert [i.off for i in resolved if i.is_jump] == [6, 1, -3]
    assert asm.slot_offsets(prog) == [0, 1, 3, 5, 6, 7, 8, 9]
    assert asm.slot_count(prog) == 9
    assert asm.instruction_at_slot(prog, 5) == 3
    with pytest.raises(AsmError, match="not the start"):
        asm.instruction_at_slot(prog, 2)
    data = asm.assemble(prog)
    assert asm.decode(data)[0].off == 6
    assert "<out>" in asm.disasm(prog) and "out:" in asm.disasm(prog)


def test_call_and_func_targets_resolve_into_imm() -> None:
    prog = [
        asm.call_pseudo("sub"),
        asm.ld_func(R1, "sub"),
        asm.exit_(),
        asm.mov_imm(R0, 0).with_label("sub"),
        asm.exit_(),
    ]
    resolved = asm.resolve(prog)
    assert resolved[0].imm == 3  # slots 1..3 skipped: ld_func is two slots, exit one
    assert resolved[1].imm == 2  # as the verifier reads it: target slot = own first slot + imm + 1
    assert resolved[1].src == LdImm64Src.FUNC


def test_unknown_and_duplicate_labels() -> None:
    with pytest.raises(AsmError, match="unknown label 'nowhere'"):
        asm.assemble([asm.ja("nowhere"), asm.exit_()])
    with pytest.raises(AsmError, match="defined twice"):
        asm.assemble([asm.exit_().with_label("a"), asm.exit_().with_label("a")])
    with pytest.raises(AsmError, match="cannot have a target"):
        asm.resolve([dataclasses.replace(asm.mov_imm(R0, 0), target="x"), asm.exit_().with_label("x")])


def test_out_of_range_jump() -> None:
    prog = [asm.ja("far")] + [asm.mov_imm(R0, 0)] * 40000 + [asm.exit_().with_label("far")]
    with pytest.raises(AsmError, match="beyond a 16-bit offset"):
        asm.assemble(prog)
    prog[0] = Instruction(Class.JMP32 | JmpOp.JA, target="far")  # gotol reaches
    assert asm.resolve(prog)[0].imm == 40000
