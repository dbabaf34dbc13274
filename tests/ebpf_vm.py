"""A small eBPF machine for the instructions the pcap translator emits, to run its bodies fast in tests.

A body is compiled once into Python functions, one per basic block (the translator's jumps all go forward, so
a block returns the index of the next); runs then cost microseconds, so the fuzzer can compare tens of
thousands of (expression, packet) verdicts with libpcap in CI time. The real kernel still runs a slice of them
(tests/kernel/test_filter_fuzz.py): this machine is checked against the kernel, not trusted alone.

It is strict where the kernel would be unsafe or the translator promised a check: a load or store outside the
packet, the stack or the skb raises :class:`Fault` (the verifier would refuse such a direct-mode body, and in
probe mode it means a missing bounds check); ``bpf_probe_read_kernel`` of an unmapped address returns -EFAULT
and zeroes its buffer, as the kernel's does. Helper calls scramble R1-R5, so a body relying on them after a
call is caught.

Supported: ALU and ALU64 (all operations but signed division and sign-extending moves), byte swaps to big
endian, JMP and JMP32 comparisons (unsigned and JSET), ``gotol``, LDX/ST/STX of 1-8 bytes, calls of helpers
7 (get_prandom_u32), 8 (get_smp_processor_id) and 113 (probe_read_kernel), exit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pwru.ebpf.asm import AluOp, Class, Instruction, JmpOp, Mode, Size, Source

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
EFAULT = 14
PACKET_BASE = 0x1000_0000_0000
SKB_BASE = 0x2000_0000_0000
STACK_BASE = 0x3000_0000_0000
STACK_SIZE = 512
SCRAMBLE = 0xDEAD_BEEF_0BAD_F00D


class Fault(Exception):
    """The body did something the kernel would not allow (or the translator promised not to do)."""


class Unsupported(Exception):
    """An instruction outside the subset this machine knows."""


@dataclass
class Memory:
    """Flat regions: the packet (read-only), the skb/context (read-only) and the stack."""

    regions: list[tuple[int, bytearray, bool]] = field(default_factory=list)  # (base, bytes, writable)

    def add(self, base: int, data: bytes | bytearray, writable: bool = False) -> None:
        self.regions.append((base, bytearray(data), writable))

    def find(self, addr: int, size: int, write: bool = False) -> tuple[bytearray, int] | None:
        for base, buf, writable in self.regions:
            if base <= addr and addr + size <= base + len(buf):
                if write and not writable:
                    return None
                return buf, addr - base
        return None

    def load(self, addr: int, size: int) -> int:
        hit = self.find(addr, size)
        if hit is None:
            raise Fault(f"load of {size} bytes at {addr:#x} outside memory")
        buf, off = hit
        return int.from_bytes(buf[off : off + size], "little")

    def store(self, addr: int, size: int, value: int) -> None:
        hit = self.find(addr, size, write=True)
        if hit is None:
            raise Fault(f"store of {size} bytes at {addr:#x} outside writable memory")
        buf, off = hit
        buf[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


@dataclass
class Env:
    """What one run sees: memory, and the values of the non-memory helpers."""

    mem: Memory
    cpu: int = 0
    random: int = 0x12345678
    steps: int = 0


def _sx32(v: int) -> int:
    """A 32-bit immediate sign-extended to 64 bits, as an unsigned 64-bit value."""
    return v & M64 if v >= 0 else (v + (1 << 64)) & M64


_ALU = {
    AluOp.ADD: "({a} + {b})",
    AluOp.SUB: "({a} - {b})",
    AluOp.MUL: "({a} * {b})",
    AluOp.OR: "({a} | {b})",
    AluOp.AND: "({a} & {b})",
    AluOp.XOR: "({a} ^ {b})",
    AluOp.LSH: "({a} << ({b} & {sm}))",
    AluOp.RSH: "({a} >> ({b} & {sm}))",
    AluOp.DIV: "({a} // {b} if {b} else 0)",
    AluOp.MOD: "({a} % {b} if {b} else {a})",
    AluOp.MOV: "{b}",
}
_CMP = {
    JmpOp.JEQ: "==",
    JmpOp.JNE: "!=",
    JmpOp.JGT: ">",
    JmpOp.JGE: ">=",
    JmpOp.JLT: "<",
    JmpOp.JLE: "<=",
}


def _helper(env: Env, r: list[int], helper: int) -> None:
    if helper == 113:  # bpf_probe_read_kernel(dst, size, src)
        dst, size, src = r[1], r[2] & M32, r[3]
        hit = env.mem.find(src, size)
        if hit is None:
            env.mem.store(dst, size, 0)
            r[0] = (-EFAULT) & M64
        else:
            buf, off = hit
            env.mem.store(dst, size, int.from_bytes(buf[off : off + size], "little"))
            r[0] = 0
    elif helper == 7:
        r[0] = env.random & M32
    elif helper == 8:
        r[0] = env.cpu & M32
    else:
        raise Unsupported(f"helper {helper}")
    for i in range(1, 6):
        r[i] = SCRAMBLE ^ i


class Program:
    """A translated body, compiled for this machine."""

    def __init__(self, body: Sequence[Instruction]) -> None:
        self.body = list(body)
        n = len(self.body)
        starts = {0}
        dest: dict[int, int] = {}
        for i, insn in enumerate(self.body):
            if insn.is_ld_imm64:
                raise Unsupported("ld_imm64")
            if insn.is_jump:
                rel = insn.imm if insn.is_long_jump else insn.off
                d = i + 1 + rel
                if not i < d <= n - 1:
                    raise Fault(f"jump at {i} to {d}: not forward inside the body")
                dest[i] = d
                starts.add(d)
                starts.add(i + 1)
            elif insn.is_exit or insn.is_call:
                starts.add(i + 1)
        order = sorted(s for s in starts if s < n)
        self.block_of = {s: k for k, s in enumerate(order)}
        src = ["def _make(Fault, _helper, M32, M64):"]
        for k, s in enumerate(order):
            end = order[k + 1] if k + 1 < len(order) else n
            src.append(f"  def b{k}(r, env):")
            src.append(f"    env.steps += {end - s}")
            for i in range(s, end):
                src.extend("    " + line for line in self._code(i, dest, end))
            last = self.body[end - 1]
            if not (last.is_exit or (last.is_jump and last.jmp_op == JmpOp.JA)) and not last.is_jump:
                if end >= n:
                    src.append("    raise Fault('fell off the end of the body')")
                else:
                    src.append(f"    return {self.block_of[end]}")
        src.append(f"  return [{', '.join(f'b{k}' for k in range(len(order)))}]")
        scope: dict[str, object] = {}
        exec(compile("\n".join(src), "<ebpf>", "exec"), scope)  # the code generated above
        make = scope["_make"]
        assert callable(make)
        self.blocks: list[Callable[[list[int], Env], int]] = make(Fault, _helper, M32, M64)

    def _code(self, i: int, dest: dict[int, int], end: int) -> list[str]:
        insn = self.body[i]
        cls, d, s, off, imm = insn.cls, insn.dst, insn.src, insn.off, insn.imm
        if cls in (Class.ALU, Class.ALU64):
            wide = cls == Class.ALU64
            mask, sm = ("M64", 63) if wide else ("M32", 31)
            op = insn.alu_op
            a = f"r[{d}]" if wide else f"(r[{d}] & M32)"
            if insn.source == Source.X:
                b = f"r[{s}]" if wide else f"(r[{s}] & M32)"
            else:
                b = str(_sx32(imm) if wide else imm & M32)
            if op == AluOp.NEG:
                return [f"r[{d}] = (-{a}) & {mask}"]
            if op == AluOp.END:
                if wide or insn.source != Source.X:
                    raise Unsupported(f"byte swap {insn}")
                nbytes = imm // 8
                return [f"r[{d}] = int.from_bytes((r[{d}] & {(1 << imm) - 1}).to_bytes({nbytes}, 'little'), 'big')"]
            if op not in _ALU or (op == AluOp.MOV and insn.off) or (op in (AluOp.DIV, AluOp.MOD) and insn.off):
                raise Unsupported(f"ALU {insn}")
            return [f"r[{d}] = {_ALU[op].format(a=a, b=b, sm=sm)} & {mask}"]
        if cls == Class.LDX and insn.mode == Mode.MEM:
            return [f"r[{d}] = env.mem.load((r[{s}] + {off}) & M64, {insn.size.nbytes})"]
        if cls == Class.ST and insn.mode == Mode.MEM:
            return [f"env.mem.store((r[{d}] + {off}) & M64, {insn.size.nbytes}, {imm & M64})"]
        if cls == Class.STX and insn.mode == Mode.MEM:
            return [f"env.mem.store((r[{d}] + {off}) & M64, {insn.size.nbytes}, r[{s}])"]
        if insn.is_exit:
            return ["return -1"]
        if insn.is_helper_call:
            return [f"_helper(env, r, {imm})"]
        if insn.is_jump:
            target = self.block_of[dest[i]]
            if insn.jmp_op == JmpOp.JA:
                return [f"return {target}"]
            wide = cls == Class.JMP
            a = f"r[{d}]" if wide else f"(r[{d}] & M32)"
            if insn.source == Source.X:
                b = f"r[{s}]" if wide else f"(r[{s}] & M32)"
            else:
                b = str(_sx32(imm) if wide else imm & M32)
            op = insn.jmp_op
            if op == JmpOp.JSET:
                cond = f"({a} & {b})"
            elif op in _CMP:
                cond = f"{a} {_CMP[op]} {b}"
            else:
                raise Unsupported(f"jump {insn}")
            nxt = self.block_of[i + 1]
            return [f"return {target} if {cond} else {nxt}"]
        raise Unsupported(f"instruction {insn}")

    def run(self, env: Env, r1: int, r2: int, r3: int = 0) -> int:
        r = [0, r1, r2, r3, 0, 0, SCRAMBLE, SCRAMBLE, SCRAMBLE, SCRAMBLE, STACK_BASE + STACK_SIZE]
        env.mem.add(STACK_BASE, bytes(STACK_SIZE), writable=True)
        try:
            b = 0
            blocks = self.blocks
            while b >= 0:
                b = blocks[b](r, env)
        finally:
            env.mem.regions.pop()
        return r[0]


def run_on_packet(prog: Program, packet: bytes, skb: bytes = b"", *, cpu: int = 0) -> int:
    """The body's verdict (the low 32 bits of R0, as the classic return value) on ``packet``, with ``skb``
    (a struct sk_buff image for probe mode, an __sk_buff for direct mode) as the third argument."""
    mem = Memory()
    mem.add(PACKET_BASE, packet)
    if skb:
        mem.add(SKB_BASE, skb)
    env = Env(mem, cpu=cpu)
    return prog.run(env, PACKET_BASE, PACKET_BASE + len(packet), SKB_BASE) & M32


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


# The translator's own invariant: Size has the widths this machine loads.
assert {s.nbytes for s in Size} == {1, 2, 4, 8}
