"""Classic BPF: the instruction model libpcap produces, and a ``tcpdump -d`` style listing."""

from __future__ import annotations

import dataclasses
import enum
from typing import TypeVar

__all__ = ["AluOp", "CInsn", "CProgram", "Class", "JmpOp", "MiscOp", "Mode", "RetSrc", "Size", "Src"]

# Each field of an opcode has its own enum, so that a value read as one field never passes for another (an
# ALU ``SUB`` and a jump ``JEQ`` are both 0x10). The ALU and jump numbers are those eBPF inherited, but the
# sets differ (classic BPF has no MOV, ARSH, END, JNE, JLT, ...) and so do the classes, sizes and modes.


class Class(enum.IntEnum):
    """Instruction class (``code & 0x07``)."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    RET = 0x06
    MISC = 0x07


class Size(enum.IntEnum):
    """Load width (``code & 0x18``) of LD/LDX."""

    W = 0x00
    H = 0x08
    B = 0x10

    @property
    def nbytes(self) -> int:
        return {Size.W: 4, Size.H: 2, Size.B: 1}[self]


class Mode(enum.IntEnum):
    """Addressing mode (``code & 0xe0``) of LD/LDX."""

    IMM = 0x00
    ABS = 0x20
    IND = 0x40
    MEM = 0x60
    LEN = 0x80
    MSH = 0xA0


class AluOp(enum.IntEnum):
    """ALU operation (``code & 0xf0``) of class ALU."""

    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0


class JmpOp(enum.IntEnum):
    """Jump operation (``code & 0xf0``) of class JMP."""

    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40


class Src(enum.IntEnum):
    """Operand source (``code & 0x08``) of ALU and JMP: the constant ``k`` or register X."""

    K = 0x00
    X = 0x08


class RetSrc(enum.IntEnum):
    """What RET returns (``code & 0x18``): the constant ``k``, X or A."""

    K = 0x00
    X = 0x08
    A = 0x10


class MiscOp(enum.IntEnum):
    """MISC operation (``code & 0xf8``): copy A to X or X to A."""

    TAX = 0x00
    TXA = 0x80


MEMWORDS = 16
_SIZE_SUFFIX = {Size.W: "", Size.H: "h", Size.B: "b"}
_HEX_OPERAND = frozenset({AluOp.AND, AluOp.OR, AluOp.XOR})


_E = TypeVar("_E", bound=enum.IntEnum)


def _member(kind: type[_E], value: int) -> _E | None:
    """The member of ``kind`` numbered ``value``, or None when it has none."""
    member = kind._value2member_map_.get(value)  # a dict look-up: enum calls are slow on big programs
    return member if isinstance(member, kind) else None


_CLASSES = tuple(Class(i) for i in range(8))


@dataclasses.dataclass(frozen=True)
class CInsn:
    """One classic BPF instruction (``struct bpf_insn``): jumps are relative to the next instruction."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    @property
    def cls(self) -> Class:
        return _CLASSES[self.code & 0x07]

    @property
    def size(self) -> Size | None:
        """The load width of LD/LDX (None for a width classic BPF does not have)."""
        return _member(Size, self.code & 0x18)

    @property
    def mode(self) -> Mode | None:
        """The addressing mode of LD/LDX (None for a mode classic BPF does not have)."""
        return _member(Mode, self.code & 0xE0)

    @property
    def alu_op(self) -> AluOp | None:
        """The operation of an ALU instruction; None for other classes and unknown operations."""
        return _member(AluOp, self.code & 0xF0) if self.cls == Class.ALU else None

    @property
    def jmp_op(self) -> JmpOp | None:
        """The operation of a JMP instruction; None for other classes and unknown operations."""
        return _member(JmpOp, self.code & 0xF0) if self.cls == Class.JMP else None

    @property
    def misc_op(self) -> MiscOp | None:
        """TAX or TXA for a MISC instruction; None otherwise."""
        return _member(MiscOp, self.code & 0xF8) if self.cls == Class.MISC else None

    @property
    def src(self) -> Src:
        """The operand source of ALU and JMP instructions."""
        return Src(self.code & 0x08)

    @property
    def rval(self) -> RetSrc | None:
        """What a RET returns: K, X or A."""
        return _member(RetSrc, self.code & 0x18)

    @property
    def is_backward_jump(self) -> bool:
        """A ``ja`` whose 32-bit offset is negative (libpcap's protochain loops)."""
        return self.jmp_op == JmpOp.JA and self.k >= 1 << 31

    def __str__(self) -> str:
        """The instruction as ``tcpdump -d`` shows it, jump targets relative (``jt +0 jf +1``)."""
        op, operand = self._parts(None)
        if self.cls == Class.JMP and self.jmp_op not in (JmpOp.JA, None):
            return f"{op} {operand} jt +{self.jt} jf +{self.jf}"
        return f"{op} {operand}" if operand else op

    def format(self, pc: int) -> str:
        """The instruction as ``tcpdump -d`` shows it at index ``pc``."""
        op, operand = self._parts(pc)
        if self.cls == Class.JMP and self.jmp_op not in (JmpOp.JA, None):
            return f"({pc:03d}) {op:<8s} {operand:<16s} jt {pc + 1 + self.jt}\tjf {pc + 1 + self.jf}"
        return f"({pc:03d}) {op:<8s} {operand}" if operand else f"({pc:03d}) {op}"

    def _parts(self, pc: int | None) -> tuple[str, str]:
        """(mnemonic, operand); a ``ja`` target is absolute with ``pc``, relative (``+k``) without."""
        cls, k, mode = self.cls, self.k, self.mode
        if cls in (Class.LD, Class.LDX):
            name = "ld" if cls == Class.LD else "ldx"
            size = self.size
            if mode == Mode.IMM:
                return name, f"#0x{k:x}"
            if mode == Mode.LEN:
                return name, "#pktlen"
            if mode == Mode.MEM:
                return name, f"M[{k}]"
            if cls == Class.LD and mode in (Mode.ABS, Mode.IND) and size is not None:
                return "ld" + _SIZE_SUFFIX[size], f"[{k}]" if mode == Mode.ABS else f"[x + {k}]"
            if cls == Class.LDX and mode == Mode.MSH:
                return "ldxb", f"4*([{k}]&0xf)"
        elif cls in (Class.ST, Class.STX):
            return cls.name.lower(), f"M[{k}]"
        elif cls == Class.RET:
            return ("ret", "") if self.rval == RetSrc.A else ("ret", f"#{k}")
        elif cls == Class.MISC and (misc := self.misc_op) is not None:
            return misc.name.lower(), ""
        elif cls == Class.ALU and (alu := self.alu_op) is not None:
            if alu == AluOp.NEG:
                return "neg", ""
            if self.src == Src.X:
                return alu.name.lower(), "x"
            return alu.name.lower(), f"#0x{k:x}" if alu in _HEX_OPERAND else f"#{k}"
        elif cls == Class.JMP and (jmp := self.jmp_op) is not None:
            if jmp == JmpOp.JA:
                return "ja", f"+{k}" if pc is None else f"{pc + 1 + k}"
            return jmp.name.lower(), "x" if self.src == Src.X else f"#0x{k:x}"
        return "unimp", f"0x{self.code:x}"


@dataclasses.dataclass(frozen=True)
class CProgram:
    """A classic BPF program as libpcap compiled it."""

    insns: tuple[CInsn, ...]

    def __len__(self) -> int:
        return len(self.insns)

    def dump(self) -> str:
        """The whole program, one instruction a line, as ``tcpdump -d`` prints it."""
        return "\n".join(insn.format(pc) for pc, insn in enumerate(self.insns))

    def scratch_slots(self) -> list[int]:
        """The scratch memory words ``M[k]`` the program touches, sorted."""
        used = set()
        for insn in self.insns:
            if insn.cls in (Class.ST, Class.STX) or (
                insn.cls in (Class.LD, Class.LDX) and insn.mode == Mode.MEM
            ):
                used.add(insn.k)
        return sorted(used)

    def first_backward_jump(self) -> int | None:
        """The index of the first backward ``ja`` (a loop the kernel verifier cannot bound), or None."""
        return next((pc for pc, insn in enumerate(self.insns) if insn.is_backward_jump), None)
