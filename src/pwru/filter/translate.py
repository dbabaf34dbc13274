"""Classic BPF -> eBPF: the body of ``filter(void *data, void *data_end, void *skb)``.

Calling convention of the emitted body: R1 = data, R2 = data_end, R3 = the skb on entry (probe mode: a
``struct sk_buff *``; direct mode: the tc/socket-filter program's ``struct __sk_buff *`` context), the
verdict in R0 (0 rejects, anything else accepts: the classic return value), ``exit`` to return, only
relative jumps inside. The skb is read only by Linux's ancillary loads (``ld [SKF_AD_OFF + n]``, see
``ancillary``); a body without them ignores R3.
Classic state lives in callee-saved registers so helper calls cannot clobber it:
R6 = data, R7 = data_end, R8 = A, R9 = X. Scratch words M[k] that the program uses are 4-byte stack slots;
probe-read mode also keeps one 8-byte bounce slot at R10-8, and a program with ancillary loads one 8-byte slot
for the skb pointer (at most 8 + 8 + 16*4 = 80 bytes of stack).

Two modes:

* ``direct``: data/data_end are packet pointers (tc, xdp, socket filters). Every load is bounds-checked
  against data_end the way the verifier wants; variable (``ind``) offsets are bounded to 0xffff first.
  Loads that reach beyond 0xfeff bytes reject (see DIRECT_HEADROOM).
* ``probe``: data/data_end are plain kernel addresses (kprobe, fentry, tp_btf). Every load is a bounds check,
  then ``bpf_probe_read_kernel`` into the bounce slot; a failing helper rejects.

Classic semantics kept: packet bytes are big-endian, out-of-bounds loads and division by X == 0 reject,
ALU is 32-bit, jumps compare unsigned 32-bit values, a shift by 32 or more gives 0 (as libpcap's
``bpf_filter`` does; eBPF itself would mask the count).

Jumps: eBPF jump offsets are 16-bit. A body whose jump spans more (a filter of thousands of terms) needs the
32-bit ``gotol`` (kernel 6.6+): with ``long_jumps`` a far ``goto`` becomes a ``gotol`` and a far conditional
jump a short one around (or to) a ``gotol``; without, :class:`FilterTooLarge` is raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from pwru.ebpf import asm
from pwru.ebpf.asm import AluOp, Instruction, JmpOp, Reg, Size
from pwru.filter import ancillary, cbpf
from pwru.filter.ancillary import Anc, Bits, SkbLayout, VlanPresence
from pwru.filter.cbpf import CInsn, CProgram

__all__ = [
    "LOOP_MESSAGE",
    "EmitMode",
    "FilterTooLarge",
    "LongJumps",
    "TranslationError",
    "check_loops",
    "reject_all",
    "translate",
]

EmitMode = Literal["direct", "probe"]

DATA, DATA_END, A, X = Reg.R6, Reg.R7, Reg.R8, Reg.R9
PROBE_SLOT = -8
# The verifier gives a packet pointer a range only while its largest offset (the data pointer's own fixed offset
# included) stays within 0xffff; direct-mode loads end below MAX_PACKET_OFF, which leaves callers DIRECT_HEADROOM
# bytes to pass a data pointer past skb->data (the kernel tests put a dummy Ethernet header there).
DIRECT_HEADROOM = 0x100
MAX_PACKET_OFF = 0xFFFF - DIRECT_HEADROOM
MAX_SHORT_JUMP = 0x7FFF
HELPER_PROBE_READ_KERNEL = 113
HELPER_GET_PRANDOM_U32 = 7
HELPER_GET_SMP_PROCESSOR_ID = 8
REJECT = "reject"
LOOP_MESSAGE = "libpcap compiled a loop (protochain), which the kernel verifier cannot bound"

# Classic operations translate to the eBPF ones of the same name (eBPF kept classic BPF's numbering, but
# each ISA has its own enum).
_NEGATED = {JmpOp.JEQ: JmpOp.JNE, JmpOp.JGT: JmpOp.JLE, JmpOp.JGE: JmpOp.JLT}
# Every eBPF comparison the translator emits but JSET has an opposite (a far jump's trampoline uses it).
_OPPOSITE = {JmpOp.JEQ: JmpOp.JNE, JmpOp.JNE: JmpOp.JEQ, JmpOp.JGT: JmpOp.JLE, JmpOp.JLE: JmpOp.JGT}
_OPPOSITE |= {JmpOp.JGE: JmpOp.JLT, JmpOp.JLT: JmpOp.JGE}


class TranslationError(ValueError):
    """A classic program this translator cannot express (an opcode libpcap never emits, a bad jump, an
    ancillary load the mode cannot read)."""


class FilterTooLarge(TranslationError):
    """A jump spans more than a 16-bit offset and long jumps were not allowed (the kernel lacks ``gotol``)."""


def reject_all() -> list[Instruction]:
    """The body for a link type the expression cannot match: ``r0 = 0; exit``."""
    return [asm.mov_imm(Reg.R0, 0), asm.exit_()]


def check_loops(prog: CProgram) -> None:
    """Raise :class:`TranslationError` (:data:`LOOP_MESSAGE`) when ``prog`` jumps backwards: libpcap's
    ``protochain`` loops, and the kernel verifier cannot bound such a loop."""
    if prog.first_backward_jump() is not None:
        raise TranslationError(LOOP_MESSAGE)


#: Whether ``gotol`` may be used: a value, or a function asked only when a jump is far (a kernel probe).
LongJumps = bool | Callable[[], bool]


def translate(
    prog: CProgram, mode: EmitMode = "direct", *, skb: SkbLayout | None = None, long_jumps: LongJumps = False
) -> list[Instruction]:
    """The eBPF body equivalent to ``prog``; jump offsets are resolved and no labels remain.

    ``skb`` is the kernel's ``struct sk_buff`` layout, needed in probe mode by a program with ancillary loads
    that read skb fields; ``long_jumps`` allows ``gotol`` (see the module's docstring)."""
    if mode not in ("direct", "probe"):
        raise ValueError(f"unknown emission mode {mode!r}")
    check_loops(prog)
    why = ancillary.refusal(prog, mode)
    if why is not None:
        raise TranslationError(why)
    if mode == "probe" and skb is None and ancillary.needs_skb(prog):
        raise TranslationError("the filter reads skb fields, and the kernel's struct sk_buff layout is unknown")
    return _Translator(prog, mode, skb).run(long_jumps)


class _Translator:
    def __init__(self, prog: CProgram, mode: EmitMode, skb: SkbLayout | None) -> None:
        self.prog = prog
        self.mode = mode
        self.skb = skb
        self.out: list[Instruction] = []
        self.marks: dict[str, int] = {}
        base = PROBE_SLOT if mode == "probe" else 0
        # The skb (probe) or context (direct) pointer, kept on the stack: no callee-saved register is free.
        self.skb_slot: int | None = None
        if ancillary.used(prog) - {Anc.CPU, Anc.RANDOM, Anc.ALU_XOR_X}:
            base -= 8
            self.skb_slot = base
        self.mem = {k: base - 4 * (i + 1) for i, k in enumerate(prog.scratch_slots())}

    def emit(self, *insns: Instruction) -> None:
        self.out.extend(insns)

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.out)

    def run(self, long_jumps: LongJumps) -> list[Instruction]:
        n = len(self.prog.insns)
        if n == 0:
            return reject_all()
        for k in self.mem:
            if not 0 <= k < cbpf.MEMWORDS:
                raise TranslationError(f"scratch memory index {k} out of range")
        if self.skb_slot is not None:
            self.emit(asm.stx(Size.DW, Reg.R10, self.skb_slot, Reg.R3))
        self.emit(
            asm.mov_reg(DATA, Reg.R1),
            asm.mov_reg(DATA_END, Reg.R2),
            asm.mov_imm(A, 0, bits=32),
            asm.mov_imm(X, 0, bits=32),
        )
        self.emit(*(asm.st(Size.W, Reg.R10, off, 0) for off in self.mem.values()))
        for pc, insn in enumerate(self.prog.insns):
            self.mark(f"c{pc}")
            self.one(pc, insn)
        self.mark(REJECT)
        self.emit(asm.mov_imm(Reg.R0, 0, bits=32), asm.exit_())
        return _finish(self.out, self.marks, long_jumps)

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
        elif (anc := ancillary.ancillary(insn)) is not None:
            self.ancillary(pc, anc)
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
            )
            self.probe_read(dst, size)
        if size > 1:
            self.emit(asm.endian(dst, size * 8, big=True))

    def probe_read(self, dst: Reg, size: int) -> None:
        """``dst = *(u<size*8> *)r3`` through ``bpf_probe_read_kernel`` and the bounce slot; rejects when
        the helper fails."""
        self.emit(
            asm.mov_reg(Reg.R1, Reg.R10),
            asm.alu_imm(AluOp.ADD, Reg.R1, PROBE_SLOT),
            asm.mov_imm(Reg.R2, size),
            asm.call(HELPER_PROBE_READ_KERNEL),
            asm.jmp_imm(JmpOp.JNE, Reg.R0, 0, REJECT),
            asm.ldx(Size.of_bytes(size), dst, Reg.R10, PROBE_SLOT),
        )

    # --- ancillary loads (see pwru.filter.ancillary) -------------------------------------------------

    def ancillary(self, pc: int, anc: Anc) -> None:
        """``A = <anc>`` (ALU_XOR_X: ``A ^= X``), in the kernel's meaning."""
        if anc == Anc.ALU_XOR_X:
            self.emit(asm.alu_reg(AluOp.XOR, A, X, bits=32))
        elif anc in (Anc.CPU, Anc.RANDOM):
            helper = HELPER_GET_SMP_PROCESSOR_ID if anc == Anc.CPU else HELPER_GET_PRANDOM_U32
            self.emit(asm.call(helper), asm.mov_reg(A, Reg.R0, bits=32))
        elif self.mode == "direct":
            self.ctx_field(pc, anc)
        else:
            self.skb_field(pc, anc)

    def ctx_field(self, pc: int, anc: Anc) -> None:
        """Direct mode: ``A`` from the program's ``__sk_buff`` context, as the kernel's classic filters on
        tc and sockets see it."""
        field = {
            Anc.PROTOCOL: "protocol",
            Anc.PKTTYPE: "pkt_type",
            Anc.IFINDEX: "ifindex",
            Anc.MARK: "mark",
            Anc.QUEUE: "queue_mapping",
            Anc.RXHASH: "hash",
            Anc.VLAN_TAG: "vlan_tci",
            Anc.VLAN_TAG_PRESENT: "vlan_present",
            Anc.VLAN_TPID: "vlan_proto",
        }[anc]
        assert self.skb_slot is not None
        self.emit(
            asm.ldx(Size.DW, Reg.R3, Reg.R10, self.skb_slot),
            asm.ldx(Size.W, A, Reg.R3, ancillary.SKB_CTX[field]),
        )
        if anc in (Anc.PROTOCOL, Anc.VLAN_TPID):  # __be16 in the low half
            self.emit(asm.endian(A, 16, big=True))

    def skb_read(self, dst: Reg, off: int, size: int, base: Reg | None = None) -> None:
        """Probe mode: ``dst = *(u<size*8> *)(base + off)``, base defaulting to the skb."""
        if base is None:
            assert self.skb_slot is not None
            self.emit(asm.ldx(Size.DW, Reg.R3, Reg.R10, self.skb_slot))
        else:
            self.emit(asm.mov_reg(Reg.R3, base))
        if off:
            self.emit(asm.alu_imm(AluOp.ADD, Reg.R3, off))
        self.probe_read(dst, size)

    def skb_bits(self, bits: Bits) -> None:
        """Probe mode: ``A`` = a bitfield of the skb."""
        self.skb_read(A, bits.byte, 1)
        if bits.shift:
            self.emit(asm.alu_imm(AluOp.RSH, A, bits.shift, bits=32))
        if bits.mask:
            self.emit(asm.alu_imm(AluOp.AND, A, bits.mask, bits=32))

    def skb_field(self, pc: int, anc: Anc) -> None:
        """Probe mode: ``A`` from ``struct sk_buff`` (see :class:`~pwru.filter.ancillary.SkbLayout`)."""
        skb = self.skb
        assert skb is not None
        done = f"a{pc}"
        if anc in (Anc.PROTOCOL, Anc.VLAN_TPID):
            self.skb_read(A, skb.protocol if anc == Anc.PROTOCOL else skb.vlan_proto, 2)
            self.emit(asm.endian(A, 16, big=True))
        elif anc in (Anc.MARK, Anc.RXHASH):
            self.skb_read(A, skb.mark if anc == Anc.MARK else skb.hash, 4)
        elif anc == Anc.QUEUE:
            self.skb_read(A, skb.queue_mapping, 2)
        elif anc in (Anc.IFINDEX, Anc.HATYPE):
            # No device (the local output path before one is chosen) reads as 0, never a device's number.
            self.skb_read(A, skb.dev, 8)
            self.emit(asm.jmp_imm(JmpOp.JEQ, A, 0, done))
            if anc == Anc.IFINDEX:
                self.skb_read(A, skb.dev_ifindex, 4, base=A)
            else:
                self.skb_read(A, skb.dev_type, 2, base=A)
        elif anc == Anc.VLAN_TAG:
            self.skb_read(A, skb.vlan_tci, 2)
            if skb.vlan == VlanPresence.TCI_CFI:
                self.emit(asm.alu_imm(AluOp.AND, A, 0xEFFF, bits=32))
        elif anc == Anc.VLAN_TAG_PRESENT:
            if skb.vlan == VlanPresence.VLAN_ALL:
                self.skb_read(A, skb.vlan_present.byte, 4)
                self.emit(asm.jmp_imm(JmpOp.JEQ, A, 0, done), asm.mov_imm(A, 1, bits=32))
            elif skb.vlan == VlanPresence.VLAN_PRESENT_BIT:
                self.skb_bits(skb.vlan_present)
            else:
                self.skb_read(A, skb.vlan_tci, 2)
                self.emit(asm.alu_imm(AluOp.RSH, A, 12, bits=32), asm.alu_imm(AluOp.AND, A, 1, bits=32))
        elif anc == Anc.PKTTYPE:
            self.packet_type(pc, skb)
        else:  # ancillary.refusal() keeps the others out
            raise TranslationError(f"unsupported ancillary load {anc.name} at {pc}")
        self.mark(done)

    def packet_type(self, pc: int, skb: SkbLayout) -> None:
        """Probe mode: the packet type, as ``skb->pkt_type`` but that an skb on its way out reads
        PACKET_OUTGOING rather than PACKET_HOST.

        The kernel marks PACKET_OUTGOING only the copies it hands to packet sockets: the skbs pwru sees on
        the transmit path say PACKET_HOST, and ``outbound`` would never match. An skb is on its way out when
        it has no MAC header yet (built locally, before the device layer) or its data starts at its MAC
        header (``dev_queue_xmit`` sets it so); a received one's data is past it (``eth_type_trans``)."""
        done, out = f"a{pc}", f"o{pc}"
        self.skb_bits(skb.pkt_type)
        self.emit(asm.jmp_imm(JmpOp.JNE, A, ancillary.PACKET_HOST, done))
        self.skb_read(A, skb.mac_header, 2)
        self.emit(asm.jmp_imm(JmpOp.JEQ, A, ancillary.SKB_HDR_UNSET, out))
        self.skb_read(Reg.R1, skb.head, 8)
        self.emit(asm.alu_reg(AluOp.ADD, A, Reg.R1))  # A = the MAC header's address
        self.skb_read(Reg.R1, skb.data, 8)
        self.emit(
            asm.jmp_reg(JmpOp.JEQ, A, Reg.R1, out),
            asm.mov_imm(A, ancillary.PACKET_HOST, bits=32),
            asm.ja(done),
        )
        self.mark(out)
        self.emit(asm.mov_imm(A, ancillary.PACKET_OUTGOING, bits=32))

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


def _finish(out: list[Instruction], marks: dict[str, int], long_jumps: LongJumps) -> list[Instruction]:
    """Drop unreachable code (the verifier refuses it) and jumps to the next instruction; widen far jumps;
    resolve."""

    def dest(insn: Instruction) -> int:
        assert insn.target is not None
        return marks[insn.target]

    # Only the translator's own jumps carry a target; gotos are JMP|JA (opcode 0x05), exit 0x95.
    goto, exit_op = asm.Class.JMP | JmpOp.JA, asm.Class.JMP | JmpOp.EXIT
    reachable = bytearray(len(out))
    todo = [0]
    while todo:
        i = todo.pop()
        if reachable[i]:
            continue
        reachable[i] = 1
        insn = out[i]
        if insn.op == exit_op:
            continue
        if insn.target is not None:
            todo.append(dest(insn))
            if insn.op == goto:
                continue
        todo.append(i + 1)
    kept = [i for i in range(len(out)) if reachable[i]]
    # A goto whose destination is the next kept instruction does nothing.
    pruned: list[int] = []
    for pos, i in enumerate(kept):
        insn = out[i]
        nxt = kept[pos + 1] if pos + 1 < len(kept) else None
        if insn.op == goto and insn.target is not None and dest(insn) == nxt:
            continue
        pruned.append(i)
    # A removed goto's own index may be a destination: move such marks to the next kept instruction.
    position = [-1] * (len(out) + 1)
    nxt_kept = len(pruned)
    for i in range(len(out), -1, -1):
        if nxt_kept > 0 and i == pruned[nxt_kept - 1]:
            nxt_kept -= 1
        position[i] = nxt_kept  # index in ``pruned`` of the first kept instruction at or after i
    targets = [position[dest(out[i])] if out[i].target is not None else -1 for i in pruned]
    body = [out[i] for i in pruned]
    return _widen(body, targets, long_jumps)


def _widen(body: list[Instruction], targets: list[int], long_jumps: LongJumps) -> list[Instruction]:
    """Resolve jumps (``targets[i]``: the index in ``body`` that instruction i jumps to, -1 for none).

    A jump beyond a 16-bit offset becomes a ``gotol`` (a goto) or a short conditional jump over (or, for
    ``jset``, which has no opposite, to) a ``gotol``; each widening moves code, so this repeats until nothing
    more is far."""
    wide: set[int] = set()
    while True:
        # Where each instruction of ``body`` starts once the wide ones are expanded.
        start = [0] * (len(body) + 1)
        for i, insn in enumerate(body):
            size = 1
            if wide and i in wide and insn.jmp_op != JmpOp.JA:
                size = 2 if insn.jmp_op in _OPPOSITE else 3
            start[i + 1] = start[i] + size
        far = {
            i
            for i, t in enumerate(targets)
            if t >= 0 and i not in wide and not -MAX_SHORT_JUMP - 1 <= start[t] - start[i] - 1 <= MAX_SHORT_JUMP
        }
        if not far:
            break
        if callable(long_jumps):
            long_jumps = long_jumps()
        if not long_jumps:
            i = min(far)
            raise FilterTooLarge(
                f"a jump spans {start[targets[i]] - start[i] - 1} instructions, beyond the 32767 of a 16-bit "
                "offset, and the kernel has no long jumps (gotol, Linux 6.6+)"
            )
        wide |= far
    result: list[Instruction] = []
    for i, insn in enumerate(body):
        t = targets[i]
        if t < 0:
            result.append(insn)
        elif i not in wide:
            result.append(Instruction(insn.op, insn.dst, insn.src, start[t] - start[i] - 1, insn.imm))
        elif insn.jmp_op == JmpOp.JA:
            result.append(_gotol(start[t] - start[i] - 1))
        elif insn.jmp_op in _OPPOSITE:  # if !cond goto +1; gotol target
            op = (insn.op & 0x0F) | _OPPOSITE[insn.jmp_op]
            result.append(dataclasses.replace(insn, op=op, off=1, label=None, target=None))
            result.append(_gotol(start[t] - start[i] - 2))
        else:  # if cond goto +1; goto +1; gotol target
            result.append(dataclasses.replace(insn, off=1, label=None, target=None))
            result.append(asm.ja(1))
            result.append(_gotol(start[t] - start[i] - 3))
    return result


def _gotol(rel: int) -> Instruction:
    """``gotol rel`` (BPF_JMP32 | BPF_JA, the offset in imm)."""
    return Instruction(asm.Class.JMP32 | JmpOp.JA, imm=rel)
