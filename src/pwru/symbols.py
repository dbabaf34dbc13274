"""Symbolisation: the numbers in records turned into words, for the outputs (:class:`pwru.output.Names`).

Kernel addresses through kallsyms (read lazily, on first use), table-indexed probes through the attach plan's
probe names, drop reasons through the names discovery read from BTF, processes through ``/proc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pwru.bpf_lines import BpfLines
from pwru.ebpf.kallsyms import Kallsyms
from pwru.output.names import ProcessNames


class Symbols:
    """Implements :class:`pwru.output.Names` for one run."""

    def __init__(
        self,
        ksyms: Kallsyms,
        probe_names: Sequence[str],
        reasons: Mapping[int, str],
        index_kind: int,
        procs: ProcessNames | None = None,
    ) -> None:
        self._ksyms = ksyms
        self._probes = probe_names
        self._reasons = reasons
        self._index_kind = index_kind  # the record header's probe_kind for "index into the probe table"
        self._procs = procs if procs is not None else ProcessNames()
        self._func_cache: dict[int, str] = {}
        self._bpf_lines = BpfLines()

    def probe_name(self, probe_kind: int, probe: int) -> str:
        if probe_kind == self._index_kind:
            return self._probes[probe] if probe < len(self._probes) else f"probe#{probe}"
        name = self._func_cache.get(probe)
        if name is None:
            sym = self._ksyms.lookup(probe)
            name = f"{probe:#x}" if sym is None else sym.name + (f"[{sym.module}]" if sym.module else "")
            self._func_cache[probe] = name
        return name

    def reason_name(self, reason: int) -> str:
        return self._reasons.get(reason, "")

    def symbol(self, addr: int) -> str:
        sym = self._ksyms.lookup(addr)
        if sym is None:
            return f"{addr:#x}"
        mod = f" [{sym.module}]" if sym.module else ""
        text = f"{sym.name}+{sym.offset:#x}{mod}"
        if sym.module == "bpf":  # a JIT-compiled BPF program: its source line, when it has line info
            line = self._bpf_lines.line(sym.name, addr)
            if line:
                text += f" ({line})"
        return text

    def process(self, pid: int, comm: bytes) -> str:
        return self._procs(pid, comm)
