"""Packet filters: a pcap expression compiled by libpcap to classic BPF, translated to eBPF.

``compile_filter(expr)`` compiles for both link types pwru filters on: Ethernet (``l2``, the skb from its MAC
header) and raw IP (``l3``, from its network header). ``CompiledFilter.to_ebpf(link, mode)`` is the body that
replaces the kernel program's ``filter_pcap_l2``/``filter_pcap_l3`` stub (see ``translate`` for the calling
convention).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Literal

from pwru.ebpf.asm import Instruction
from pwru.filter import ancillary
from pwru.filter.ancillary import SkbLayout
from pwru.filter.cbpf import CProgram
from pwru.filter.pcap import (
    DLT_EN10MB,
    DLT_RAW,
    FilterError,
    FilterMemoryExhausted,
    compile_cbpf,
    compile_cbpf_bounded,
    compile_memory_limit,
)
from pwru.filter.translate import (
    EmitMode,
    FilterTooLarge,
    LongJumps,
    TranslationError,
    check_loops,
    reject_all,
    translate,
)

__all__ = [
    "CompiledFilter",
    "FilterError",
    "FilterTooLarge",
    "Link",
    "LongJumps",
    "SkbLayout",
    "TranslationError",
    "compile_filter",
]

Link = Literal["l2", "l3"]


@dataclasses.dataclass(frozen=True)
class CompiledFilter:
    """An expression compiled for Ethernet (``l2``) and raw IP (``l3``); None where libpcap refused that
    link type (``arp`` has no raw-IP form, for example)."""

    expr: str
    l2: CProgram | None
    l3: CProgram | None
    l2_error: str | None = None
    l3_error: str | None = None

    def classic(self, link: Link) -> CProgram | None:
        if link == "l2":
            return self.l2
        if link == "l3":
            return self.l3
        raise ValueError(f"unknown link type {link!r}")

    def to_ebpf(
        self, link: Link, mode: EmitMode, *, skb: SkbLayout | None = None, long_jumps: LongJumps = False
    ) -> list[Instruction]:
        """The eBPF body for ``link`` in ``mode`` ("direct" or "probe"); reject-all if it did not compile.
        ``skb`` and ``long_jumps`` as for :func:`~pwru.filter.translate.translate`; raises
        :class:`TranslationError` (:class:`FilterTooLarge`) for what the mode or the kernel cannot do."""
        prog = self.classic(link)
        if prog is None:
            if mode not in ("direct", "probe"):
                raise ValueError(f"unknown emission mode {mode!r}")
            return reject_all()
        return translate(prog, mode, skb=skb, long_jumps=long_jumps)

    @property
    def needs_skb(self) -> bool:
        """Whether probe mode needs the kernel's ``struct sk_buff`` layout (ancillary loads of skb fields)."""
        return any(p is not None and ancillary.needs_skb(p) for p in (self.l2, self.l3))

    def dump(self) -> str:
        """Both classic programs, ``tcpdump -d`` style, for debugging."""
        parts = []
        for link, prog, err in (("l2", self.l2, self.l2_error), ("l3", self.l3, self.l3_error)):
            parts.append(f"; {link} ({'Ethernet' if link == 'l2' else 'raw IP'})")
            parts.append(prog.dump() if prog is not None else f"; not compiled: {err}")
        return "\n".join(parts)


#: From this many terms on, compiling takes seconds (libpcap's optimizer is superlinear): say so first, and
#: compile in a child process with bounded memory (``pcap.compile_cbpf_bounded``).
BIG_FILTER_TERMS = 1000
_CONNECTIVES = re.compile(r"(?<![\w.:-])(?:and|or)(?![\w.:-])|&&|\|\|")


def terms(expr: str) -> int:
    """How many terms ``expr`` joins with ``and``/``or`` (a size, for the user; not a parse)."""
    return len(_CONNECTIVES.findall(expr)) + 1


def compile_filter(expr: str, progress: Callable[[str], None] | None = None) -> CompiledFilter | None:
    """Compile ``expr`` with libpcap for both link types.

    Returns None for an empty expression (match everything, add no code). Raises :class:`FilterError` when
    libpcap accepts it for neither link type (the Ethernet error message is the one reported), or when a big
    expression needs more memory than :func:`~pwru.filter.pcap.compile_memory_limit` allows. ``progress`` gets
    one line before a big expression's compilation starts.
    """
    if not expr.strip():
        return None
    n = terms(expr)
    big = n >= BIG_FILTER_TERMS
    limit = compile_memory_limit() if big else 0
    if progress is not None and big:
        progress(f"Compiling the pcap filter ({n:,} terms, at most {limit >> 20:,} MiB)...")
    progs: dict[int, CProgram | None] = {}
    errors: dict[int, FilterError] = {}
    for dlt in (DLT_EN10MB, DLT_RAW):
        try:
            progs[dlt] = compile_cbpf_bounded(expr, dlt, limit) if big else compile_cbpf(expr, dlt)
        except FilterMemoryExhausted:
            raise  # the other link type would only take as long to fail again
        except FilterError as e:
            progs[dlt] = None
            errors[dlt] = e
    if progs[DLT_EN10MB] is None and progs[DLT_RAW] is None:
        raise errors[DLT_EN10MB]
    for prog in progs.values():
        if prog is None:
            continue
        try:
            check_loops(prog)  # refused now rather than when the body is emitted
        except TranslationError as e:
            raise FilterError(expr, str(e)) from None
    return CompiledFilter(
        expr,
        progs[DLT_EN10MB],
        progs[DLT_RAW],
        errors[DLT_EN10MB].message if DLT_EN10MB in errors else None,
        errors[DLT_RAW].message if DLT_RAW in errors else None,
    )
