"""BTF (BPF Type Format) parsing and encoding.

The format is described in the kernel's ``Documentation/bpf/btf.rst``: a header, a type section
(records of ``struct btf_type`` each followed by kind-specific data) and a string section. Type id 0 is
``void``; the first record has id 1. Split BTF (kernel modules, ``/sys/kernel/btf/<module>``) continues the
ids and string offsets of its base (vmlinux).

:class:`Spec` indexes the type section in one pass (offset and kind of every record) and decodes a type only
when it is asked for, so that parsing vmlinux's ~130k types stays cheap. Decoded types are frozen
dataclasses; to change a type, build a new one (``dataclasses.replace``) and hand it to :meth:`Spec.replace`;
:meth:`Spec.encode` then re-encodes only the changed records and reproduces the original bytes exactly when
nothing changed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import stat
import struct
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pwru.ebpf.errors import EBPFError, NotSupported

BTF_MAGIC = 0xEB9F
KERNEL_BTF_DIR = Path("/sys/kernel/btf")
#: The largest BTF file :meth:`Spec.load` reads. A vmlinux BTF is 5-10 MB; the kernel itself refuses BTF
#: above 16 MiB from user space (BTF_MAX_SIZE), so 256 MiB only guards against endless inputs (/dev/zero).
MAX_BTF_SIZE = 256 << 20
#: How deep :meth:`Spec.find_member` looks through nested anonymous members (C code nests a handful).
_MAX_ANON_DEPTH = 32

_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")  # name_off, info, size_or_type
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_ARRAY = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")
_ENUM_U = struct.Struct("<II")
_ENUM64 = struct.Struct("<III")
_PARAM = struct.Struct("<II")
_SECINFO = struct.Struct("<III")


class BTFError(EBPFError, ValueError):
    """Malformed or unsupported BTF, or a lookup that cannot be answered."""


class Kind(enum.IntEnum):
    """``BTF_KIND_*`` values."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class Linkage(enum.IntEnum):
    """Linkage of a FUNC (``BTF_FUNC_*``) or VAR (``BTF_VAR_*``)."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


# Bytes of kind-specific data after the 12-byte btf_type: (fixed, per vlen item).
_EXTRA: dict[int, tuple[int, int]] = {
    Kind.INT: (4, 0),
    Kind.PTR: (0, 0),
    Kind.ARRAY: (12, 0),
    Kind.STRUCT: (0, 12),
    Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8),
    Kind.FWD: (0, 0),
    Kind.TYPEDEF: (0, 0),
    Kind.VOLATILE: (0, 0),
    Kind.CONST: (0, 0),
    Kind.RESTRICT: (0, 0),
    Kind.FUNC: (0, 0),
    Kind.FUNC_PROTO: (0, 8),
    Kind.VAR: (4, 0),
    Kind.DATASEC: (0, 12),
    Kind.FLOAT: (0, 0),
    Kind.DECL_TAG: (4, 0),
    Kind.TYPE_TAG: (0, 0),
    Kind.ENUM64: (0, 12),
}

# INT encoding bits (``BTF_INT_*``).
INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


# ---------------------------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True, slots=True)
class Void:
    """Type id 0."""

    kind: ClassVar[Kind] = Kind.UNKN
    name: str = ""


@dataclass(frozen=True, slots=True)
class Int:
    """An integer of ``size`` bytes: ``bits`` value bits from bit ``offset``; ``encoding`` is INT_* flags."""

    kind: ClassVar[Kind] = Kind.INT
    name: str
    size: int
    encoding: int = 0
    offset: int = 0
    bits: int = 0

    @property
    def signed(self) -> bool:
        return bool(self.encoding & INT_SIGNED)


@dataclass(frozen=True, slots=True)
class Pointer:
    """A pointer to ``type``."""

    kind: ClassVar[Kind] = Kind.PTR
    type: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Array:
    """``nelems`` elements of ``type``, indexed by ``index_type``."""

    kind: ClassVar[Kind] = Kind.ARRAY
    type: int
    index_type: int
    nelems: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    """A struct/union member; ``bitfield_size`` is 0 for a plain member."""

    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0

    def __iter__(self) -> Iterator[object]:
        return iter((self.name, self.type, self.bit_offset, self.bitfield_size))


@dataclass(frozen=True, slots=True)
class Struct:
    """A struct (or, as :class:`Union`, a union) of ``size`` bytes.

    ``kind_flag`` says how members are encoded: when set, each member's offset word holds the bitfield size in
    its top 8 bits (:attr:`Member.bitfield_size`); when clear, ``bitfield_size`` is 0 and a bitfield's width
    is the ``bits`` of its INT type (see :meth:`Spec.bitfield`).
    """

    kind: ClassVar[Kind] = Kind.STRUCT
    name: str
    size: int
    members: tuple[Member, ...]
    kind_flag: bool = False


@dataclass(frozen=True, slots=True)
class Union:
    """A union; same layout as :class:`Struct`."""

    kind: ClassVar[Kind] = Kind.UNION
    name: str
    size: int
    members: tuple[Member, ...]
    kind_flag: bool = False


@dataclass(frozen=True, slots=True)
class EnumValue:
    """One enumerator."""

    name: str
    value: int


@dataclass(frozen=True, slots=True)
class Enum:
    """An enum (``ENUM``, 32-bit values) of ``size`` bytes; ``signed`` is the kind_flag."""

    kind: ClassVar[Kind] = Kind.ENUM
    name: str
    size: int
    values: tuple[EnumValue, ...]
    signed: bool = False


@dataclass(frozen=True, slots=True)
class Enum64:
    """An enum with 64-bit values (``ENUM64``)."""

    kind: ClassVar[Kind] = Kind.ENUM64
    name: str
    size: int
    values: tuple[EnumValue, ...]
    signed: bool = False


@dataclass(frozen=True, slots=True)
class Fwd:
    """A forward declaration of a struct (or a union when ``union``)."""

    kind: ClassVar[Kind] = Kind.FWD
    name: str
    union: bool = False


@dataclass(frozen=True, slots=True)
class Typedef:
    """``typedef type name``."""

    kind: ClassVar[Kind] = Kind.TYPEDEF
    name: str
    type: int


@dataclass(frozen=True, slots=True)
class Volatile:
    """``volatile type``."""

    kind: ClassVar[Kind] = Kind.VOLATILE
    type: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Const:
    """``const type``."""

    kind: ClassVar[Kind] = Kind.CONST
    type: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Restrict:
    """``restrict type``."""

    kind: ClassVar[Kind] = Kind.RESTRICT
    type: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Func:
    """A function ``name`` whose prototype is the FUNC_PROTO ``type``."""

    kind: ClassVar[Kind] = Kind.FUNC
    name: str
    type: int
    linkage: Linkage = Linkage.STATIC


@dataclass(frozen=True, slots=True)
class Param:
    """A FUNC_PROTO parameter (``name`` is often empty; type 0 as last param means varargs)."""

    name: str
    type: int


@dataclass(frozen=True, slots=True)
class FuncProto:
    """A function prototype."""

    kind: ClassVar[Kind] = Kind.FUNC_PROTO
    return_type: int
    params: tuple[Param, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class Var:
    """A global variable."""

    kind: ClassVar[Kind] = Kind.VAR
    name: str
    type: int
    linkage: Linkage = Linkage.STATIC


@dataclass(frozen=True, slots=True)
class VarSecinfo:
    """A variable inside a DATASEC: its VAR (or FUNC for ksyms) type id, byte offset and size."""

    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Datasec:
    """A data section (``.data``, ``.rodata``, ``.bss``, ``.kconfig``...)."""

    kind: ClassVar[Kind] = Kind.DATASEC
    name: str
    size: int
    vars: tuple[VarSecinfo, ...]


@dataclass(frozen=True, slots=True)
class Float:
    """A floating-point type of ``size`` bytes."""

    kind: ClassVar[Kind] = Kind.FLOAT
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class DeclTag:
    """``__attribute__((btf_decl_tag(name)))`` on ``type`` (component_idx -1) or its member/param number."""

    kind: ClassVar[Kind] = Kind.DECL_TAG
    name: str
    type: int
    component_idx: int = -1


@dataclass(frozen=True, slots=True)
class TypeTag:
    """``__attribute__((btf_type_tag(name)))`` on ``type``."""

    kind: ClassVar[Kind] = Kind.TYPE_TAG
    name: str
    type: int


Type = (
    Void
    | Int
    | Pointer
    | Array
    | Struct
    | Union
    | Enum
    | Enum64
    | Fwd
    | Typedef
    | Volatile
    | Const
    | Restrict
    | Func
    | FuncProto
    | Var
    | Datasec
    | Float
    | DeclTag
    | TypeTag
)

VOID = Void()
_KINDS = tuple(Kind)
_QUALIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_MODIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})


# ---------------------------------------------------------------------------------------------------------
# Spec


class Spec:
    """Parsed BTF: a type section indexed by id plus a string table.

    For split BTF (``base`` given) ids ``0 .. base.last_id`` resolve through the base; this spec's own types
    start at :attr:`first_id`. ``len(spec)`` and iteration cover the spec's *own* types (not void, not the
    base's), as ``(id, type)`` pairs in id order. Lookups (:meth:`type`, :meth:`find`, :meth:`resolve`...) see
    the base too.
    """

    def __init__(
        self,
        data: bytes,
        base: Spec | None,
        offsets: array[int],
        kinds: bytes,
        name_offs: array[int],
        header: tuple[int, ...],
    ) -> None:
        self._data = data
        self.base = base
        self._offsets = offsets  # absolute offset in data of each own type's btf_type, index = id - first_id
        self._kinds = kinds
        (_, self.version, self.flags, self.hdr_len, type_off, type_len, str_off, str_len) = header
        self._type_start = self.hdr_len + type_off
        self._type_end = self._type_start + type_len
        self._str_start = self.hdr_len + str_off
        self._str_end = self._str_start + str_len
        self.first_id = (base.last_id + 1) if base is not None else 1
        self._str_base = base._strings_len() if base is not None else 0
        self._cache: dict[int, Type] = {}
        self._replaced: dict[int, Type] = {}
        self._added: list[Type] = []
        self._name_offs = name_offs
        self._words: memoryview | array[int] | None = None
        self._by_kind: dict[int, list[int]] | None = None

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, base: Spec | None = None) -> Spec:
        """Parse raw BTF (``.BTF`` section or ``/sys/kernel/btf/*``); ``base`` makes it split BTF."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise BTFError("BTF shorter than its header")
        header = _HEADER.unpack_from(data, 0)
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = header
        if magic != BTF_MAGIC:
            if magic == 0x9FEB:
                raise BTFError("big-endian BTF is not supported")
            raise BTFError(f"bad BTF magic {magic:#x}")
        if version != 1:
            raise BTFError(f"unsupported BTF version {version}")
        if hdr_len < _HEADER.size:
            raise BTFError(f"BTF header length {hdr_len} too small")
        start = hdr_len + type_off
        end = start + type_len
        if end > len(data) or hdr_len + str_off + str_len > len(data):
            raise BTFError("BTF sections run past the end of the data")
        offsets, kinds, names = _index(data, start, end)
        return cls(data, base, offsets, kinds, names, header)

    @classmethod
    def load(cls, path: str | os.PathLike[str], base: Spec | None = None) -> Spec:
        """Parse a raw BTF file (e.g. ``/sys/kernel/btf/vmlinux``).

        Only a regular file of at most :data:`MAX_BTF_SIZE` bytes is read (a FIFO would block, /dev/zero never
        end): anything else is a :class:`BTFError` naming the path. Failing to open it is an OSError.
        """
        return cls.from_bytes(read_regular_file(path, MAX_BTF_SIZE, BTFError), base)

    # -- size / iteration ------------------------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The highest valid type id (including added types)."""
        return self.first_id + len(self._offsets) + len(self._added) - 1

    def __len__(self) -> int:
        return len(self._offsets) + len(self._added)

    def __iter__(self) -> Iterator[tuple[int, Type]]:
        for tid in range(self.first_id, self.last_id + 1):
            yield tid, self.type(tid)

    def kind_of(self, type_id: int) -> Kind:
        """The kind of ``type_id`` without decoding the type."""
        if type_id == 0:
            return Kind.UNKN
        idx = type_id - self.first_id
        if idx < 0:
            if self.base is None:
                raise BTFError(f"no type id {type_id}")
            return self.base.kind_of(type_id)
        if type_id in self._replaced:
            return self._replaced[type_id].kind
        if idx < len(self._kinds):
            return _KINDS[self._kinds[idx]]
        return self.type(type_id).kind

    def ids_of_kind(self, kind: Kind) -> Iterator[int]:
        """Own type ids of one kind, in id order (replacements of a different kind are honoured)."""
        first = self.first_id
        kinds = self._kinds
        k = int(kind)
        pos = kinds.find(k)
        while pos >= 0:
            tid = first + pos
            if tid not in self._replaced or self._replaced[tid].kind == kind:
                yield tid
            pos = kinds.find(k, pos + 1)
        for tid, t in self._replaced.items():
            if t.kind == kind and self._kinds[tid - first] != k:
                yield tid
        for i, t in enumerate(self._added):
            if t.kind == kind:
                yield first + len(kinds) + i

    # -- strings ---------------------------------------------------------------------------------------

    def _strings_len(self) -> int:
        return self._str_base + (self._str_end - self._str_start)

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of the (split-aware) string table."""
        if offset < self._str_base:
            assert self.base is not None
            return self.base.string(offset)
        start = self._str_start + offset - self._str_base
        if start >= self._str_end:
            raise BTFError(f"string offset {offset} out of range")
        end = self._data.find(b"\0", start, self._str_end)
        if end < 0:
            raise BTFError(f"string at {offset} is not terminated")
        try:
            return self._data[start:end].decode()
        except UnicodeDecodeError:
            raise BTFError(f"string at {offset} is not valid UTF-8") from None

    @property
    def strings(self) -> bytes:
        """This spec's own raw string section."""
        return self._data[self._str_start : self._str_end]

    def string_offsets(self, name: str) -> list[int]:
        """Offsets (split-aware) at which ``name`` appears as a whole string, base's first."""
        out = self.base.string_offsets(name) if self.base is not None else []
        needle = b"\0" + name.encode() + b"\0"
        data, lo, hi = self._data, self._str_start, self._str_end
        if not name:
            return [0]
        pos = data.find(needle, lo, hi)
        while pos >= 0:
            out.append(pos + 1 - self._str_start + self._str_base)
            pos = data.find(needle, pos + 1, hi)
        return out

    # -- type access -----------------------------------------------------------------------------------

    def type(self, type_id: int) -> Type:
        """The type with id ``type_id`` (0 is :data:`VOID`)."""
        if type_id == 0:
            return VOID
        idx = type_id - self.first_id
        if idx < 0:
            if self.base is None:
                raise BTFError(f"no type id {type_id}")
            return self.base.type(type_id)
        t = self._replaced.get(type_id) or self._cache.get(type_id)
        if t is not None:
            return t
        if idx < len(self._offsets):
            t = self._decode(self._offsets[idx])
            self._cache[type_id] = t
            return t
        idx -= len(self._offsets)
        if idx < len(self._added):
            return self._added[idx]
        raise BTFError(f"no type id {type_id}")

    def __getitem__(self, type_id: int) -> Type:
        return self.type(type_id)

    def name_of(self, type_id: int) -> str:
        """The name of a type (``""`` for anonymous ones) without decoding the whole type."""
        if type_id == 0:
            return "void"
        idx = type_id - self.first_id
        if idx < 0:
            if self.base is None:
                raise BTFError(f"no type id {type_id}")
            return self.base.name_of(type_id)
        if type_id in self._replaced or idx >= len(self._offsets):
            return self.type(type_id).name
        return self.string(self._name_offs[idx])

    def find(self, name: str, kind: Kind | None = None) -> list[int]:
        """All type ids (base's first) named ``name``, optionally only of ``kind``."""
        out = self.base.find(name, kind) if self.base is not None else []
        name_offs = self._name_offs
        for off in self.string_offsets(name):
            if off == 0:
                continue
            pos = -1
            while True:
                try:
                    pos = name_offs.index(off, pos + 1)
                except ValueError:
                    break
                tid = self.first_id + pos
                if tid in self._replaced:
                    continue
                if kind is None or self._kinds[pos] == kind:
                    out.append(tid)
        extra = [tid for tid, t in self._replaced.items() if t.name == name]
        extra += [self.first_id + len(self._offsets) + i for i, t in enumerate(self._added) if t.name == name]
        out.extend(t for t in extra if kind is None or self.type(t).kind == kind)
        return sorted(out) if extra else out

    def find_one(self, name: str, kind: Kind | None = None) -> int:
        """The single id named ``name`` (of ``kind``); :class:`BTFError` when none or several match.

        Structs and unions are preferred over forward declarations of the same name.
        """
        ids = self.find(name, kind)
        if len(ids) > 1 and kind is None:
            full = [i for i in ids if self.kind_of(i) != Kind.FWD]
            ids = full or ids
        if not ids:
            raise BTFError(f"no type named {name!r}" + (f" of kind {kind.name}" if kind else ""))
        if len(ids) > 1:
            kinds = ", ".join(f"{i}:{self.kind_of(i).name}" for i in ids)
            raise BTFError(f"{len(ids)} types named {name!r}: {kinds}")
        return ids[0]

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers (const, volatile, restrict, type tags): the underlying type's id."""
        for _ in range(64):
            if self.kind_of(type_id) not in _QUALIFIERS:
                return type_id
            type_id = self.type(type_id).type  # type: ignore[union-attr]
        raise BTFError(f"qualifier chain too long at {type_id}")

    def resolve_type(self, type_id: int) -> Type:
        """``type(resolve(type_id))``."""
        return self.type(self.resolve(type_id))

    def size_of(self, type_id: int) -> int:
        """Size in bytes of a type (through typedefs/qualifiers; arrays multiply; pointers are 8)."""
        nelems = 1
        for _ in range(64):
            t = self.type(self.resolve(type_id))
            if isinstance(t, Array):
                nelems *= t.nelems
                type_id = t.type
                continue
            if isinstance(t, Pointer):
                return 8 * nelems
            if isinstance(t, Int | Struct | Union | Enum | Enum64 | Float | Datasec):
                return t.size * nelems
            raise BTFError(f"type {type_id} ({t.kind.name}) has no size")
        raise BTFError(f"array chain too long at {type_id}")

    # -- struct helpers --------------------------------------------------------------------------------

    def _composite(self, type_or_name: int | str) -> Struct | Union:
        if isinstance(type_or_name, str):
            ids = [i for i in self.find(type_or_name) if self.kind_of(i) in (Kind.STRUCT, Kind.UNION)]
            if not ids:
                raise BTFError(f"no struct or union named {type_or_name!r}")
            type_or_name = ids[0]
        t = self.type(self.resolve(type_or_name))
        if not isinstance(t, Struct | Union):
            raise BTFError(f"type {type_or_name} is a {t.kind.name}, not a struct or union")
        return t

    def members(self, type_or_name: int | str) -> tuple[Member, ...]:
        """Members of a struct/union given by id or name."""
        return self._composite(type_or_name).members

    def member(self, type_or_name: int | str, path: str) -> Member:
        """The member at dotted ``path`` ("a.b.c"), looking through anonymous struct/union members.

        The returned member's ``bit_offset`` is relative to the start of the outer struct.
        """
        comp = self._composite(type_or_name)
        base_bits = 0
        found: Member | None = None
        for part in path.split("."):
            hit = self.find_member(comp, part)
            if hit is None:
                raise BTFError(f"{comp.name or 'anonymous ' + comp.kind.name.lower()} has no member {part!r}")
            m, extra = hit
            base_bits += extra + m.bit_offset
            found = m
            inner = self.type(self.resolve(m.type))
            if isinstance(inner, Struct | Union):
                comp = inner
            elif part != path.split(".")[-1]:
                raise BTFError(f"member {part!r} is not a struct or union")
        assert found is not None
        return dataclasses.replace(found, bit_offset=base_bits)

    def find_member(self, comp: Struct | Union, name: str, _depth: int = 0) -> tuple[Member, int] | None:
        """Member ``name`` of ``comp``, looking through anonymous struct/union members: ``(member, extra bit
        offset of the anonymous members it sits in)``, or None when there is no such member."""
        for m in comp.members:
            if m.name == name:
                return m, 0
        if _depth >= _MAX_ANON_DEPTH:  # malformed BTF can nest a struct in itself
            raise BTFError(f"anonymous members of {comp.name or 'a ' + comp.kind.name.lower()} nest too deep")
        for m in comp.members:
            if m.name:
                continue
            inner = self.resolve_type(m.type)
            if isinstance(inner, Struct | Union):
                hit = self.find_member(inner, name, _depth + 1)
                if hit is not None:
                    return hit[0], hit[1] + m.bit_offset
        return None

    def bitfield(self, member: Member) -> tuple[int, int]:
        """``(bit_offset, bit_size)`` of a member, for either encoding (kind_flag set or INT ``bits``).

        ``bit_size`` is 0 for a member that is not a bitfield.
        """
        if member.bitfield_size:
            return member.bit_offset, member.bitfield_size
        t = self.type(self.resolve(member.type))
        if isinstance(t, Int) and (t.offset or (t.bits and t.bits != t.size * 8)):
            return member.bit_offset + t.offset, t.bits
        return member.bit_offset, 0

    def member_offset(self, type_or_name: int | str, path: str) -> int:
        """Byte offset of a (non-bitfield) member; see :meth:`member`."""
        m = self.member(type_or_name, path)
        if self.bitfield(m)[1] or m.bit_offset % 8:
            raise BTFError(f"member {path!r} is a bitfield (bit offset {m.bit_offset})")
        return m.bit_offset // 8

    def enum_values(self, type_or_name: int | str) -> dict[str, int]:
        """``{enumerator: value}`` of an ENUM/ENUM64 given by id or name."""
        if isinstance(type_or_name, str):
            ids = [i for i in self.find(type_or_name) if self.kind_of(i) in (Kind.ENUM, Kind.ENUM64)]
            if not ids:
                raise BTFError(f"no enum named {type_or_name!r}")
            type_or_name = ids[0]
        t = self.type(self.resolve(type_or_name))
        if not isinstance(t, Enum | Enum64):
            raise BTFError(f"type {type_or_name} is a {t.kind.name}, not an enum")
        return {v.name: v.value for v in t.values}

    def func_proto(self, func: int | str) -> FuncProto:
        """The prototype of a FUNC (by id or name), or a FUNC_PROTO itself."""
        if isinstance(func, str):
            func = self.find_one(func, Kind.FUNC)
        t = self.type(func)
        if isinstance(t, Func):
            t = self.type(t.type)
        if not isinstance(t, FuncProto):
            raise BTFError(f"type {func} is a {t.kind.name}, not a function")
        return t

    # -- decoding --------------------------------------------------------------------------------------

    def _decode(self, off: int) -> Type:
        data = self._data
        name_off, info, size = _TYPE.unpack_from(data, off)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self.string(name_off) if name_off else ""
        p = off + 12
        if kind == Kind.PTR:
            return Pointer(size, name)
        if kind == Kind.FUNC_PROTO:
            params = tuple(
                Param(self.string(n) if n else "", t)
                for n, t in (_PARAM.unpack_from(data, p + 8 * i) for i in range(vlen))
            )
            return FuncProto(size, params, name)
        if kind in (Kind.STRUCT, Kind.UNION):
            members = []
            for i in range(vlen):
                n, t, o = _MEMBER.unpack_from(data, p + 12 * i)
                if kflag:
                    bits, bit_off = o >> 24, o & 0xFFFFFF
                else:
                    bits, bit_off = 0, o
                members.append(Member(self.string(n) if n else "", t, bit_off, bits))
            cls = Struct if kind == Kind.STRUCT else Union
            return cls(name, size, tuple(members), kflag)
        if kind == Kind.FUNC:
            return Func(name, size, _linkage(vlen, off))
        if kind == Kind.TYPEDEF:
            return Typedef(name, size)
        if kind == Kind.CONST:
            return Const(size, name)
        if kind == Kind.VOLATILE:
            return Volatile(size, name)
        if kind == Kind.RESTRICT:
            return Restrict(size, name)
        if kind == Kind.TYPE_TAG:
            return TypeTag(name, size)
        if kind == Kind.INT:
            (word,) = _U32.unpack_from(data, p)
            return Int(name, size, (word >> 24) & 0x0F, (word >> 16) & 0xFF, word & 0xFF)
        if kind == Kind.ARRAY:
            t, index_type, nelems = _ARRAY.unpack_from(data, p)
            return Array(t, index_type, nelems, name)
        if kind == Kind.ENUM:
            fmt = _ENUM if kflag else _ENUM_U
            pairs = (fmt.unpack_from(data, p + 8 * i) for i in range(vlen))
            values = tuple(EnumValue(self.string(n), v) for n, v in pairs)
            return Enum(name, size, values, kflag)
        if kind == Kind.ENUM64:
            vals = []
            for i in range(vlen):
                n, lo, hi = _ENUM64.unpack_from(data, p + 12 * i)
                v = (hi << 32) | lo
                if kflag and v >= 1 << 63:
                    v -= 1 << 64
                vals.append(EnumValue(self.string(n), v))
            return Enum64(name, size, tuple(vals), kflag)
        if kind == Kind.FWD:
            return Fwd(name, kflag)
        if kind == Kind.VAR:
            return Var(name, size, _linkage(_U32.unpack_from(data, p)[0], off))
        if kind == Kind.DATASEC:
            secinfo = tuple(VarSecinfo(*_SECINFO.unpack_from(data, p + 12 * i)) for i in range(vlen))
            return Datasec(name, size, secinfo)
        if kind == Kind.FLOAT:
            return Float(name, size)
        if kind == Kind.DECL_TAG:
            return DeclTag(name, size, _I32.unpack_from(data, p)[0])
        raise BTFError(f"unknown BTF kind {kind} at offset {off}")

    # -- raw access for fast scans ---------------------------------------------------------------------

    def _word_view(self) -> memoryview | array[int]:
        """The type section as native u32 words (BTF here is little-endian; records are 4-byte multiples)."""
        if self._words is None:
            section = self._data[self._type_start : self._type_end]
            if sys.byteorder == "little":
                self._words = memoryview(section).cast("I")
            else:
                words = array("I", section)
                words.byteswap()
                self._words = words
        return self._words

    def _indices_of_kind(self, kind: int) -> list[int]:
        """Indices (id - first_id) of own, original records of one kind; grouped once for all kinds."""
        if self._by_kind is None:
            groups: dict[int, list[int]] = {}
            for i, k in enumerate(self._kinds):
                lst = groups.get(k)
                if lst is None:
                    groups[k] = [i]
                else:
                    lst.append(i)
            self._by_kind = groups
        return self._by_kind.get(kind, [])

    def _word_index(self, idx: int) -> int:
        return (self._offsets[idx] - self._type_start) >> 2

    def raw_type_ref(self, type_id: int) -> int:
        """The ``size_or_type`` word of a type record (its referenced type id for PTR/TYPEDEF/FUNC...)."""
        idx = type_id - self.first_id
        if idx < 0:
            assert self.base is not None
            return self.base.raw_type_ref(type_id)
        if type_id in self._replaced or idx >= len(self._offsets):
            t = self.type(type_id)
            return int(getattr(t, "type", getattr(t, "size", 0)))
        ref: int = self._word_view()[self._word_index(idx) + 2]
        return ref

    def refs_of_kind(self, kind: Kind) -> list[tuple[int, int]]:
        """``(id, size_or_type word)`` for every own type of ``kind``: a fast scan (e.g. FUNC -> proto id)."""
        words = self._word_view()
        start = self._type_start
        first = self.first_id
        offsets = self._offsets
        k = int(kind)
        out = [(first + i, words[((offsets[i] - start) >> 2) + 2]) for i in self._indices_of_kind(k)]
        if self._replaced or self._added:
            out = [(tid, ref) for tid, ref in out if tid not in self._replaced]
            out += [(tid, self.raw_type_ref(tid)) for tid in self.ids_of_kind(kind) if tid in self._replaced]
            n = len(offsets)
            out += [
                (first + n + i, self.raw_type_ref(first + n + i))
                for i, t in enumerate(self._added)
                if t.kind == kind
            ]
        return out

    def proto_param_table(self, limit: int | None = None) -> list[tuple[int, tuple[int, ...]]]:
        """``(id, parameter type ids)`` of every own FUNC_PROTO (first ``limit`` params): one fast scan."""
        if self._replaced or self._added:
            return [
                (tid, self.raw_proto_param_types(tid, limit)) for tid in self.ids_of_kind(Kind.FUNC_PROTO)
            ]
        words = self._word_view()
        start = self._type_start
        first = self.first_id
        offsets = self._offsets
        cap = 0xFFFF if limit is None else limit
        out = []
        for i in self._indices_of_kind(Kind.FUNC_PROTO):
            w = ((offsets[i] - start) >> 2) + 4
            n = words[w - 3] & 0xFFFF
            out.append((first + i, tuple(words[w : w + 2 * (n if n < cap else cap) : 2])))
        return out

    def raw_proto_param_types(self, proto_id: int, limit: int | None = None) -> tuple[int, ...]:
        """Parameter type ids of a FUNC_PROTO (the first ``limit`` of them), read without decoding names."""
        idx = proto_id - self.first_id
        if idx < 0:
            assert self.base is not None
            return self.base.raw_proto_param_types(proto_id, limit)
        if proto_id in self._replaced or idx >= len(self._offsets):
            t = self.type(proto_id)
            assert isinstance(t, FuncProto)
            return tuple(p.type for p in t.params)[:limit]
        words = self._word_view()
        w = self._word_index(idx)
        vlen = words[w + 1] & 0xFFFF
        if limit is not None and limit < vlen:
            vlen = limit
        return tuple(words[w + 4 : w + 4 + 2 * vlen : 2])

    # -- modification and encoding ---------------------------------------------------------------------

    def replace(self, type_id: int, new: Type) -> None:
        """Replace an own type (the next :meth:`encode` writes ``new`` in its place)."""
        if not self.first_id <= type_id <= self.last_id:
            raise BTFError(f"type id {type_id} is not part of this spec")
        if type_id - self.first_id >= len(self._offsets):
            self._added[type_id - self.first_id - len(self._offsets)] = new
        else:
            self._replaced[type_id] = new
        self._cache.pop(type_id, None)

    def add(self, new: Type) -> int:
        """Append a type; returns its id."""
        self._added.append(new)
        return self.last_id

    @property
    def modified(self) -> bool:
        """Whether :meth:`replace` or :meth:`add` were used."""
        return bool(self._replaced or self._added)

    def encode(self) -> bytes:
        """Raw BTF bytes: the original input when unmodified, else a re-encoding with changed types.

        A re-encoding keeps unchanged type records byte for byte, re-encodes replaced/added ones, appends any
        new strings to the string section, and writes a standard 24-byte header with types then strings.
        """
        if not self.modified:
            return self._data
        strings = bytearray(self.strings)
        lookup: dict[str, int] = {}

        def stroff(s: str) -> int:
            if not s:
                return 0
            if s in lookup:
                return lookup[s]
            offs = self.string_offsets(s)
            if offs:
                lookup[s] = offs[0]
            else:
                lookup[s] = self._str_base + len(strings)
                strings.extend(s.encode() + b"\0")
            return lookup[s]

        types = bytearray()
        data = self._data
        for i, off in enumerate(self._offsets):
            tid = self.first_id + i
            new = self._replaced.get(tid)
            if new is not None:
                types += encode_type(new, stroff)
            else:
                end = self._offsets[i + 1] if i + 1 < len(self._offsets) else self._type_end
                types += data[off:end]
        for t in self._added:
            types += encode_type(t, stroff)
        header = _HEADER.pack(BTF_MAGIC, 1, self.flags, _HEADER.size, 0, len(types), len(types), len(strings))
        return header + bytes(types) + bytes(strings)


def _linkage(value: int, off: int) -> Linkage:
    try:
        return Linkage(value)
    except ValueError:
        raise BTFError(f"bad linkage {value} in the type at offset {off}") from None


def encode_type(t: Type, stroff: Callable[[str], int]) -> bytes:
    """Encode one type record; ``stroff(name)`` returns (allocating if needed) a string offset.

    :class:`BTFError` when a field does not fit its BTF width (a size above 2**32, more than 65535 members).
    """
    try:
        return _encode_type(t, stroff)
    except struct.error as e:
        raise BTFError(f"cannot encode {t.kind.name} {t.name!r}: a field is out of range ({e})") from None


def _encode_type(t: Type, stroff: Callable[[str], int]) -> bytes:

    def head(kind: Kind, vlen: int, size_or_type: int, kflag: bool = False, name: str = "") -> bytes:
        info = (int(kflag) << 31) | (int(kind) << 24) | vlen
        return _TYPE.pack(stroff(name), info, size_or_type)

    if isinstance(t, Int):
        return head(Kind.INT, 0, t.size, name=t.name) + _U32.pack(
            (t.encoding << 24) | (t.offset << 16) | t.bits
        )
    if isinstance(t, Pointer | Volatile | Const | Restrict):
        return head(t.kind, 0, t.type, name=t.name)
    if isinstance(t, Typedef | TypeTag):
        return head(t.kind, 0, t.type, name=t.name)
    if isinstance(t, Array):
        return head(Kind.ARRAY, 0, 0, name=t.name) + _ARRAY.pack(t.type, t.index_type, t.nelems)
    if isinstance(t, Struct | Union):
        kflag = t.kind_flag or any(m.bitfield_size for m in t.members)
        out = head(t.kind, len(t.members), t.size, kflag, t.name)
        for m in t.members:
            off = ((m.bitfield_size << 24) | m.bit_offset) if kflag else m.bit_offset
            out += _MEMBER.pack(stroff(m.name), m.type, off)
        return out
    if isinstance(t, Enum):
        out = head(Kind.ENUM, len(t.values), t.size, t.signed, t.name)
        for v in t.values:
            out += _ENUM_U.pack(stroff(v.name), v.value & 0xFFFFFFFF)
        return out
    if isinstance(t, Enum64):
        out = head(Kind.ENUM64, len(t.values), t.size, t.signed, t.name)
        for v in t.values:
            u = v.value & 0xFFFFFFFFFFFFFFFF
            out += _ENUM64.pack(stroff(v.name), u & 0xFFFFFFFF, u >> 32)
        return out
    if isinstance(t, Fwd):
        return head(Kind.FWD, 0, 0, t.union, t.name)
    if isinstance(t, Func):
        return head(Kind.FUNC, int(t.linkage), t.type, name=t.name)
    if isinstance(t, FuncProto):
        out = head(Kind.FUNC_PROTO, len(t.params), t.return_type, name=t.name)
        for p in t.params:
            out += _PARAM.pack(stroff(p.name), p.type)
        return out
    if isinstance(t, Var):
        return head(Kind.VAR, 0, t.type, name=t.name) + _U32.pack(int(t.linkage))
    if isinstance(t, Datasec):
        out = head(Kind.DATASEC, len(t.vars), t.size, name=t.name)
        for si in t.vars:
            out += _SECINFO.pack(si.type, si.offset, si.size)
        return out
    if isinstance(t, Float):
        return head(Kind.FLOAT, 0, t.size, name=t.name)
    if isinstance(t, DeclTag):
        return head(Kind.DECL_TAG, 0, t.type, name=t.name) + _I32.pack(t.component_idx)
    raise BTFError(f"cannot encode {t!r}")


def _index(data: bytes, start: int, end: int) -> tuple[array[int], bytes, array[int]]:
    """One pass over the type section: absolute offset, kind and name offset of every record."""
    offsets = array("I")
    kinds = bytearray()
    names = array("I")
    append_off = offsets.append
    append_kind = kinds.append
    append_name = names.append
    unpack = _PARAM.unpack_from
    fixed = [0] * 32
    per = [0] * 32
    known = [False] * 32
    for k, (f, p) in _EXTRA.items():
        fixed[k], per[k], known[k] = f, p, True
    off = start
    while off < end:
        if off + _TYPE.size > end:
            raise BTFError(f"type record at offset {off - start} runs past the end of the type section")
        name_off, info = unpack(data, off)
        kind = (info >> 24) & 0x1F
        if not known[kind]:
            raise BTFError(f"unknown BTF kind {kind} at offset {off - start} of the type section")
        append_off(off)
        append_kind(kind)
        append_name(name_off)
        off += 12 + fixed[kind] + per[kind] * (info & 0xFFFF)
    if off != end:
        raise BTFError("type section does not end on a type boundary")
    return offsets, bytes(kinds), names


def read_regular_file(path: str | os.PathLike[str], limit: int, error: type[EBPFError]) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes; else ``error(message)``.

    Opened non-blocking so that a FIFO cannot stall the open itself, checked with fstat on the open file (no
    race with a rename), and read with the bound enforced on what is read (``/proc`` and ``/sys`` files
    report sizes that are 0 or a page). Failing to open or read is the usual OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{os.fsdecode(path)}: not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise error(f"{os.fsdecode(path)}: {st.st_size} bytes, more than the {limit >> 20} MiB limit")
        # Into one buffer of the reported size (grown when the file says less): sysfs hands out a page per
        # read, so vmlinux BTF is ~1,350 reads, and a fresh 1 MiB bytes object per read cost more than the read.
        buf = bytearray(min(st.st_size, limit) + 1 if st.st_size > 0 else 1 << 16)
        total = 0
        while True:
            if total == len(buf):
                if total > limit:
                    raise error(f"{os.fsdecode(path)}: more than the {limit >> 20} MiB limit")
                buf.extend(bytes(min(len(buf), limit + 1 - total)))
            with memoryview(buf) as view:
                n = os.readv(fd, [view[total:]])
            if n == 0:
                break
            total += n
        if total > limit:
            raise error(f"{os.fsdecode(path)}: more than the {limit >> 20} MiB limit")
        return bytes(buf[:total])
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in the words of ls(1)."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


# ---------------------------------------------------------------------------------------------------------
# Kernel BTF


@functools.cache
def kernel_btf() -> Spec:
    """The running kernel's vmlinux BTF (parsed once per process).

    Raises :class:`~pwru.ebpf.errors.NotSupported` (an OSError) when the kernel exposes none.
    """
    path = KERNEL_BTF_DIR / "vmlinux"
    if not path.exists():
        raise NotSupported("kernel BTF", f"{path} missing (a kernel without CONFIG_DEBUG_INFO_BTF)")
    return Spec.load(path)


def module_names() -> list[str]:
    """Names of modules that expose split BTF under ``/sys/kernel/btf``."""
    try:
        return sorted(p.name for p in KERNEL_BTF_DIR.iterdir() if p.name != "vmlinux")
    except OSError:
        return []


@functools.cache
def module_btf(name: str) -> Spec:
    """The split BTF of kernel module ``name`` on top of :func:`kernel_btf`."""
    return Spec.load(KERNEL_BTF_DIR / name, base=kernel_btf())
