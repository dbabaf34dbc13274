"""C expressions over a kernel struct: eBPF code (typed tree -> instructions).

The code is a subprogram body that replaces a C stub of pwru.bpf.c (as the pcap filter's does):
- filter: ``__u64 filter_skb_expr(struct sk_buff *skb)``, R1 = the skb; returns the expression's value in R0
  (non-zero: the skb is selected);
- metadata: ``void set_skb_metadata(struct sk_buff *skb, __u8 *out)``, R1 = the skb, R2 = where the values go
  (8 bytes per scalar, the bytes of a char array as they are).

Memory is read with ``bpf_probe_read_kernel`` into an 8-byte slot at the frame's top, which the helper zeroes
when the read fails (so a NULL pointer reads as 0). Registers: R9 the root pointer, R8 the metadata output,
R6 the value being computed, R7 a second operand; an operand waiting for its partner is spilled to the stack
(at most :data:`MAX_PENDING`: the frame stays within 8 + 8 * MAX_PENDING bytes). Jumps go forward only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pwru.cexpr.check import (
    MAX_STRING,
    AddrOf,
    Arith,
    ArrayType,
    Compare,
    Const,
    IntType,
    Load,
    Logic,
    Not,
    Place,
    PtrType,
    Root,
    StrEq,
    Value,
)
from pwru.cexpr.parse import Node
from pwru.ebpf import asm
from pwru.ebpf.asm import AluOp, Instruction, JmpOp, Reg, Size

__all__ = ["MAX_PENDING", "EmitError", "MetadataSlot", "emit_filter", "emit_metadata", "metadata_slots"]

#: Operands that may wait on the stack at once (the nesting a right-hand side can have).
MAX_PENDING = 8
READ_SLOT = -8
_M64 = (1 << 64) - 1
_SIZES = {1: Size.B, 2: Size.H, 4: Size.W, 8: Size.DW}
_ALU = {"+": AluOp.ADD, "-": AluOp.SUB, "*": AluOp.MUL, "&": AluOp.AND, "|": AluOp.OR, "^": AluOp.XOR,
        "<<": AluOp.LSH}  # fmt: skip
_CMP_UNSIGNED = {"==": JmpOp.JEQ, "!=": JmpOp.JNE, "<": JmpOp.JLT, "<=": JmpOp.JLE, ">": JmpOp.JGT,
                 ">=": JmpOp.JGE}  # fmt: skip
_CMP_SIGNED = {**_CMP_UNSIGNED, "<": JmpOp.JSLT, "<=": JmpOp.JSLE, ">": JmpOp.JSGT, ">=": JmpOp.JSGE}


class EmitError(ValueError):
    """The expression needs more than the code's bounds allow (too deep)."""

    def __init__(self, message: str, node: Node) -> None:
        super().__init__(message)
        self.message = message
        self.start, self.end = node.start, max(node.end, node.start + 1)


@dataclass(frozen=True)
class MetadataSlot:
    """Where one metadata value lands in the output: ``offset`` and ``size`` bytes (8 for a scalar, the array's
    length for a char array)."""

    offset: int
    size: int


def _fits_imm(v: int) -> bool:
    return -(1 << 31) <= v < (1 << 31)


def _as_s64(v: int) -> int:
    v &= _M64
    return v - (1 << 64) if v >= 1 << 63 else v


class _Emitter:
    def __init__(self) -> None:
        self.out: list[Instruction] = []
        self.pending_label: str | None = None
        self.labels = 0
        self.depth = 0

    # plumbing

    def emit(self, insn: Instruction) -> None:
        if self.pending_label is not None:
            insn.label = self.pending_label
            self.pending_label = None
        self.out.append(insn)

    def new_label(self) -> str:
        self.labels += 1
        return f"cexpr_{self.labels}"

    def place_label(self, label: str) -> None:
        if self.pending_label is not None:  # two targets at one spot: a no-op jump carries the first
            self.emit(asm.ja(0))
        self.pending_label = label

    def spill(self, node: Node) -> int:
        """Push R6 to the next stack slot; its offset."""
        if self.depth >= MAX_PENDING:
            raise EmitError(f"the expression nests too deeply (more than {MAX_PENDING} pending operands)", node)
        self.depth += 1
        off = READ_SLOT - 8 * self.depth
        self.emit(asm.stx(Size.DW, Reg.R10, off, Reg.R6))
        return off

    def unspill(self, reg: Reg, off: int) -> None:
        self.emit(asm.ldx(Size.DW, reg, Reg.R10, off))
        self.depth -= 1

    def const(self, reg: Reg, value: int) -> None:
        v = _as_s64(value)
        self.emit(asm.mov_imm(reg, v) if _fits_imm(v) else asm.ld_imm64(reg, v & _M64))

    def read(self, size: int, src: Reg) -> None:
        """R6 = the ``size`` bytes at address ``src`` (0 when unreadable), zero-extended."""
        self.emit(asm.mov_reg(Reg.R1, Reg.R10))
        self.emit(asm.alu_imm(AluOp.ADD, Reg.R1, READ_SLOT))
        self.emit(asm.mov_imm(Reg.R2, size))
        if src != Reg.R3:
            self.emit(asm.mov_reg(Reg.R3, src))
        self.emit(asm.call("bpf_probe_read_kernel"))
        self.emit(asm.ldx(_SIZES[size], Reg.R6, Reg.R10, READ_SLOT))

    def boolean(self, jump: Callable[[str], Instruction]) -> None:
        """R6 = 1 when ``jump`` (to the label it is given) is taken, else 0."""
        true, end = self.new_label(), self.new_label()
        self.emit(jump(true))
        self.emit(asm.mov_imm(Reg.R6, 0))
        self.emit(asm.ja(end))
        self.place_label(true)
        self.emit(asm.mov_imm(Reg.R6, 1))
        self.place_label(end)

    # values

    def value(self, v: Value) -> None:
        """Code leaving ``v`` in R6."""
        if isinstance(v, Root):
            self.emit(asm.mov_reg(Reg.R6, Reg.R9))
        elif isinstance(v, Const):
            self.const(Reg.R6, v.value)
        elif isinstance(v, AddrOf):
            self.address(v.place)
        elif isinstance(v, Load):
            self.load(v.place)
        elif isinstance(v, Arith):
            self.arith(v)
        elif isinstance(v, Compare):
            self.compare(v)
        elif isinstance(v, Logic):
            self.logic(v)
        elif isinstance(v, Not):
            self.value(v.operand)
            self.boolean(lambda t: asm.jmp_imm(JmpOp.JEQ, Reg.R6, 0, t))
        elif isinstance(v, StrEq):
            self.string_equal(v)
        else:
            raise TypeError(f"unexpected {type(v).__name__}")

    def address(self, p: Place) -> None:
        """R6 = the address of ``p`` (0 when a dynamic index is out of bounds)."""
        self.value(p.base)
        if p.offset:
            self.add_const(p.offset)
        if p.index is None:
            return
        slot = self.spill(p.node)
        self.value(p.index)
        end = None
        if p.bound is not None:
            ok, end = self.new_label(), self.new_label()
            self.emit(asm.jmp_imm(JmpOp.JLT, Reg.R6, p.bound, ok))
            self.emit(asm.mov_imm(Reg.R6, 0))  # the slot stays behind: nothing reads it again
            self.emit(asm.ja(end))
            self.place_label(ok)
        if p.scale != 1:
            self.emit(asm.alu_imm(AluOp.MUL, Reg.R6, p.scale))
        self.unspill(Reg.R7, slot)
        self.emit(asm.alu_reg(AluOp.ADD, Reg.R6, Reg.R7))
        if end is not None:
            self.place_label(end)

    def add_const(self, value: int) -> None:
        if _fits_imm(value):
            self.emit(asm.alu_imm(AluOp.ADD, Reg.R6, value))
        else:
            self.const(Reg.R7, value)
            self.emit(asm.alu_reg(AluOp.ADD, Reg.R6, Reg.R7))

    def load(self, p: Place) -> None:
        self.address(p)
        t = p.type
        if p.bits is not None:
            assert isinstance(t, IntType)
            shift, nbits = p.bits
            width = next(w for w in (1, 2, 4, 8) if shift + nbits <= 8 * w)
            self.read(width, Reg.R6)
            if t.signed:
                self.emit(asm.alu_imm(AluOp.LSH, Reg.R6, 64 - shift - nbits))
                self.emit(asm.alu_imm(AluOp.ARSH, Reg.R6, 64 - nbits))
            else:
                if shift:
                    self.emit(asm.alu_imm(AluOp.RSH, Reg.R6, shift))
                if nbits < 32:
                    self.emit(asm.alu_imm(AluOp.AND, Reg.R6, (1 << nbits) - 1))
                elif nbits < 64:
                    self.emit(asm.alu_imm(AluOp.LSH, Reg.R6, 64 - nbits))
                    self.emit(asm.alu_imm(AluOp.RSH, Reg.R6, 64 - nbits))
            return
        size = 8 if isinstance(t, PtrType) else t.size if isinstance(t, IntType) else 0
        assert size in _SIZES, t
        self.read(size, Reg.R6)
        if isinstance(t, IntType) and t.signed and size < 8:
            self.emit(asm.alu_imm(AluOp.LSH, Reg.R6, 64 - 8 * size))
            self.emit(asm.alu_imm(AluOp.ARSH, Reg.R6, 64 - 8 * size))

    def operands(self, left: Value, right: Value, node: Node) -> int | None:
        """Code leaving ``left`` in R6 and ``right`` in R7; returns ``right`` instead when it is a constant
        that fits an immediate (then R7 is not set)."""
        self.value(left)
        if isinstance(right, Const) and _fits_imm(_as_s64(right.value)):
            return _as_s64(right.value)
        slot = self.spill(node)
        self.value(right)
        self.emit(asm.mov_reg(Reg.R7, Reg.R6))
        self.unspill(Reg.R6, slot)
        return None

    def arith(self, v: Arith) -> None:
        if v.right is None:
            self.value(v.left)
            if v.op == "neg":
                self.emit(asm.neg(Reg.R6))
            else:
                self.emit(asm.alu_imm(AluOp.XOR, Reg.R6, -1))
            return
        op = AluOp.ARSH if v.op == ">>" and not v.left.unsigned else AluOp.RSH if v.op == ">>" else _ALU[v.op]
        imm = self.operands(v.left, v.right, v.node)
        if imm is not None:
            self.emit(asm.alu_imm(op, Reg.R6, imm))
        else:
            self.emit(asm.alu_reg(op, Reg.R6, Reg.R7))

    def compare(self, v: Compare) -> None:
        op = (_CMP_SIGNED if v.signed else _CMP_UNSIGNED)[v.op]
        imm = self.operands(v.left, v.right, v.node)
        if imm is not None:
            self.boolean(lambda t: asm.jmp_imm(op, Reg.R6, imm, t))
        else:
            self.boolean(lambda t: asm.jmp_reg(op, Reg.R6, Reg.R7, t))

    def logic(self, v: Logic) -> None:
        short, end = self.new_label(), self.new_label()
        stop = JmpOp.JEQ if v.op == "&&" else JmpOp.JNE  # && stops at a false operand, || at a true one
        self.value(v.left)
        self.emit(asm.jmp_imm(stop, Reg.R6, 0, short))
        self.value(v.right)
        self.emit(asm.jmp_imm(stop, Reg.R6, 0, short))
        self.emit(asm.mov_imm(Reg.R6, 1 if v.op == "&&" else 0))
        self.emit(asm.ja(end))
        self.place_label(short)
        self.emit(asm.mov_imm(Reg.R6, 0 if v.op == "&&" else 1))
        self.place_label(end)

    def string_equal(self, v: StrEq) -> None:
        differ, end = self.new_label(), self.new_label()
        self.value(v.address)
        slot = self.spill(v.node)
        want = v.text.ljust(v.length, b"\0")[: v.length]
        for start in range(0, v.length, 8):
            chunk = want[start : start + 8]
            self.emit(asm.st(Size.DW, Reg.R10, READ_SLOT, 0))  # a short chunk compares its tail as zeros
            self.emit(asm.ldx(Size.DW, Reg.R3, Reg.R10, slot))
            if start:
                self.emit(asm.alu_imm(AluOp.ADD, Reg.R3, start))
            self.emit(asm.mov_reg(Reg.R1, Reg.R10))
            self.emit(asm.alu_imm(AluOp.ADD, Reg.R1, READ_SLOT))
            self.emit(asm.mov_imm(Reg.R2, len(chunk)))
            self.emit(asm.call("bpf_probe_read_kernel"))
            self.emit(asm.ldx(Size.DW, Reg.R6, Reg.R10, READ_SLOT))
            self.const(Reg.R7, int.from_bytes(chunk.ljust(8, b"\0"), "little"))
            self.emit(asm.jmp_reg(JmpOp.JNE, Reg.R6, Reg.R7, differ))
        self.depth -= 1
        self.emit(asm.mov_imm(Reg.R6, 0 if v.negate else 1))
        self.emit(asm.ja(end))
        self.place_label(differ)
        self.emit(asm.mov_imm(Reg.R6, 1 if v.negate else 0))
        self.place_label(end)

    def finish(self) -> list[Instruction]:
        self.emit(asm.exit_())
        return asm.resolve(self.out)


def emit_filter(tree: Value) -> list[Instruction]:
    """The body of ``filter_skb_expr``: R0 = the expression's value."""
    e = _Emitter()
    e.emit(asm.mov_reg(Reg.R9, Reg.R1))
    e.value(tree)
    e.emit(asm.mov_reg(Reg.R0, Reg.R6))
    return e.finish()


def metadata_slots(items: list[Place | Value]) -> list[MetadataSlot]:
    """Where each metadata value goes: scalars take 8 bytes, char arrays their length (at most
    :data:`~pwru.cexpr.check.MAX_STRING`) rounded up to 8."""
    slots, offset = [], 0
    for item in items:
        size = 8
        if isinstance(item, Place) and isinstance(item.type, ArrayType):
            size = min(item.type.nelems, MAX_STRING)
        slots.append(MetadataSlot(offset, size))
        offset += (size + 7) // 8 * 8
    return slots


def emit_metadata(items: list[Place | Value]) -> list[Instruction]:
    """The body of ``set_skb_metadata``: each item's value (or char array's bytes) at its slot of R2's buffer."""
    e = _Emitter()
    e.emit(asm.mov_reg(Reg.R9, Reg.R1))
    e.emit(asm.mov_reg(Reg.R8, Reg.R2))
    for item, slot in zip(items, metadata_slots(items), strict=True):
        if isinstance(item, Place) and isinstance(item.type, ArrayType):
            e.address(item)
            e.emit(asm.mov_reg(Reg.R1, Reg.R8))
            e.emit(asm.alu_imm(AluOp.ADD, Reg.R1, slot.offset))
            e.emit(asm.mov_imm(Reg.R2, slot.size))
            e.emit(asm.mov_reg(Reg.R3, Reg.R6))
            e.emit(asm.call("bpf_probe_read_kernel"))
            continue
        e.value(Load(item.node, item) if isinstance(item, Place) else item)
        e.emit(asm.stx(Size.DW, Reg.R8, slot.offset, Reg.R6))
    e.emit(asm.mov_imm(Reg.R0, 0))
    return e.finish()
