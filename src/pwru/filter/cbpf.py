"""Classic BPF: the instruction model libpcap produces, and a ``tcpdump -d`` style listing."""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["CInsn", "CProgram", "Class", "Mode", "Op", "Size", "Src"]


class Class(enum.IntEnum):
    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    RET = 0x06
    MISC = 0x07


class Size(enum.IntEnum):
    W = 0x00
    H = 0x08
    B = 0x10

    @property
    def nbytes(self) -> int:
        return {Size.W: 4, Size.H: 2, Size.B: 1}[self]


class Mode(enum.IntEnum):
    IMM = 0x00
    ABS = 0x20
    IND = 0x40
    MEM = 0x60
    LEN = 0x80
    MSH = 0xA0


class Op(enum.IntEnum):
    """ALU and jump operations (``code & 0xf0``)."""

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
    # jumps
    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40


class Src(enum.IntEnum):
    """Operand source; for RET also A (0x10)."""

    K = 0x00
    X = 0x08
    A = 0x10


TAX = 0x00
TXA = 0x80
MEMWORDS = 16

_ALU_NAMES = {0x00: "add", 0x10: "sub", 0x20: "mul", 0x30: "div", 0x40: "or", 0x50: "and", 0x60: "lsh"}
_ALU_NAMES |= {0x70: "rsh", 0x80: "neg", 0x90: "mod", 0xA0: "xor"}
_JMP_NAMES = {0x10: "jeq", 0x20: "jgt", 0x30: "jge", 0x40: "jset"}


@dataclasses.dataclass(frozen=True)
class CInsn:
    """One classic BPF instruction (``struct bpf_insn``): jumps are relative to the next instruction."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    @property
    def cls(self) -> Class:
        return Class(self.code & 0x07)

    @property
    def size(self) -> Size:
        return Size(self.code & 0x18)

    @property
    def mode(self) -> Mode:
        return Mode(self.code & 0xE0)

    @property
    def op(self) -> int:
        return self.code & 0xF0

    @property
    def src(self) -> int:
        return self.code & 0x08

    @property
    def rval(self) -> int:
        """The RET operand source: K, X or A."""
        return self.code & 0x18

    def format(self, pc: int) -> str:
        """The instruction as ``tcpdump -d`` shows it at index ``pc``."""
        op, operand = self._parts(pc)
        text = f"({pc:03d}) {op:<8s} {operand}" if operand else f"({pc:03d}) {op}"
        if self.cls == Class.JMP and self.op != Op.JA:
            text = f"({pc:03d}) {op:<8s} {operand:<16s} jt {pc + 1 + self.jt}\tjf {pc + 1 + self.jf}"
        return text

    def _parts(self, pc: int) -> tuple[str, str]:
        cls, k = self.cls, self.k
        suffix = {0x00: "", 0x08: "h", 0x10: "b"}.get(self.code & 0x18, "?")
        if cls == Class.LD:
            mode = self.mode
            if mode == Mode.IMM:
                return "ld", f"#0x{k:x}"
            if mode == Mode.LEN:
                return "ld", "#pktlen"
            if mode == Mode.ABS:
                return "ld" + suffix, f"[{k}]"
            if mode == Mode.IND:
                return "ld" + suffix, f"[x + {k}]"
            if mode == Mode.MEM:
                return "ld", f"M[{k}]"
        elif cls == Class.LDX:
            mode = self.mode
            if mode == Mode.IMM:
                return "ldx", f"#0x{k:x}"
            if mode == Mode.LEN:
                return "ldx", "#pktlen"
            if mode == Mode.MEM:
                return "ldx", f"M[{k}]"
            if mode == Mode.MSH:
                return "ldxb", f"4*([{k}]&0xf)"
        elif cls == Class.ST:
            return "st", f"M[{k}]"
        elif cls == Class.STX:
            return "stx", f"M[{k}]"
        elif cls == Class.RET:
            if self.rval == Src.A:
                return "ret", ""
            return "ret", f"#{k}"
        elif cls == Class.MISC:
            return ("tax", "") if self.code & 0xF8 == TAX else ("txa", "")
        elif cls == Class.ALU:
            name = _ALU_NAMES.get(self.op, "alu?")
            if self.op == Op.NEG:
                return name, ""
            if self.src == Src.X:
                return name, "x"
            return name, f"#0x{k:x}" if self.op in (Op.AND, Op.OR, Op.XOR) else f"#{k}"
        elif cls == Class.JMP:
            if self.op == Op.JA:
                return "ja", f"{pc + 1 + k}"
            name = _JMP_NAMES.get(self.op, "j?")
            return name, "x" if self.src == Src.X else f"#0x{k:x}"
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
