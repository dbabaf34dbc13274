"""Classic BPF -> eBPF: the body of ``filter(void *data, void *data_end)``.

Calling convention of the emitted body: R1 = data, R2 = data_end on entry, the verdict in R0 (0 rejects,
anything else accepts: the classic return value), ``exit`` to return, only relative jumps inside.
Classic state lives in callee-saved registers so helper calls cannot clobber it:
R6 = data, R7 = data_end, R8 = A, R9 = X. Scratch words M[k] that the program uses are 4-byte stack slots;
probe-read mode also keeps one 8-byte bounce slot at R10-8 (at most 8 + 16*4 = 72 bytes of stack).

Two modes:

* ``direct``: data/data_end are packet pointers (tc, xdp, socket filters). Every load is bounds-checked
  against data_end the way the verifier wants; variable (``ind``) offsets are bounded to 0xffff first.
  Loads that reach beyond 0xffff bytes reject.
* ``probe``: data/data_end are plain kernel addresses (kprobe, fentry, tp_btf). Every load is a bounds check,
  then ``bpf_probe_read_kernel`` into the bounce slot; a failing helper rejects.

Classic semantics kept: packet bytes are big-endian, out-of-bounds loads and division by X == 0 reject,
ALU is 32-bit, jumps compare unsigned 32-bit values, a shift by 32 or more gives 0 (as libpcap's
``bpf_filter`` does; eBPF itself would mask the count).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pwru.ebpf import asm
from pwru.ebpf.asm import AluOp, Instruction, JmpOp, Reg, Size
from pwru.filter import cbpf
from pwru.filter.cbpf import CInsn, CProgram

__all__ = ["LOOP_MESSAGE", "EmitMode", "TranslationError", "check_loops", "reject_all", "translate"]

EmitMode = Literal["direct", "probe"]

DATA, DATA_END, A, X = Reg.R6, Reg.R7, Reg.R8, Reg.R9
PROBE_SLOT = -8
MAX_PACKET_OFF = 0xFFFF
HELPER_PROBE_READ_KERNEL = 113
REJECT = "reject"
LOOP_MESSAGE = "libpcap compiled a loop (protochain), which the kernel verifier cannot bound"

# Classic operations translate to the eBPF ones of the same name (eBPF kept classic BPF's numbering, but
# each ISA has its own enum).
_NEGATED = {JmpOp.JEQ: JmpOp.JNE, JmpOp.JGT: JmpOp.JLE, JmpOp.JGE: JmpOp.JLT}


class TranslationError(ValueError):
    """A classic program this translator cannot express (an opcode libpcap never emits, a bad jump)."""


def reject_all() -> list[Instruction]:
    """The body for a link type the expression cannot match: ``r0 = 0; exit``."""
    return [asm.mov_imm(Reg.R0, 0), asm.exit_()]


def check_loops(prog: CProgram) -> None:
    """Raise :class:`TranslationError` (:data:`LOOP_MESSAGE`) when ``prog`` jumps backwards: libpcap's
    ``protochain`` loops, and the kernel verifier cannot bound such a loop."""
    if prog.first_backward_jump() is not None:
        raise TranslationError(LOOP_MESSAGE)


def translate(prog: CProgram, mode: EmitMode = "direct") -> list[Instruction]:
    """The eBPF body equivalent to ``prog``; jump offsets are resolved and no labels remain."""
    if mode not in ("direct", "probe"):
        raise ValueError(f"unknown emission mode {mode!r}")
    check_loops(prog)
    return _Translator(prog, mode).run()


class _Translator:
    def __init__(self, prog: CProgram, mode: EmitMode) -> None:
        self.prog = prog
        self.mode = mode
        self.out: list[Instruction] = []
        self.marks: dict[str, int] = {}
        base = PROBE_SLOT if mode == "probe" else 0
        self.mem = {k: base - 4 * (i + 1) for i, k in enumerate(prog.scratch_slots())}

    def emit(self, *insns: Instruction) -> None:
        self.out.extend(insns)

    def run(self) -> list[Instruction]:
        n = len(self.prog.insns)
        if n == 0:
            return reject_all()
        for k in self.mem:
            if not 0 <= k < cbpf.MEMWORDS:
                raise TranslationError(f"scratch memory index {k} out of range")
        self.emit(
            asm.mov_reg(DATA, Reg.R1),
            asm.mov_reg(DATA_END, Reg.R2),
            asm.mov_imm(A, 0, bits=32),
            asm.mov_imm(X, 0, bits=32),
        )
        self.emit(*(asm.st(Size.W, Reg.R10, off, 0) for off in self.mem.values()))
        for pc, insn in enumerate(self.prog.insns):
            self.marks[f"c{pc}"] = len(self.out)
            self.one(pc, insn)
        self.marks[REJECT] = len(self.out)
        self.emit(asm.mov_imm(Reg.R0, 0, bits=32), asm.exit_())
        return _finish(self.out, self.marks)

    # --- one classic instruction ---------------------------------------------------------------------

    def target(self, pc: int, rel: int) -> str:
        dest = pc + 1 + rel
        if not 0 <= dest < len(self.prog.insns):
            raise TranslationError(f"jump at {pc} leaves the program (to {dest})")
        return f"c{dest}"

    def one(self, pc: int, insn: CInsn) -> None:
        cls = insn.cls
        if cls in (cbpf.Class.LD, cbpf.Class.LDX):
            self.load(pc, insn)
        elif cls == cbpf.Class.ST:
            self.emit(asm.stx(Size.W, Reg.R10, self.mem[insn.k], A))
        elif cls == cbpf.Class.STX:
            self.emit(asm.stx(Size.W, Reg.R10, self.mem[insn.k], X))
        elif cls == cbpf.Class.ALU:
            self.alu(pc, insn)
        elif cls == cbpf.Class.JMP:
            self.jump(pc, insn)
        elif cls == cbpf.Class.RET:
            rval = insn.rval
            if rval == cbpf.RetSrc.A:
                self.emit(asm.mov_reg(Reg.R0, A, bits=32))
            elif rval == cbpf.RetSrc.X:
                self.emit(asm.mov_reg(Reg.R0, X, bits=32))
            else:
                self.emit(asm.mov_imm(Reg.R0, insn.k, bits=32))
            self.emit(asm.exit_())
        elif cls == cbpf.Class.MISC:
            if insn.misc_op == cbpf.MiscOp.TAX:
                self.emit(asm.mov_reg(X, A, bits=32))
            elif insn.misc_op == cbpf.MiscOp.TXA:
                self.emit(asm.mov_reg(A, X, bits=32))
            else:
                raise TranslationError(f"unsupported misc instruction {insn.code:#x} at {pc}")

    def load(self, pc: int, insn: CInsn) -> None:
        dst = A if insn.cls == cbpf.Class.LD else X
        mode = insn.mode
        if mode == cbpf.Mode.IMM:
            self.emit(asm.mov_imm(dst, insn.k, bits=32))
        elif mode == cbpf.Mode.LEN:
            self.emit(
                asm.mov_reg(dst, DATA_END), asm.alu_reg(AluOp.SUB, dst, DATA), asm.mov_reg(dst, dst, bits=32)
            )
        elif mode == cbpf.Mode.MEM:
            if insn.k not in self.mem:
                raise TranslationError(f"scratch memory index {insn.k} out of range at {pc}")
            self.emit(asm.ldx(Size.W, dst, Reg.R10, self.mem[insn.k]))
        elif mode in (cbpf.Mode.ABS, cbpf.Mode.IND) and insn.cls == cbpf.Class.LD and insn.size is not None:
            self.packet_load(dst, insn.size.nbytes, insn.k, indexed=mode == cbpf.Mode.IND)
        elif mode == cbpf.Mode.MSH and insn.cls == cbpf.Class.LDX and insn.size == cbpf.Size.B:
            self.packet_load(X, 1, insn.k, indexed=False)
            self.emit(asm.alu_imm(AluOp.AND, X, 0xF, bits=32), asm.alu_imm(AluOp.LSH, X, 2, bits=32))
        else:
            raise TranslationError(f"unsupported load {insn.code:#x} at {pc}")

    def packet_load(self, dst: Reg, size: int, k: int, *, indexed: bool) -> None:
        """``dst = ntoh(*(u<size*8> *)(data + k [+ X]))``, rejecting when out of bounds."""
        r1, r2, r3 = Reg.R1, Reg.R2, Reg.R3
        width = Size.of_bytes(size)
        if self.mode == "direct":
            if k + size > MAX_PACKET_OFF:
                self.emit(asm.ja(REJECT))
                return
            if indexed:
                self.emit(
                    asm.mov_reg(r1, X),
                    asm.alu_imm(AluOp.ADD, r1, k),
                    asm.jmp_imm(JmpOp.JGT, r1, MAX_PACKET_OFF - size, REJECT),
                    asm.alu_reg(AluOp.ADD, r1, DATA),
                    asm.mov_reg(r2, r1),
                    asm.alu_imm(AluOp.ADD, r2, size),
                    asm.jmp_reg(JmpOp.JGT, r2, DATA_END, REJECT),
                    asm.ldx(width, dst, r1, 0),
                )
            elif k + size <= 0x7FFF:
                self.emit(
                    asm.mov_reg(r1, DATA),
                    asm.alu_imm(AluOp.ADD, r1, k + size),
                    asm.jmp_reg(JmpOp.JGT, r1, DATA_END, REJECT),
                    asm.ldx(width, dst, DATA, k),
                )
            else:
                self.emit(
                    asm.mov_reg(r1, DATA),
                    asm.alu_imm(AluOp.ADD, r1, k),
                    asm.mov_reg(r2, r1),
                    asm.alu_imm(AluOp.ADD, r2, size),
                    asm.jmp_reg(JmpOp.JGT, r2, DATA_END, REJECT),
                    asm.ldx(width, dst, r1, 0),
                )
        else:
            # r3 = data + k (+ X), computed in 64 bits so X + k cannot wrap as a 32-bit sum would.
            if indexed:
                self.emit(asm.mov_imm(r3, k, bits=32), asm.alu_reg(AluOp.ADD, r3, X))
                self.emit(asm.alu_reg(AluOp.ADD, r3, DATA))
            else:
                self.emit(asm.mov_reg(r3, DATA))
                if 0 < k < 1 << 31:
                    self.emit(asm.alu_imm(AluOp.ADD, r3, k))
                elif k:
                    self.emit(asm.mov_imm(r2, k, bits=32), asm.alu_reg(AluOp.ADD, r3, r2))
            self.emit(
                asm.mov_reg(r2, r3),
                asm.alu_imm(AluOp.ADD, r2, size),
                asm.jmp_reg(JmpOp.JGT, r2, DATA_END, REJECT),
                asm.mov_reg(r1, Reg.R10),
                asm.alu_imm(AluOp.ADD, r1, PROBE_SLOT),
                asm.mov_imm(r2, size),
                asm.call(HELPER_PROBE_READ_KERNEL),
                asm.jmp_imm(JmpOp.JNE, Reg.R0, 0, REJECT),
                asm.ldx(width, dst, Reg.R10, PROBE_SLOT),
            )
        if size > 1:
            self.emit(asm.endian(dst, size * 8, big=True))

    def alu(self, pc: int, insn: CInsn) -> None:
        classic = insn.alu_op
        if classic is None:
            raise TranslationError(f"unsupported ALU instruction {insn.code:#x} at {pc}")
        if classic == cbpf.AluOp.NEG:
            self.emit(asm.neg(A, bits=32))
            return
        op = AluOp[classic.name]
        if insn.src == cbpf.Src.X:
            if op in (AluOp.DIV, AluOp.MOD):
                self.emit(asm.jmp_imm(JmpOp.JEQ, X, 0, REJECT, bits=32))
            if op in (AluOp.LSH, AluOp.RSH) and pc + 1 < len(self.prog.insns):
                # eBPF masks the count to 5 bits; libpcap shifts everything out.
                self.emit(
                    asm.jmp_imm(JmpOp.JGT, X, 31, f"s{pc}", bits=32),
                    asm.alu_reg(op, A, X, bits=32),
                    asm.ja(f"c{pc + 1}"),
                )
                self.marks[f"s{pc}"] = len(self.out)
                self.emit(asm.mov_imm(A, 0, bits=32))
                return
            self.emit(asm.alu_reg(op, A, X, bits=32))
            return
        k = insn.k
        if op in (AluOp.DIV, AluOp.MOD) and k == 0:
            self.emit(asm.ja(REJECT))
        elif op in (AluOp.LSH, AluOp.RSH) and k > 31:
            self.emit(asm.mov_imm(A, 0, bits=32))
        else:
            self.emit(asm.alu_imm(op, A, k, bits=32))

    def jump(self, pc: int, insn: CInsn) -> None:
        classic = insn.jmp_op
        if classic is None:
            raise TranslationError(f"unsupported jump {insn.code:#x} at {pc}")
        if classic == cbpf.JmpOp.JA:  # forward only: translate() refused backward ones (check_loops)
            self.emit(asm.ja(self.target(pc, insn.k)))
            return
        op = JmpOp[classic.name]
        t, f = self.target(pc, insn.jt), self.target(pc, insn.jf)
        by_x = insn.src == cbpf.Src.X

        def cond(o: JmpOp, dest: str) -> Instruction:
            if by_x:
                return asm.jmp_reg(o, A, X, dest, bits=32)
            return asm.jmp_imm(o, A, insn.k, dest, bits=32)

        if t == f:
            self.emit(asm.ja(t))
        elif insn.jf == 0:
            self.emit(cond(op, t))
        elif insn.jt == 0 and op in _NEGATED:
            self.emit(cond(_NEGATED[op], f))
        else:
            self.emit(cond(op, t), asm.ja(f))


def _finish(out: list[Instruction], marks: dict[str, int]) -> list[Instruction]:
    """Drop unreachable code (the verifier refuses it) and jumps to the next instruction; resolve."""

    def dest(insn: Instruction) -> int:
        assert insn.target is not None
        return marks[insn.target]

    reachable: set[int] = set()
    todo = [0]
    while todo:
        i = todo.pop()
        if i in reachable:
            continue
        reachable.add(i)
        insn = out[i]
        if insn.is_exit:
            continue
        if insn.is_jump and insn.target is not None:
            todo.append(dest(insn))
            if insn.jmp_op == JmpOp.JA:
                continue
        todo.append(i + 1)
    kept = sorted(reachable)
    # A goto whose destination is the next kept instruction does nothing.
    pruned: list[int] = []
    for pos, i in enumerate(kept):
        insn = out[i]
        nxt = kept[pos + 1] if pos + 1 < len(kept) else None
        if insn.is_jump and insn.jmp_op == JmpOp.JA and insn.target is not None and dest(insn) == nxt:
            continue
        pruned.append(i)
    keep = set(pruned)
    # A removed goto's own index may be a destination: move such marks to the next kept instruction.
    redirect: dict[int, int] = {}
    for i in sorted(set(marks.values())):
        j = i
        while j < len(out) and j not in keep:
            j += 1
        redirect[i] = j
    body: list[Instruction] = []
    for i in pruned:
        insn = dataclasses.replace(out[i], label=f"L{i}")
        if insn.target is not None:
            insn = dataclasses.replace(insn, target=f"L{redirect[dest(insn)]}")
        body.append(insn)
    return [dataclasses.replace(insn, label=None, target=None) for insn in asm.resolve(body)]
