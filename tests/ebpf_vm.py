"""A small eBPF machine for the instructions the pcap translator emits, to run its bodies fast in tests.

A body is prepared once into Python closures, one per instruction (each returns the index of the next; the
translator's jumps all go forward); runs then cost microseconds, so the fuzzer can compare tens of
thousands of (expression, packet) verdicts with libpcap in CI time. The real kernel still runs a slice of them
(tests/kernel/test_filter_fuzz.py): this machine is checked against the kernel, not trusted alone.

It is strict where the kernel would be unsafe or the translator promised a check: a load or store outside the
packet, the stack or the skb raises :class:`Fault` (the verifier would refuse such a direct-mode body, and in
probe mode it means a missing bounds check); ``bpf_probe_read_kernel`` of an unmapped address returns -EFAULT
and zeroes its buffer, as the kernel's does. Helper calls scramble R1-R5, so a body relying on them after a
call is caught.

Supported: ALU and ALU64 (all operations but signed division and sign-extending moves), byte swaps to big
endian, JMP and JMP32 comparisons (unsigned, signed and JSET), ``gotol``, ld_imm64 of a constant, LDX/ST/STX of
1-8 bytes, calls of helpers 7 (get_prandom_u32), 8 (get_smp_processor_id) and 113 (probe_read_kernel), exit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pwru.ebpf.asm import AluOp, Class, Instruction, JmpOp, Mode, Size, Source, slot_offsets

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


Op = Callable[[list[int], "Env"], int]


class Program:
    """A translated body, prepared for this machine: one closure per instruction, returning the index of
    the next (-1 after ``exit``). Closures cost a microsecond to make, so preparing a body is cheaper than
    running it a few times, and a run is a tight loop."""

    def __init__(self, body: Sequence[Instruction]) -> None:
        self.body = list(body)
        n = len(self.body)
        self.ops: list[Op] = []
        slots = slot_offsets(self.body)  # jump offsets count slots; an ld_imm64 takes two
        index_of = {slot: i for i, slot in enumerate(slots)}
        for i, insn in enumerate(self.body):
            if insn.is_ld_imm64 and insn.src != 0:
                raise Unsupported("ld_imm64 of anything but a constant")
            nxt = i + 1
            if insn.is_jump:
                dest = index_of.get(slots[i] + 1 + (insn.imm if insn.is_long_jump else insn.off), -1)
                if not i < dest <= n - 1:
                    raise Fault(f"jump at {i} to {dest}: not forward inside the body")
                self.ops.append(_jump(insn, dest, nxt))
            elif nxt >= n and not insn.is_exit:
                raise Fault("the body does not end with exit")
            else:
                self.ops.append(_op(insn, nxt))

    def run(self, env: Env, r1: int, r2: int, r3: int = 0) -> int:
        r = [0, r1, r2, r3, 0, 0, SCRAMBLE, SCRAMBLE, SCRAMBLE, SCRAMBLE, STACK_BASE + STACK_SIZE]
        env.mem.add(STACK_BASE, bytes(STACK_SIZE), writable=True)
        ops = self.ops
        try:
            pc = 0
            steps = 0
            while pc >= 0:
                pc = ops[pc](r, env)
                steps += 1
            env.steps += steps
        finally:
            env.mem.regions.pop()
        return r[0]


def _operand(insn: Instruction, wide: bool) -> tuple[bool, int]:
    """(from a register?, the register or the immediate as the operation sees it)."""
    if insn.source == Source.X:
        return True, insn.src
    return False, (_sx32(insn.imm) if wide else insn.imm & M32)


_ALU_FN: dict[AluOp, Callable[[int, int, int], int]] = {
    AluOp.ADD: lambda a, b, sm: a + b,
    AluOp.SUB: lambda a, b, sm: a - b,
    AluOp.MUL: lambda a, b, sm: a * b,
    AluOp.OR: lambda a, b, sm: a | b,
    AluOp.AND: lambda a, b, sm: a & b,
    AluOp.XOR: lambda a, b, sm: a ^ b,
    AluOp.LSH: lambda a, b, sm: a << (b & sm),
    AluOp.RSH: lambda a, b, sm: a >> (b & sm),
    AluOp.DIV: lambda a, b, sm: a // b if b else 0,
    AluOp.MOD: lambda a, b, sm: a % b if b else a,
    AluOp.MOV: lambda a, b, sm: b,
    AluOp.ARSH: lambda a, b, sm: _signed(a, sm + 1) >> (b & sm),
}
_CMP_FN: dict[JmpOp, Callable[[int, int], bool]] = {
    JmpOp.JEQ: lambda a, b: a == b,
    JmpOp.JNE: lambda a, b: a != b,
    JmpOp.JGT: lambda a, b: a > b,
    JmpOp.JGE: lambda a, b: a >= b,
    JmpOp.JLT: lambda a, b: a < b,
    JmpOp.JLE: lambda a, b: a <= b,
    JmpOp.JSET: lambda a, b: bool(a & b),
}
_SIGNED_CMP_FN: dict[JmpOp, Callable[[int, int], bool]] = {
    JmpOp.JSGT: lambda a, b: a > b,
    JmpOp.JSGE: lambda a, b: a >= b,
    JmpOp.JSLT: lambda a, b: a < b,
    JmpOp.JSLE: lambda a, b: a <= b,
}


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


def _jump(insn: Instruction, dest: int, nxt: int) -> Op:
    if insn.jmp_op == JmpOp.JA:
        return lambda r, env: dest
    wide = insn.cls == Class.JMP
    mask = M64 if wide else M32
    d = insn.dst
    by_reg, b = _operand(insn, wide)
    signed = _SIGNED_CMP_FN.get(insn.jmp_op)
    if signed is not None:
        bits = 64 if wide else 32
        if by_reg:
            return lambda r, env: dest if signed(_signed(r[d] & mask, bits), _signed(r[b] & mask, bits)) else nxt
        sb = _signed(b, bits)
        return lambda r, env: dest if signed(_signed(r[d] & mask, bits), sb) else nxt
    fn = _CMP_FN.get(insn.jmp_op)
    if fn is None:
        raise Unsupported(f"jump {insn}")
    if by_reg:
        return lambda r, env: dest if fn(r[d] & mask, r[b] & mask) else nxt
    return lambda r, env: dest if fn(r[d] & mask, b) else nxt


def _op(insn: Instruction, nxt: int) -> Op:
    cls, d, s, off, imm = insn.cls, insn.dst, insn.src, insn.off, insn.imm
    if cls in (Class.ALU, Class.ALU64):
        wide = cls == Class.ALU64
        mask, sm = (M64, 63) if wide else (M32, 31)
        op = insn.alu_op
        if op == AluOp.NEG:

            def neg(r: list[int], env: Env) -> int:
                r[d] = (-(r[d] & mask)) & mask
                return nxt

            return neg
        if op == AluOp.END:
            if wide or insn.source != Source.X:
                raise Unsupported(f"byte swap {insn}")
            nbytes, low = imm // 8, (1 << imm) - 1

            def swap(r: list[int], env: Env) -> int:
                r[d] = int.from_bytes((r[d] & low).to_bytes(nbytes, "little"), "big")
                return nxt

            return swap
        fn = _ALU_FN.get(op)
        if fn is None or insn.off:
            raise Unsupported(f"ALU {insn}")
        by_reg, b = _operand(insn, wide)
        if by_reg:

            def alu_x(r: list[int], env: Env) -> int:
                r[d] = fn(r[d] & mask, r[b] & mask, sm) & mask
                return nxt

            return alu_x

        def alu_k(r: list[int], env: Env) -> int:
            r[d] = fn(r[d] & mask, b, sm) & mask
            return nxt

        return alu_k
    if cls == Class.LDX and insn.mode == Mode.MEM:
        size = insn.size.nbytes

        def ldx(r: list[int], env: Env) -> int:
            r[d] = env.mem.load((r[s] + off) & M64, size)
            return nxt

        return ldx
    if cls == Class.ST and insn.mode == Mode.MEM:
        size, value = insn.size.nbytes, imm & M64

        def st(r: list[int], env: Env) -> int:
            env.mem.store((r[d] + off) & M64, size, value)
            return nxt

        return st
    if cls == Class.STX and insn.mode == Mode.MEM:
        size = insn.size.nbytes

        def stx(r: list[int], env: Env) -> int:
            env.mem.store((r[d] + off) & M64, size, r[s])
            return nxt

        return stx
    if insn.is_ld_imm64:
        value = insn.imm & M64

        def ld_imm64(r: list[int], env: Env) -> int:
            r[d] = value
            return nxt

        return ld_imm64
    if insn.is_exit:
        return lambda r, env: -1
    if insn.is_helper_call:
        if imm not in (7, 8, 113):
            raise Unsupported(f"helper {imm}")

        def call(r: list[int], env: Env) -> int:
            _helper(env, r, imm)
            return nxt

        return call
    raise Unsupported(f"instruction {insn}")


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
