"""The event pwru's kernel side reports for one skb at one probe.

The layout lives in ``bpf/pwru.h`` only; :class:`EventDecoder` reads member offsets from the compiled object's
BTF, so nothing here repeats it.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path

from pwru.ebpf import btf

KIND_FUNC = 0
KIND_TRACEPOINT = 1

EVENT_STRUCT = "event"
# Members of struct event holding nested structs whose members become flat Event fields.
_NESTED = ("meta", "tuple")

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class Event:
    """One skb seen at one probe (``struct event`` in ``bpf/pwru.h``, nested structs flattened)."""

    ts: int
    addr: int
    skb: int
    caller: int
    location: int
    stack_id: int
    reason: int
    pid: int
    cpu: int
    kind: int
    comm: bytes
    # meta
    netns: int
    mark: int
    ifindex: int
    len: int
    mtu: int
    protocol: int
    ifname: bytes
    # tuple
    saddr: bytes  # 16 bytes; IPv4 in the first 4
    daddr: bytes
    sport: int
    dport: int
    l3_proto: int
    l4_proto: int
    tcp_flags: int


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))


class LayoutError(ValueError):
    """The object's ``struct event`` does not match :class:`Event` (a header/decoder mismatch)."""


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """Where one :class:`Event` field sits in a record: byte ``offset``, ``size``, and its ``struct`` code."""

    name: str
    offset: int
    size: int
    code: str  # a struct module format item: "Q", "i", "16s", ...


_INT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
              (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}  # fmt: skip


def _field_code(spec: btf.Spec, type_id: int, where: str) -> tuple[int, str]:
    """``(size, struct code)`` for an integer, enum or byte-array member."""
    t = spec.resolve_type(type_id)
    if isinstance(t, btf.Int | btf.Enum | btf.Enum64):
        signed = t.signed
        code = _INT_CODES.get((t.size, signed))
        if code is None:
            raise LayoutError(f"{where}: unsupported integer size {t.size}")
        return t.size, code
    if isinstance(t, btf.Array):
        elem = spec.resolve_type(t.type)
        if isinstance(elem, btf.Int) and elem.size == 1:
            return t.nelems, f"{t.nelems}s"
    raise LayoutError(f"{where}: unsupported member type {type(t).__name__}")


def event_layout(spec: btf.Spec, struct_name: str = EVENT_STRUCT) -> tuple[int, list[FieldLayout]]:
    """``(record size, field layouts in Event order)`` read from ``spec``'s ``struct <struct_name>``.

    Nested ``meta``/``tuple`` structs are flattened; members named ``pad*`` are skipped. Raises
    :class:`LayoutError` when a member of the struct has no :class:`Event` field or the reverse.
    """
    try:
        sid = spec.find_one(struct_name, btf.Kind.STRUCT)
    except btf.BTFError as err:
        raise LayoutError(f"struct {struct_name} is not in the object's BTF: {err}") from None
    found: dict[str, FieldLayout] = {}

    def walk(type_id: int, base: int, prefix: str) -> None:
        for m in spec.members(type_id):
            if m.bitfield_size or m.bit_offset % 8:
                raise LayoutError(f"{prefix}{m.name}: bitfields are not supported")
            offset = base + m.bit_offset // 8
            if m.name in _NESTED and not prefix:
                walk(spec.resolve(m.type), offset, f"{m.name}.")
                continue
            if m.name.startswith("pad"):
                continue
            if m.name in found:
                raise LayoutError(f"{prefix}{m.name}: name appears twice after flattening")
            size, code = _field_code(spec, m.type, f"{struct_name}.{prefix}{m.name}")
            found[m.name] = FieldLayout(m.name, offset, size, code)

    walk(sid, 0, "")
    extra = sorted(set(found) - set(EVENT_FIELDS))
    missing = [n for n in EVENT_FIELDS if n not in found]
    if extra or missing:
        raise LayoutError(
            f"struct {struct_name} and Event differ: "
            f"only in C {extra or '-'}, only in Python {missing or '-'}"
        )
    return spec.size_of(sid), [found[n] for n in EVENT_FIELDS]


def object_btf(path: str | Path) -> btf.Spec:
    """The ``.BTF`` section of a BPF ELF object, parsed."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".BTF")
        if section is None:
            raise LayoutError(f"{path}: no .BTF section (compile with -g)")
        return btf.Spec.from_bytes(section.data())


class EventDecoder:
    """Decodes ring-buffer records into :class:`Event` objects.

    The record layout comes from ``struct event`` in ``object_btf`` (the compiled object's BTF); it is turned
    once into a precompiled :class:`struct.Struct` (explicit padding, little-endian, fields in offset order).
    """

    def __init__(self, object_btf: btf.Spec) -> None:
        self.size, self.layout = event_layout(object_btf)
        by_offset = sorted(self.layout, key=lambda f: f.offset)
        fmt = ["<"]
        pos = 0
        for f in by_offset:
            if f.offset < pos:
                raise LayoutError(f"member {f.name} overlaps the previous one")
            if f.offset > pos:
                fmt.append(f"{f.offset - pos}x")
            fmt.append(f.code)
            pos = f.offset + f.size
        self._struct = struct.Struct("".join(fmt))
        if self._struct.size > self.size:
            raise LayoutError(f"fields end at {self._struct.size}, past struct event's size {self.size}")
        # unpack order (by offset) -> Event order
        order = [by_offset.index(f) for f in self.layout]
        self._reorder: Callable[[tuple[object, ...]], tuple[object, ...]] | None = (
            None if order == list(range(len(order))) else operator.itemgetter(*order)
        )

    @classmethod
    def from_object(cls, path: str | Path) -> EventDecoder:
        """A decoder for the BPF object file at ``path``."""
        return cls(object_btf(path))

    def offset(self, name: str) -> int:
        """Byte offset of an :class:`Event` field in the record."""
        for f in self.layout:
            if f.name == name:
                return f.offset
        raise KeyError(name)

    def span(self, *names: str) -> tuple[int, int]:
        """``(start, end)`` byte range of the record covering the :class:`Event` fields ``names``.

        The range may also cover fields between them (and padding). A cache keyed by ``record[start:end]``
        is therefore exact for anything computed from ``names`` alone: extra bytes in a key only make it more
        specific.
        """
        chosen = [f for f in self.layout if f.name in names]
        if len(chosen) != len(set(names)):
            raise KeyError(sorted(set(names) - {f.name for f in chosen}))
        return min(f.offset for f in chosen), max(f.offset + f.size for f in chosen)

    def unpacker(self, *names: str) -> Callable[[Buffer], tuple[object, ...]]:
        """A function returning the values of the :class:`Event` fields ``names`` (in that order) from one
        record, without building an :class:`Event`. Byte-array fields come back whole (NULs included).
        """
        by_name = {f.name: f for f in self.layout}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(missing)
        chosen = sorted((by_name[n] for n in names), key=lambda f: f.offset)
        fmt, pos = ["<"], 0
        for f in chosen:
            if f.offset > pos:
                fmt.append(f"{f.offset - pos}x")
            fmt.append(f.code)
            pos = f.offset + f.size
        unpack = struct.Struct("".join(fmt)).unpack_from
        order = [chosen.index(by_name[n]) for n in names]
        if order == list(range(len(order))):
            return unpack
        pick = operator.itemgetter(*order)
        if len(order) == 1:
            return lambda buf: (pick(unpack(buf)),)
        return lambda buf: pick(unpack(buf))

    def decode(self, buf: Buffer) -> Event:
        """One record (at least :attr:`size` bytes) as an :class:`Event`.

        ``comm`` and ``ifname`` lose their trailing NULs: the kernel side zeroes the record and fills both
        with NUL-padding helpers (bpf_get_current_comm, bpf_probe_read_kernel_str), so nothing follows the
        first NUL.
        """
        values = self._struct.unpack_from(buf)
        if self._reorder is not None:
            values = self._reorder(values)
        ev = Event(*values)
        ev.comm = ev.comm.rstrip(b"\0")
        ev.ifname = ev.ifname.rstrip(b"\0")
        return ev

    def decode_many(self, bufs: Iterable[Buffer]) -> list[Event]:
        """Every record of ``bufs`` decoded (as :meth:`decode`), in order."""
        unpack = self._struct.unpack_from
        if self._reorder is not None:
            return [self.decode(b) for b in bufs]
        events: list[Event] = []
        append = events.append
        for buf in bufs:
            ev = Event(*unpack(buf))
            ev.comm = ev.comm.rstrip(b"\0")
            ev.ifname = ev.ifname.rstrip(b"\0")
            append(ev)
        return events
