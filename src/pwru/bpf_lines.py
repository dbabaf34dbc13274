"""The source line of an address inside a JIT-compiled BPF program (the caller of a BPF helper, a stack frame).

kallsyms names a JIT-compiled program ``bpf_prog_<tag>_<name>`` (module ``bpf``). The program with that tag is
found among the loaded ones (``BPF_PROG_GET_NEXT_ID``), and its line info read with the JIT addresses
(:meth:`pwru.ebpf.prog.Program.jited_lines`): the line an address belongs to is the last one starting at or
before it. Needs the program loaded with BTF line info (clang -g) and a kernel that shows JIT addresses to the
caller (root; ``bpf_dump_raw_ok``). Each program is read once; one that cannot be read is remembered as such.
"""

from __future__ import annotations

import bisect
import os
import re
import threading

from pwru.ebpf import prog
from pwru.ebpf.errors import EBPFError

#: kallsyms' name of a JIT-compiled program (or one of its subprograms): ``bpf_prog_<tag>_<name>``.
PROG_SYMBOL = re.compile(r"bpf_prog_([0-9a-f]{16})(?:_.*)?")
#: Source text longer than this is cut (with ``...``).
TEXT_MAX = 60


class BpfLines:
    """tag -> the program's lines by address, read on first use."""

    def __init__(self) -> None:
        self._by_tag: dict[str, tuple[list[int], list[prog.JitedLine]]] = {}
        self._lock = threading.Lock()

    def _load(self, tag: str) -> tuple[list[int], list[prog.JitedLine]]:
        for prog_id in prog.loaded_ids():
            try:
                with prog.Program.from_id(prog_id) as p:
                    if p.info().tag != tag:
                        continue
                    lines = p.jited_lines()
            except (OSError, EBPFError):
                continue
            return [ln.address for ln in lines], lines
        return [], []

    def line(self, symbol: str, addr: int) -> str:
        """``file.c:42: text`` for ``addr`` inside the program kallsyms calls ``symbol``; ``""`` when unknown.
        ``addr`` is a return address (a caller's): the call before it is what is looked up."""
        m = PROG_SYMBOL.fullmatch(symbol)
        if m is None:
            return ""
        tag = m.group(1)
        with self._lock:
            found = self._by_tag.get(tag)
            if found is None:
                found = self._by_tag[tag] = self._load(tag)
        addrs, lines = found
        i = bisect.bisect_right(addrs, addr - 1) - 1
        if i < 0:
            return ""
        ln = lines[i]
        text = " ".join(ln.text.split())
        if len(text) > TEXT_MAX:
            text = text[: TEXT_MAX - 3] + "..."
        return f"{os.path.basename(ln.file)}:{ln.line}: {text}" if ln.file else ""
