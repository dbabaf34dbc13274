"""When libpcap's offline verdict is a reference: the filter tests compare with it only where it is defined."""

from __future__ import annotations

from pwru.filter import cbpf
from pwru.filter.cbpf import CProgram


def uninitialized_scratch_read(prog: CProgram) -> int | None:
    """The first instruction that may read a scratch word M[k] no path to it has written, or None.

    libpcap's interpreter leaves its scratch memory uninitialized (the kernel refuses such a classic program),
    so on those paths its verdict depends on stack garbage; the translation reads 0 there. libpcap itself
    emits such reads: ``not (geneve 0 or net 10.0.0.0/16)`` on a non-IP frame reads M[0] that only the Geneve
    branch writes (tests/data/filter/regressions.txt keeps it)."""
    n = len(prog.insns)
    written: list[frozenset[int] | None] = [None] * (n + 1)  # words written on every path reaching pc
    written[0] = frozenset()
    for pc, insn in enumerate(prog.insns):
        here = written[pc]
        if here is None:
            continue  # unreachable
        if insn.cls in (cbpf.Class.LD, cbpf.Class.LDX) and insn.mode == cbpf.Mode.MEM and insn.k not in here:
            return pc
        out = here | {insn.k} if insn.cls in (cbpf.Class.ST, cbpf.Class.STX) else here
        if insn.cls == cbpf.Class.RET:
            nxt: list[int] = []
        elif insn.cls == cbpf.Class.JMP and insn.jmp_op == cbpf.JmpOp.JA:
            nxt = [pc + 1 + insn.k]
        elif insn.cls == cbpf.Class.JMP:
            nxt = [pc + 1 + insn.jt, pc + 1 + insn.jf]
        else:
            nxt = [pc + 1]
        for d in nxt:
            prev = written[d]
            written[d] = out if prev is None else prev & out
    return None
