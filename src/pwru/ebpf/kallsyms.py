"""Kernel symbols from ``/proc/kallsyms``: address -> (symbol, offset, module) and name -> address.

Each line is ``ADDRESS TYPE NAME`` optionally followed by ``\\t[MODULE]``. The file is read once and kept as
parallel columns sorted by address, so :meth:`Kallsyms.lookup` is a bisection. Addresses stay as their
fixed-width hex text (which sorts like the numbers) and are turned into ints only when asked for: that keeps
loading the ~120k lines fast. When ``kptr_restrict`` hides addresses (all zero) :attr:`Kallsyms.restricted`
is true and address lookups answer ``None``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")
TEXT_TYPES = frozenset("tT")


@dataclass(frozen=True, slots=True)
class Symbol:
    """A symbol found for an address: ``offset`` bytes past ``name``; ``module`` is None for vmlinux."""

    name: str
    offset: int
    module: str | None = None

    def __str__(self) -> str:
        where = f" [{self.module}]" if self.module else ""
        return f"{self.name}+{self.offset:#x}{where}"


@dataclass(frozen=True, slots=True)
class KSym:
    """One kallsyms line."""

    address: int
    type: str
    name: str
    module: str | None


class Kallsyms:
    """A parsed snapshot of the kernel's symbol table."""

    def __init__(
        self, addrs: list[str], types: list[str], names: list[str], modules: list[str | None]
    ) -> None:
        """Columns of equal length; ``addrs`` are hex strings of one width (they are sorted here)."""
        if any(addrs[i] > addrs[i + 1] for i in range(len(addrs) - 1)):
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = [addrs[i] for i in order]
            types = [types[i] for i in order]
            names = [names[i] for i in order]
            modules = [modules[i] for i in order]
        self._addrs = addrs
        self._types = types
        self._names = names
        self._modules = modules
        self._width = len(addrs[0]) if addrs else 16
        self._by_name: dict[str, list[int]] | None = None
        self._scans = 0
        self.restricted = not addrs or int(addrs[-1], 16) == 0

    @classmethod
    def load(cls, path: str | Path = KALLSYMS) -> Kallsyms:
        """Read and parse a kallsyms file."""
        return cls.parse(Path(path).read_bytes().decode())

    @classmethod
    def parse(cls, text: str) -> Kallsyms:
        """Parse kallsyms text.

        vmlinux symbols come first and have exactly three fields, so that block is split in one go; lines
        from the first one with a module column on are parsed one by one.
        """
        tab = text.find("\t")
        cut = len(text) if tab < 0 else text.rfind("\n", 0, tab) + 1
        tokens = text[:cut].split()
        if len(tokens) % 3:
            raise ValueError("kallsyms: malformed line before the module symbols")
        addrs, types, names = tokens[0::3], tokens[1::3], tokens[2::3]
        modules: list[str | None] = [None] * len(addrs)
        for line in text[cut:].splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            addrs.append(parts[0])
            types.append(parts[1])
            names.append(parts[2])
            modules.append(parts[3].strip("[]") if len(parts) > 3 else None)
        return cls(addrs, types, names, modules)

    def __len__(self) -> int:
        return len(self._addrs)

    def __iter__(self) -> Iterator[KSym]:
        for i in range(len(self._addrs)):
            yield self._entry(i)

    def _entry(self, i: int) -> KSym:
        return KSym(int(self._addrs[i], 16), self._types[i], self._names[i], self._modules[i])

    def lookup(self, address: int) -> Symbol | None:
        """The nearest symbol at or below ``address`` (``None`` below the first symbol or when restricted).

        Among symbols sharing an address the first one listed wins.
        """
        if self.restricted or address < 0:
            return None
        key = f"{address:0{self._width}x}"
        if len(key) > self._width:
            return None
        i = bisect.bisect_right(self._addrs, key) - 1
        if i < 0:
            return None
        i = bisect.bisect_left(self._addrs, self._addrs[i])
        return Symbol(self._names[i], address - int(self._addrs[i], 16), self._modules[i])

    def _index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            for i, name in enumerate(self._names):
                lst = index.get(name)
                if lst is None:
                    index[name] = [i]
                else:
                    lst.append(i)
            self._by_name = index
        return self._by_name

    def _rows(self, name: str) -> list[int]:
        """Row numbers of ``name``; a C-speed scan for the first few look-ups, the full index after that."""
        if self._by_name is not None or self._scans > 32:
            return self._index().get(name, [])
        self._scans += 1
        rows: list[int] = []
        names = self._names
        i = -1
        while True:
            try:
                i = names.index(name, i + 1)
            except ValueError:
                return rows
            rows.append(i)

    def address(self, name: str, module: str | None = None) -> int | None:
        """Address of ``name``; with ``module`` only that module's symbol, else vmlinux's first, else any."""
        rows = self._rows(name)
        if not rows or self.restricted:
            return None
        if module is not None:
            rows = [i for i in rows if self._modules[i] == module]
        else:
            rows = [i for i in rows if self._modules[i] is None] or rows
        return int(self._addrs[rows[0]], 16) if rows else None

    def symbols(self, name: str) -> list[KSym]:
        """Every entry named ``name`` (several static functions can share a name)."""
        return [self._entry(i) for i in self._rows(name)]

    def names(self) -> set[str]:
        """All symbol names."""
        return set(self._names)

    def text_names(self, exclude: Iterable[tuple[int, int]] = ()) -> set[str]:
        """Names of text (code) symbols, types ``t`` and ``T``.

        ``exclude`` holds ``[start, end)`` address ranges of vmlinux text whose symbols are left out.
        """
        skip = bytearray(len(self._addrs))
        w = self._width
        for lo, hi in exclude:
            i = bisect.bisect_left(self._addrs, f"{lo:0{w}x}")
            j = bisect.bisect_left(self._addrs, f"{hi:0{w}x}")
            skip[i:j] = b"\1" * (j - i)
        rows = zip(self._types, self._names, self._modules, skip, strict=True)
        return {n for t, n, m, s in rows if t in TEXT_TYPES and not (s and m is None)}
