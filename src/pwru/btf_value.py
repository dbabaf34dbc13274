"""A value of a BTF type read from its bytes (little-endian, as BPF maps hold them on x86), for --output-bpfmap's
keys and values: :func:`decode` gives a JSON-ready value, :func:`c_text` shows it as a C initializer.

Integers are numbers (``bool`` for a BTF bool), enums their member's name where one has the value, ``char``
arrays strings (to the first NUL), other arrays lists, pointers ``0x...`` strings (enum names, pointers and hex are
:class:`Bare` strings, which C shows unquoted), structs and unions objects by
member name (an anonymous member's members join its parent's), floats numbers. Bitfields are read at their bit
offset. A type that cannot be shown (a function, a forward declaration) gives its bytes as hex.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from pwru.ebpf import btf

#: Arrays longer than this show their first elements and ``"..."``.
MAX_ELEMENTS = 64
#: Nesting deeper than this shows hex (a type cycle through arrays, or a hostile BTF).
MAX_DEPTH = 16

_FLOATS = {4: "<f", 8: "<d"}


class Bare(str):
    """A string value that C shows without quotes: an enum member's name, a pointer, bytes as hex."""

    __slots__ = ()


def decode(spec: btf.Spec, type_id: int, data: bytes) -> Any:
    """The value of type ``type_id`` at the start of ``data``; :class:`btf.BTFError` or ``ValueError`` when the
    type is broken or ``data`` is shorter than the type."""
    size = spec.size_of(type_id)
    if len(data) < size:
        raise ValueError(f"{len(data)} bytes for a {size}-byte type")
    return _value(spec, type_id, data, 0, 0)


def _int(data: bytes, off: int, size: int, signed: bool) -> int:
    return int.from_bytes(data[off : off + size], "little", signed=signed)


def _value(spec: btf.Spec, type_id: int, data: bytes, off: int, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return Bare(data[off : off + spec.size_of(type_id)].hex())
    t = spec.resolve_type(type_id)
    if isinstance(t, btf.Int):
        if t.bits and (t.offset or t.bits != t.size * 8):
            return _bits(data, off * 8 + t.offset, t.bits, t.signed)
        v = _int(data, off, t.size, t.signed)
        return bool(v) if t.encoding & btf.INT_BOOL else v
    if isinstance(t, btf.Enum | btf.Enum64):
        v = _int(data, off, t.size, t.signed)
        return next((Bare(e.name) for e in t.values if e.value == v), v)
    if isinstance(t, btf.Pointer):
        return Bare(f"{_int(data, off, 8, False):#x}")
    if isinstance(t, btf.Float) and t.size in _FLOATS:
        return struct.unpack_from(_FLOATS[t.size], data, off)[0]
    if isinstance(t, btf.Array):
        return _array(spec, t, data, off, depth)
    if isinstance(t, btf.Struct | btf.Union):
        out: dict[str, Any] = {}
        for m in t.members:
            _member(spec, m, data, off, depth, out)
        return out
    return Bare(data[off : off + max(spec.size_of(type_id), 0)].hex())


def _array(spec: btf.Spec, t: btf.Array, data: bytes, off: int, depth: int) -> Any:
    elem = spec.resolve_type(t.type)
    if isinstance(elem, btf.Int) and elem.size == 1 and (elem.name == "char" or elem.encoding & btf.INT_CHAR):
        raw = data[off : off + t.nelems].split(b"\0", 1)[0]
        return raw.decode("utf-8", "backslashreplace")
    step = spec.size_of(t.type)
    items = [_value(spec, t.type, data, off + i * step, depth + 1) for i in range(min(t.nelems, MAX_ELEMENTS))]
    if t.nelems > MAX_ELEMENTS:
        items.append(Bare("..."))
    return items


def _bits(data: bytes, bit_off: int, bits: int, signed: bool) -> int:
    first, last = bit_off // 8, (bit_off + bits + 7) // 8
    v = (int.from_bytes(data[first:last], "little") >> (bit_off - first * 8)) & ((1 << bits) - 1)
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


def _member(spec: btf.Spec, m: btf.Member, data: bytes, off: int, depth: int, out: dict[str, Any]) -> None:
    if m.bitfield_size:
        t = spec.resolve_type(m.type)
        signed = isinstance(t, btf.Int | btf.Enum | btf.Enum64) and t.signed
        value: Any = _bits(data, off * 8 + m.bit_offset, m.bitfield_size, signed)
    else:
        value = _value(spec, m.type, data, off + m.bit_offset // 8, depth + 1)
    if not m.name and isinstance(value, dict):
        out.update(value)  # an anonymous struct or union: its members are the parent's
    else:
        out[m.name] = value


def c_text(value: Any) -> str:
    """A decoded value as C shows an initializer: ``{.daddr = 16777226, .name = "eth0", .ids = [1, 2]}``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f".{k} = {c_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(c_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not isinstance(value, Bare):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
