"""The records pwru's kernel side writes, decoded from the compiled object's own BTF.

``bpf/pwru.h`` is the one place the layouts are written. From the object's BTF this module reads
``enum pwru_record_type`` (which record types exist and their numbers), ``enum pwru_probe_kind``, and for each
type its struct (``PWRU_RECORD_EVENT`` -> ``struct event``): member names, offsets, sizes and types. Nothing here
repeats a field name or an offset: a decoded record is an instance of a class made from the struct's members.

Nested structs are flattened (``event.hdr.ts`` is ``record.ts``, ``event.meta.netns`` is ``record.netns``); a
nested struct whose member names are taken by an earlier member (a second ``struct skb_tuple``, ``event.tunnel``)
is flattened with its member's name as prefix (``record.tunnel_saddr``); members named ``pad*`` are skipped;
``char`` arrays lose their trailing NULs; a flexible array at the end (``__u8 data[]``) is the record's
variable-sized tail, up to ``size`` from the header.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Any

from pwru.ebpf import btf

if TYPE_CHECKING:
    from pwru.output.bpfmap import MapOp

Buffer = bytes | bytearray | memoryview

RECORD_TYPE_ENUM = "pwru_record_type"
PROBE_KIND_ENUM = "pwru_probe_kind"
HEADER_STRUCT = "record_header"
RECORD_PREFIX = "PWRU_RECORD_"
PROBE_PREFIX = "PWRU_PROBE_"
VERDICT_ENUM = "pwru_verdict"
VERDICT_PREFIX = "PWRU_VERDICT_"


class LayoutError(ValueError):
    """The object's BTF lacks a record type or layout this module needs, or has one it cannot decode."""


class Record:
    """Base of the classes made for each record struct. Field access is checked at run time (the fields come
    from BTF); for the type checker every field is ``Any``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:  # only reached for names the record does not have
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """Where one field sits in a record: byte ``offset``, ``size``, its :mod:`struct` code, and whether it is a
    C string (``char`` array: trailing NULs are dropped when decoded)."""

    name: str
    offset: int
    size: int
    code: str  # "Q", "i", "16s", ...
    text: bool = False


_INT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
              (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}  # fmt: skip


def _field(spec: btf.Spec, name: str, offset: int, type_id: int, where: str) -> FieldLayout:
    t = spec.resolve_type(type_id)
    if isinstance(t, btf.Int | btf.Enum | btf.Enum64):
        code = _INT_CODES.get((t.size, t.signed))
        if code is None:
            raise LayoutError(f"{where}: unsupported integer size {t.size}")
        return FieldLayout(name, offset, t.size, code)
    if isinstance(t, btf.Array):
        elem = spec.resolve_type(t.type)
        if isinstance(elem, btf.Int) and elem.size == 1:
            return FieldLayout(name, offset, t.nelems, f"{t.nelems}s", text=elem.name == "char")
    raise LayoutError(f"{where}: unsupported member type {type(t).__name__}")


def _struct_of_fields(fields: Iterable[FieldLayout]) -> struct.Struct:
    """A little-endian :class:`struct.Struct` reading ``fields`` (in offset order, gaps skipped)."""
    fmt, pos = ["<"], 0
    for f in sorted(fields, key=lambda f: f.offset):
        if f.offset < pos:
            raise LayoutError(f"member {f.name} overlaps the previous one")
        if f.offset > pos:
            fmt.append(f"{f.offset - pos}x")
        fmt.append(f.code)
        pos = f.offset + f.size
    return struct.Struct("".join(fmt))


class RecordLayout:
    """One record struct read from BTF: its flattened fields, a record class, and fast accessors."""

    def __init__(self, spec: btf.Spec, struct_name: str) -> None:
        try:
            sid = spec.find_one(struct_name, btf.Kind.STRUCT)
        except btf.BTFError as err:
            raise LayoutError(f"struct {struct_name} is not in the object's BTF: {err}") from None
        self.name = struct_name
        self.size = spec.size_of(sid)
        self.tail: FieldLayout | None = None  # the flexible array member, if any
        found: dict[str, FieldLayout] = {}

        def walk(type_id: int, base: int, path: str, out: dict[str, FieldLayout]) -> None:
            members = spec.members(type_id)
            for i, m in enumerate(members):
                where = f"struct {struct_name}: {path}{m.name}"
                if m.bitfield_size or m.bit_offset % 8:
                    raise LayoutError(f"{where}: bitfields are not supported")
                offset = base + m.bit_offset // 8
                t = spec.resolve_type(m.type)
                if isinstance(t, btf.Struct):
                    inner: dict[str, FieldLayout] = {}
                    walk(spec.resolve(m.type), offset, f"{path}{m.name}.", inner)
                    if (found.keys() | out.keys()) & inner.keys():
                        inner = {f"{m.name}_{n}": dataclasses.replace(f, name=f"{m.name}_{n}")
                                 for n, f in inner.items()}  # fmt: skip
                    twice = sorted((found.keys() | out.keys()) & inner.keys())
                    if twice:
                        raise LayoutError(f"{where}.{twice[0]}: name appears twice after flattening")
                    out.update(inner)
                    continue
                if m.name.startswith("pad"):
                    continue
                if m.name in out:  # (a nested struct's names meet the rest when it is merged, above)
                    raise LayoutError(f"{where}: name appears twice after flattening")
                if isinstance(t, btf.Array) and t.nelems == 0:
                    if path or i != len(members) - 1:
                        raise LayoutError(f"{where}: a flexible array must be the struct's last member")
                    self.tail = FieldLayout(m.name, offset, 0, "", text=False)
                    continue
                out[m.name] = _field(spec, m.name, offset, m.type, where)

        walk(sid, 0, "", found)
        self.fields: tuple[FieldLayout, ...] = tuple(sorted(found.values(), key=lambda f: f.offset))
        self.by_name: Mapping[str, FieldLayout] = {f.name: f for f in self.fields}
        names = [f.name for f in self.fields] + ([self.tail.name] if self.tail else [])
        self.record_class: type[Record] = make_dataclass(
            struct_name.title().replace("_", ""), [(n, Any) for n in names], bases=(Record,), slots=True
        )
        self._struct = _struct_of_fields(self.fields)
        self._text = tuple(i for i, f in enumerate(self.fields) if f.text)

    def offset(self, name: str) -> int:
        """Byte offset of field ``name``."""
        return self.by_name[name].offset

    def span(self, *names: str) -> tuple[int, int]:
        """``(start, end)`` byte range covering the fields ``names`` (and whatever lies between them). A cache
        keyed by ``record[start:end]`` is exact for anything computed from ``names`` alone."""
        missing = sorted(set(names) - set(self.by_name))
        if missing:
            raise KeyError(missing)
        chosen = [self.by_name[n] for n in names]
        return min(f.offset for f in chosen), max(f.offset + f.size for f in chosen)

    def unpacker(self, *names: str) -> Callable[[Buffer], tuple[Any, ...]]:
        """A function returning the raw values of ``names`` (in that order) from one record, without building a
        record object. Byte arrays come back whole (NULs included)."""
        missing = [n for n in names if n not in self.by_name]
        if missing:
            raise KeyError(missing)
        chosen = sorted((self.by_name[n] for n in names), key=lambda f: f.offset)
        unpack = _struct_of_fields(chosen).unpack_from
        order = [chosen.index(self.by_name[n]) for n in names]
        if order == list(range(len(order))):
            return unpack
        pick = operator.itemgetter(*order)
        if len(order) == 1:
            return lambda buf: (pick(unpack(buf)),)
        return lambda buf: pick(unpack(buf))

    def decode(self, buf: Buffer, size: int | None = None) -> Record:
        """One record as an object whose attributes are the struct's fields; ``size`` (the header's) bounds the
        variable-sized tail, which is otherwise the rest of ``buf``."""
        values = list(self._struct.unpack_from(buf))
        for i in self._text:
            values[i] = values[i].rstrip(b"\0")
        if self.tail is not None:
            values.append(bytes(buf[self.tail.offset : len(buf) if size is None else size]))
        return self.record_class(*values)

    def decode_many(self, bufs: Iterable[Buffer]) -> list[Record]:
        """Every record of ``bufs`` decoded (as :meth:`decode`), in order."""
        return [self.decode(b) for b in bufs]

    def encode(self, values: Mapping[str, Any]) -> bytes:
        """A record with ``values`` (by field name; missing ones are zero), the inverse of :meth:`decode`. For
        tests and for records user space writes itself."""
        unknown = sorted(set(values) - set(self.by_name) - ({self.tail.name} if self.tail else set()))
        if unknown:
            raise KeyError(unknown)
        buf = bytearray(self.size)
        for f in self.fields:
            v = values.get(f.name, b"" if f.code.endswith("s") else 0)
            struct.pack_into("<" + f.code, buf, f.offset, v)
        if self.tail is not None:  # the record ends where its tail does (struct padding after it is not sent)
            return bytes(buf[: self.tail.offset]) + bytes(values.get(self.tail.name, b""))
        return bytes(buf)


def _enum_members(spec: btf.Spec, name: str, prefix: str) -> dict[str, int]:
    """``{member name without prefix, lower-cased: value}`` of ``enum <name>``."""
    try:
        t = spec.type(spec.find_one(name, btf.Kind.ENUM))
    except btf.BTFError as err:
        raise LayoutError(f"enum {name} is not in the object's BTF: {err}") from None
    assert isinstance(t, btf.Enum)
    return {v.name.removeprefix(prefix).lower(): v.value for v in t.values}


class Schema:
    """Every record type of one object: numbers from ``enum pwru_record_type``, layouts from their structs.

    ``schema.EVENT`` style access is by :meth:`type_id`; :meth:`layout` gives a type's :class:`RecordLayout`.
    """

    def __init__(self, spec: btf.Spec) -> None:
        self._spec = spec
        self.header = RecordLayout(spec, HEADER_STRUCT)
        self.types: dict[str, int] = _enum_members(spec, RECORD_TYPE_ENUM, RECORD_PREFIX)
        self.probe_kinds: dict[str, int] = _enum_members(spec, PROBE_KIND_ENUM, PROBE_PREFIX)
        #: ``enum pwru_verdict``: how an skb ended (--summary), lower-cased without the prefix.
        self.verdicts: dict[str, int] = {}
        if spec.find(VERDICT_ENUM, btf.Kind.ENUM):
            self.verdicts = _enum_members(spec, VERDICT_ENUM, VERDICT_PREFIX)
        self.layouts: dict[int, RecordLayout] = {}
        for name, value in self.types.items():
            layout = RecordLayout(spec, name)
            if layout.fields[: len(self.header.fields)] != self.header.fields:
                raise LayoutError(f"struct {name} does not start with struct {HEADER_STRUCT}")
            self.layouts[value] = layout
        self._type_of = self.header.unpacker("type", "size")
        self.type_of: Callable[[Buffer], tuple[Any, ...]] = self.header.unpacker("type")
        #: The one record type when the object has no other (then nobody needs to look at a record's type).
        self.only_type: int | None = next(iter(self.types.values())) if len(self.types) == 1 else None

    def type_id(self, name: str) -> int:
        """The number of record type ``name`` (``"event"``)."""
        try:
            return self.types[name]
        except KeyError:
            raise LayoutError(f"no record type {name!r} in enum {RECORD_TYPE_ENUM}") from None

    def layout(self, name: str) -> RecordLayout:
        """The layout of record type ``name``."""
        return self.layouts[self.type_id(name)]

    def enum(self, name: str, prefix: str) -> dict[str, int]:
        """Another enum of pwru.h: ``{member name without prefix, lower-cased: value}`` (``pwru_dump_kind``)."""
        return _enum_members(self._spec, name, prefix)

    def probe_kind(self, name: str) -> int:
        """The number of ``PWRU_PROBE_<NAME>``."""
        try:
            return self.probe_kinds[name]
        except KeyError:
            raise LayoutError(f"no probe kind {name!r} in enum {PROBE_KIND_ENUM}") from None

    def type_and_size(self, buf: Buffer) -> tuple[int, int]:
        """A record's type and size, from its header."""
        t, size = self._type_of(buf)
        return int(t), int(size)

    def decode(self, buf: Buffer) -> Record:
        """Any record, by the type in its header."""
        rtype, size = self.type_and_size(buf)
        layout = self.layouts.get(rtype)
        if layout is None:
            raise LayoutError(f"record type {rtype} is not in enum {RECORD_TYPE_ENUM}")
        return layout.decode(buf, size)


@dataclass(slots=True)
class Batch:
    """Records read from the kernel in one turn, in ring order, passed from stage to stage to the outputs.

    Stages may drop records (``records`` is replaced, never edited in place) and add what they learn:
    ``stacks`` maps an event's stack id to its frames (kernel addresses, innermost first), read from the
    kernel by the stack stage so that no output has to; ``dumps`` an event's struct dumps (--output-skb);
    ``map_ops`` its map operation (--output-bpfmap).
    """

    schema: Schema
    records: list[bytes]
    stacks: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: (ts, skb, probe) of an event -> its struct dumps by name (``"sk_buff"``: text), from the dump stage
    dumps: dict[tuple[int, int, int], dict[str, str]] = field(default_factory=dict)
    #: (ts, skb, probe) of an event -> the map operation it shows (--output-bpfmap), from the map stage
    map_ops: dict[tuple[int, int, int], MapOp] = field(default_factory=dict)
    #: of_type's answers for the current ``records`` list (stages, the pipeline and outputs all ask)
    _typed: dict[str, tuple[list[bytes], list[bytes]]] = field(default_factory=dict, repr=False, compare=False)

    def of_type(self, name: str) -> list[bytes]:
        """The records of type ``name``, in order (all of them, without looking, when it is the only type)."""
        rtype = self.schema.type_id(name)
        if self.schema.only_type == rtype:
            return self.records
        cached = self._typed.get(name)
        if cached is not None and cached[0] is self.records:
            return cached[1]
        type_of = self.schema.type_of
        found = [r for r in self.records if type_of(r)[0] == rtype]
        self._typed[name] = (self.records, found)
        return found
