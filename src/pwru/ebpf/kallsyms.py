"""Kernel symbols from ``/proc/kallsyms``: address -> (symbol, offset, module) and name -> address.

Each line is ``ADDRESS TYPE NAME`` optionally followed by ``\\t[MODULE]``. The file is read once and kept as
compact parallel columns sorted by address, so :meth:`Kallsyms.lookup` is a bisection: addresses in an
``array('Q')``, types in one ``bytes`` (a character per symbol), names in one ``\\n``-separated blob with an
``array`` of start offsets (decoded to ``str`` only when asked for), modules as an ``array('H')`` of indexes
into a short table. That is ~4 MB for the ~120k symbols of a distribution kernel, where a list of ``str`` per
column took ~35 MB; the text is parsed in slices so the transient peak stays small too. When ``kptr_restrict``
hides addresses (all zero) :attr:`Kallsyms.restricted` is true and address lookups answer ``None``.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pwru.ebpf.errors import EBPFError

KALLSYMS = Path("/proc/kallsyms")
TEXT_TYPES = frozenset("tT")
_TEXT_TYPE_CODES = frozenset(b"tT")
#: Serialises the first read of lazily loaded tables (a background preload and a look-up may race).
_LOAD_LOCK = threading.Lock()
#: Bytes of kallsyms text split at a time while parsing (bounds the temporary token lists).
PARSE_SLICE = 256 * 1024


class KallsymsError(EBPFError, ValueError):
    """A kallsyms file that does not parse."""


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
    """A parsed snapshot of the kernel's symbol table.

    ``Kallsyms.load(lazy=True)`` defers reading the file to the first question asked (a tracer that may
    never need a symbol name does not pay for it at start-up).
    """

    def __init__(self, lines: Iterable[tuple[int, str, str, str | None]] = (), *, source: Path | None = None):
        """Symbols from ``(address, type, name, module)`` rows in any order; or, with ``source`` and no rows,
        the kallsyms file at ``source`` read on first use.
        """
        self._source = source
        self._columns(_Columns.from_rows(lines))

    def _columns(self, cols: _Columns) -> None:
        cols.sort()
        self._addrs = cols.addrs
        self._types = cols.types
        self._blob = cols.blob
        self._starts = cols.starts
        self._mods = cols.mods
        self._modnames = cols.modnames
        self._by_name: dict[str, list[int]] | None = None
        self._scans = 0

    def _ready(self) -> None:
        if self._source is not None:
            with _LOAD_LOCK:
                if self._source is not None:  # not loaded meanwhile by another thread
                    self._columns(_Columns.read(self._source))
                    self._source = None

    def preload(self) -> threading.Thread:
        """Start reading a lazy table in a background thread (look-ups wait for it, never see it half-read)."""
        thread = threading.Thread(target=self._ready, name="kallsyms", daemon=True)
        thread.start()
        return thread

    @classmethod
    def load(cls, path: str | Path = KALLSYMS, *, lazy: bool = False) -> Kallsyms:
        """Read and parse a kallsyms file (on first use when ``lazy``)."""
        k = cls(source=Path(path))
        if not lazy:
            k._ready()
        return k

    @classmethod
    def parse(cls, text: str | bytes) -> Kallsyms:
        """Parse kallsyms text."""
        k = cls()
        k._columns(_Columns.parse(text.encode() if isinstance(text, str) else text))
        return k

    @property
    def restricted(self) -> bool:
        """Whether addresses are hidden (all zero) or there are no symbols."""
        self._ready()
        return not self._addrs or self._addrs[-1] == 0

    def __len__(self) -> int:
        self._ready()
        return len(self._addrs)

    def __iter__(self) -> Iterator[KSym]:
        self._ready()
        for i in range(len(self._addrs)):
            yield self._entry(i)

    def _name(self, i: int) -> str:
        return self._blob[self._starts[i] : self._starts[i + 1] - 1].decode()

    def _module(self, i: int) -> str | None:
        return self._modnames[self._mods[i]]

    def _entry(self, i: int) -> KSym:
        return KSym(self._addrs[i], chr(self._types[i]), self._name(i), self._module(i))

    def _all_names(self) -> list[str]:
        return self._blob[1:-1].decode().split("\n") if self._addrs else []

    def lookup(self, address: int) -> Symbol | None:
        """The nearest symbol at or below ``address`` (``None`` below the first symbol or when restricted).

        Among symbols sharing an address the first one listed wins.
        """
        if self.restricted or address < 0:
            return None
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        base = self._addrs[i]
        i = bisect.bisect_left(self._addrs, base)
        return Symbol(self._name(i), address - base, self._module(i))

    def _index(self) -> dict[str, list[int]]:
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            for i, name in enumerate(self._all_names()):
                lst = index.get(name)
                if lst is None:
                    index[name] = [i]
                else:
                    lst.append(i)
            self._by_name = index
        return self._by_name

    def _rows(self, name: str) -> list[int]:
        """Row numbers of ``name``; a C-speed scan of the name blob for the first few look-ups, the full index
        after that."""
        self._ready()
        if self._by_name is not None or self._scans > 32:
            return self._index().get(name, [])
        self._scans += 1
        rows: list[int] = []
        needle = b"\n" + name.encode() + b"\n"
        pos = self._blob.find(needle)
        while pos >= 0:
            rows.append(bisect.bisect_right(self._starts, pos + 1) - 1)
            pos = self._blob.find(needle, pos + 1)
        return rows

    def address(self, name: str, module: str | None = None) -> int | None:
        """Address of ``name``; with ``module`` only that module's symbol, else vmlinux's first, else any."""
        rows = self._rows(name)
        if not rows or self.restricted:
            return None
        if module is not None:
            rows = [i for i in rows if self._module(i) == module]
        else:
            rows = [i for i in rows if self._mods[i] == 0] or rows
        return self._addrs[rows[0]] if rows else None

    def addresses(self, wanted: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str | None], int]:
        """:meth:`address` of many ``(name, module)`` pairs in one pass over the names (those kallsyms lacks are
        left out). Asking :meth:`address` one by one builds the full name index after a few look-ups: ~25 MB
        for a distribution kernel, where this pass keeps only the rows asked for."""
        self._ready()
        pairs = set(wanted)
        if not pairs or self.restricted:
            return {}
        names = {name.encode() for name, _ in pairs}
        rows: dict[str, list[int]] = {}
        # The blob is "\nname0\nname1\n...\n"; split a slice at a time (as the parse does), so the names exist as
        # objects a slice's worth at once, not all ~120,000 on top of the run's peak.
        blob, pos, row = self._blob, 1, 0
        while pos < len(blob):
            end = blob.find(b"\n", min(pos + PARSE_SLICE, len(blob) - 1))
            for raw in bytes(blob[pos:end]).split(b"\n"):
                if raw in names:
                    rows.setdefault(raw.decode(), []).append(row)
                row += 1
            pos = end + 1
        found: dict[tuple[str, str | None], int] = {}
        for name, module in pairs:
            candidates = rows.get(name, [])
            if module is not None:
                candidates = [i for i in candidates if self._module(i) == module]
            else:
                candidates = [i for i in candidates if self._mods[i] == 0] or candidates
            if candidates:
                found[name, module] = self._addrs[candidates[0]]
        return found

    def symbols(self, name: str) -> list[KSym]:
        """Every entry named ``name`` (several static functions can share a name)."""
        return [self._entry(i) for i in self._rows(name)]

    def names(self) -> set[str]:
        """All symbol names."""
        self._ready()
        return set(self._all_names())

    def text_names(self, exclude: Iterable[tuple[int, int]] = ()) -> set[str]:
        """Names of text (code) symbols, types ``t`` and ``T``.

        ``exclude`` holds ``[start, end)`` address ranges of vmlinux text whose symbols are left out.
        """
        self._ready()
        skip = bytearray(len(self._addrs))
        for lo, hi in exclude:
            i = bisect.bisect_left(self._addrs, lo)
            j = bisect.bisect_left(self._addrs, hi)
            skip[i:j] = b"\1" * (j - i)
        rows = zip(self._types, self._all_names(), self._mods, skip, strict=True)
        return {n for t, n, m, s in rows if t in _TEXT_TYPE_CODES and not (s and m == 0)}


class _Columns:
    """The columns of a kallsyms table while it is being built (see the module documentation)."""

    def __init__(self) -> None:
        self.addrs = array("Q")
        self.types = bytearray()
        self.blob = bytearray(b"\n")  # every name is followed by a newline; starts[i] is where name i begins
        self.starts = array("L", [1])  # one more entry than names: starts[i + 1] - 1 is where name i ends
        self.mods = array("H")
        self.modnames: list[str | None] = [None]
        self._modindex: dict[str, int] = {}

    def _mod(self, name: str | None) -> int:
        if name is None:
            return 0
        i = self._modindex.get(name)
        if i is None:
            i = self._modindex[name] = len(self.modnames)
            self.modnames.append(name)
        return i

    def _names(self, names: list[bytes]) -> None:
        if names:
            self.blob += b"\n".join(names)
            self.blob += b"\n"
            self.starts.extend(itertools.accumulate((len(n) + 1 for n in names), initial=self.starts[-1]))
            del self.starts[-len(names) - 1]  # accumulate() repeats its initial value

    def add(self, address: int, type_: bytes, name: bytes, module: str | None) -> None:
        self.addrs.append(address)
        self.types += type_[:1]
        self._names([name])
        self.mods.append(self._mod(module))

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, str, str, str | None]]) -> _Columns:
        cols = cls()
        for address, type_, name, module in rows:
            cols.add(address, type_.encode(), name.encode(), module)
        return cols

    @classmethod
    def read(cls, path: Path) -> _Columns:
        """Parse the file at ``path``, read :data:`PARSE_SLICE` bytes at a time."""
        cols = cls()
        rest = b""
        with open(path, "rb") as f:
            while chunk := f.read(PARSE_SLICE):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                cols.feed(data[:cut])
                rest = data[cut:]
        cols.feed(rest)
        return cols

    @classmethod
    def parse(cls, data: bytes) -> _Columns:
        """Parse kallsyms text, a slice of whole lines at a time."""
        cols = cls()
        pos = 0
        while pos < len(data):
            end = data.rfind(b"\n", pos, pos + PARSE_SLICE) + 1 if pos + PARSE_SLICE < len(data) else len(data)
            if end <= pos:  # a line longer than a slice
                end = data.find(b"\n", pos) + 1 or len(data)
            cols.feed(data[pos:end])
            pos = end
        return cols

    def feed(self, data: bytes) -> None:
        """Add whole lines. Slices without a module column (vmlinux symbols, most of the file) are split in
        one go, three fields a line; lines of other slices one by one."""
        if b"\t" not in data:
            tokens = data.split()
            if len(tokens) % 3:
                raise KallsymsError("kallsyms: malformed line before the module symbols")
            self.addrs.extend(map(int, tokens[0::3], itertools.repeat(16)))
            self.types += b"".join(t[:1] for t in tokens[1::3])
            self._names(tokens[2::3])
            self.mods.extend(itertools.repeat(0, len(tokens) // 3))
            return
        for line in data.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            module = parts[3].strip(b"[]").decode() if len(parts) > 3 else None
            self.add(int(parts[0], 16), parts[1], parts[2], module)

    def sort(self) -> None:
        """Order the rows by address, stably (among equal addresses the first listed stays first).

        /proc/kallsyms is sorted but for its module symbols at the end. Rows are kept in place up to where the
        first out-of-order row belongs; only the rows after that are rebuilt, by merging slices, so a few
        module symbols cost a few copies rather than a per-row object for the whole table.
        """
        a = self.addrs
        drops = itertools.compress(itertools.count(1), map(operator.gt, a, itertools.islice(a, 1, None)))
        first = next(drops, None)  # rows [0, first) are sorted
        if first is None:
            return
        tail = sorted(range(first, len(a)), key=a.__getitem__)
        lo = bisect.bisect_right(a, a[tail[0]], 0, first)  # rows [0, lo) stay where they are
        # Detach rows [lo, end): their columns, with name offsets made relative to the detached blob.
        base = self.starts[lo]
        seg_addrs, seg_types, seg_mods = a[lo:], self.types[lo:], self.mods[lo:]
        seg_blob = self.blob[base:]
        seg_starts = array("L", map(base.__rsub__, self.starts[lo:]))
        del a[lo:], self.types[lo:], self.mods[lo:], self.blob[base:], self.starts[lo + 1 :]

        def copy(i: int, j: int) -> None:  # detached rows [i, j), in their order
            if i >= j:
                return
            self.addrs += seg_addrs[i:j]
            self.types += seg_types[i:j]
            self.mods += seg_mods[i:j]
            shift = len(self.blob) - seg_starts[i]
            self.blob += seg_blob[seg_starts[i] : seg_starts[j]]
            self.starts += array("L", map(shift.__add__, seg_starts[i + 1 : j + 1]))

        prev, end = 0, first - lo  # detached rows [0, end) are the sorted ones
        for row in tail:
            r = row - lo
            pos = bisect.bisect_right(seg_addrs, seg_addrs[r], prev, end)
            copy(prev, pos)
            copy(r, r + 1)
            prev = pos
        copy(prev, end)
