"""Fuzzing the BTF parser and the ELF object reader with mutated inputs.

Every input must give either a parse (then every lookup answers or fails with the library's own error) or a
clean error of the library's own types (an :class:`~pwru.ebpf.errors.EBPFError` that is also a ValueError:
``BTFError``, ``ELFError``, ``AsmError``), within a hard time bound per input and without allocating more
than a fixed budget per input (a count field of 2**32 must not allocate 2**32 objects).

Seeds: a tiny BTF blob this file builds with the library's encoder (every kind), the BTF of pwru's own
object, the first few hundred types of the running kernel's vmlinux BTF (skipped without
/sys/kernel/btf/vmlinux), and pwru's object itself for the ELF reader. Mutations: bit flips, byte
overwrites, truncations, inserted and deleted bytes, and header/record fields (lengths, offsets, counts, type
ids, string offsets, section header fields, symbol and relocation fields) set to boundary values.

Example counts (``FUZZ_EXAMPLES``) are picked so that the whole file takes well under a minute; set
``PWRU_FUZZ_SCALE`` (a multiplier) to run longer. Inputs that once failed are kept as explicit cases
(``test_btf_regressions``, ``test_elf_regressions``), each built from a seed by patching the field at fault.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import resource
import signal
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pwru.bpf import BuildError, build, object_path
from pwru.ebpf import btf, elf
from pwru.ebpf.errors import EBPFError

SCALE = float(os.environ.get("PWRU_FUZZ_SCALE", "1"))
FUZZ_EXAMPLES = {"btf-tiny": 1500, "btf-object": 1000, "btf-vmlinux": 600, "elf-object": 120}
#: Hard bound on one input (parse plus walk); a real one takes milliseconds (the object ~0.5 s).
INPUT_SECONDS = 30.0
#: Address space one input may add; the largest seed is under 1 MB.
INPUT_MEMORY = 512 << 20
VMLINUX = Path("/sys/kernel/btf/vmlinux")

BOUNDARY_U32 = (0, 1, 2, 3, 4, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
BOUNDARY_U64 = (0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 63, (1 << 64) - 1)


def settings_for(name: str) -> settings:
    return settings(
        max_examples=max(1, int(FUZZ_EXAMPLES[name] * SCALE)),
        deadline=None,  # the hard per-input bound below applies instead: CI machines are slow and shared
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------------------------
# Guards: a clean error, a time bound, a memory bound


class Hang(BaseException):
    """An input ran past :data:`INPUT_SECONDS` (BaseException: no ``except Exception`` may swallow it)."""


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def bounded(seconds: float = INPUT_SECONDS) -> Iterator[None]:
    """Run one input under a wall-clock alarm and an address-space limit a little above the current size."""

    def alarm(_sig: int, _frame: FrameType | None) -> None:
        raise Hang(f"input took more than {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + INPUT_MEMORY
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def clean_error(e: BaseException) -> bool:
    """The library's own "bad input" error (anything else is a defect: IndexError, struct.error, ...)."""
    return isinstance(e, EBPFError) and isinstance(e, ValueError)


def attempt(fn: Callable[[], object]) -> object:
    """``fn()``, or None when it fails cleanly; a defect propagates (and fails the example)."""
    try:
        return fn()
    except Exception as e:
        if clean_error(e):
            return None
        raise


# ---------------------------------------------------------------------------------------------------------
# Walks: what pwru does with a parsed input


def walk_btf(spec: btf.Spec) -> None:
    """Every lookup pwru makes on a BTF spec, on every type; each must answer or fail cleanly."""
    if not spec.modified:
        assert spec.encode() == spec._data  # an unmodified spec encodes to its input, byte for byte
    for tid in range(spec.first_id, spec.last_id + 1):
        t = attempt(lambda tid=tid: spec.type(tid))
        attempt(lambda tid=tid: spec.kind_of(tid))
        attempt(lambda tid=tid: spec.name_of(tid))
        attempt(lambda tid=tid: spec.raw_type_ref(tid))
        attempt(lambda tid=tid: spec.resolve_type(tid))
        attempt(lambda tid=tid: spec.size_of(tid))
        if isinstance(t, btf.Struct | btf.Union):
            attempt(lambda tid=tid: spec.members(tid))
            for m in t.members:
                attempt(lambda m=m: spec.bitfield(m))
                if m.name:
                    attempt(lambda tid=tid, m=m: spec.member_offset(tid, m.name))
            attempt(lambda tid=tid: spec.member(tid, "no_such_member"))
        if isinstance(t, btf.Enum | btf.Enum64):
            attempt(lambda tid=tid: spec.enum_values(tid))
        if isinstance(t, btf.Func | btf.FuncProto):
            attempt(lambda tid=tid: spec.func_proto(tid))
            attempt(lambda tid=tid: spec.raw_proto_param_types(tid, 5))
        if isinstance(t, btf.Datasec):
            attempt(lambda t=t, tid=tid: spec.replace(tid, btf.Datasec(t.name, t.size, t.vars[::-1])))
        if t is not None and getattr(t, "name", ""):
            attempt(lambda t=t: spec.find(t.name))
            attempt(lambda t=t: spec.find_one(t.name))
    for kind in btf.Kind:
        attempt(lambda kind=kind: list(spec.ids_of_kind(kind)))
        attempt(lambda kind=kind: spec.refs_of_kind(kind))
    attempt(lambda: spec.proto_param_table(5))
    for name in ("sk_buff", "int", ".maps", ""):
        attempt(lambda name=name: spec.find(name))
    encoded = attempt(spec.encode)
    if isinstance(encoded, bytes) and spec.modified:
        attempt(lambda: btf.Spec.from_bytes(encoded))


def parse_btf(data: bytes) -> None:
    spec = attempt(lambda: btf.Spec.from_bytes(data))
    if isinstance(spec, btf.Spec):
        walk_btf(spec)


def parse_elf(data: bytes, link: Callable[[list[str]], list[str]]) -> None:
    """ObjectSpec loading plus linking of some programs (``link`` picks which, from the names)."""
    obj = attempt(lambda: elf.ObjectSpec.from_bytes(data))
    if not isinstance(obj, elf.ObjectSpec):
        return
    if obj.btf is not None:
        walk_btf(obj.btf)
    for m in obj.maps.values():
        assert m.data is None or len(m.data) == m.value_size
    for name in link(sorted(obj.programs)):
        prog = obj.programs[name]
        attempt(lambda prog=prog: (prog.func_info_bytes(), prog.line_info_bytes(), prog.core_relos, prog.maps_used))


# ---------------------------------------------------------------------------------------------------------
# Seeds


def tiny_btf() -> bytes:
    """A small BTF blob with one type of every kind, built by the library's own encoder."""
    empty = btf._HEADER.pack(btf.BTF_MAGIC, 1, 0, btf._HEADER.size, 0, 0, 0, 1) + b"\0"
    spec = btf.Spec.from_bytes(empty)
    u32 = spec.add(btf.Int("u32", 4, 0, 0, 32))
    s8 = spec.add(btf.Int("s8", 1, btf.INT_SIGNED, 0, 8))
    ptr = spec.add(btf.Pointer(u32))
    arr = spec.add(btf.Array(u32, u32, 4))
    st_id = spec.add(
        btf.Struct("pair", 24, (btf.Member("a", u32, 0), btf.Member("b", arr, 32), btf.Member("c", s8, 160, 3)))
    )
    spec.add(btf.Union("either", 8, (btf.Member("p", ptr, 0), btf.Member("", st_id, 0))))
    spec.add(btf.Enum("colour", 4, (btf.EnumValue("RED", 0), btf.EnumValue("BLUE", -1)), True))
    spec.add(btf.Enum64("big", 8, (btf.EnumValue("HUGE", 1 << 40),)))
    spec.add(btf.Fwd("later", True))
    td = spec.add(btf.Typedef("u32_t", u32))
    vol = spec.add(btf.Volatile(td))
    cst = spec.add(btf.Const(vol))
    spec.add(btf.Restrict(ptr))
    proto = spec.add(btf.FuncProto(u32, (btf.Param("x", cst), btf.Param("", 0))))
    func = spec.add(btf.Func("f", proto, btf.Linkage.GLOBAL))
    var = spec.add(btf.Var("v", u32, btf.Linkage.GLOBAL))
    spec.add(btf.Datasec(".data", 4, (btf.VarSecinfo(var, 0, 4),)))
    spec.add(btf.Float("double", 8))
    spec.add(btf.DeclTag("tag", func, -1))
    spec.add(btf.TypeTag("user", u32))
    return spec.encode()


@functools.cache
def object_bytes() -> bytes:
    try:
        return object_path().read_bytes()
    except BuildError:
        try:
            build.build()
        except BuildError as e:
            pytest.skip(f"pwru's BPF object is not built and cannot be: {e}")
        return object_path().read_bytes()


@functools.cache
def object_btf() -> bytes:
    sec = ELFFile(io.BytesIO(object_bytes())).get_section_by_name(".BTF")
    assert sec is not None
    return bytes(sec.data())


@functools.cache
def vmlinux_slice(count: int = 400) -> bytes:
    """The first ``count`` types of the kernel's BTF, re-encoded on their own (references beyond dangle)."""
    if not VMLINUX.exists():
        pytest.skip(f"{VMLINUX} missing")
    vm = btf.Spec.load(VMLINUX)
    empty = btf._HEADER.pack(btf.BTF_MAGIC, 1, 0, btf._HEADER.size, 0, 0, 0, 1) + b"\0"
    spec = btf.Spec.from_bytes(empty)
    for tid in range(1, count + 1):
        spec.add(vm.type(tid))
    return spec.encode()


# ---------------------------------------------------------------------------------------------------------
# Mutations


@dataclass(frozen=True)
class Field:
    """A little-endian integer field of the seed worth setting to boundary values."""

    offset: int
    size: int  # 2, 4 or 8


def btf_fields(data: bytes, base: int = 0) -> list[Field]:
    """The header fields and every word of every type record (name offset, info, size/type, extra data)."""
    spec = btf.Spec.from_bytes(data)
    out = [Field(base + 6, 1)] + [Field(base + o, 4) for o in range(4, 24, 4)]
    ends = [*list(spec._offsets)[1:], spec._type_end]
    for start, end in zip(spec._offsets, ends, strict=True):
        out += [Field(base + o, 4) for o in range(start, end, 4)]
        out.append(Field(base + start + 4, 2))  # vlen alone
        out.append(Field(base + start + 7, 1))  # kind and kind_flag byte
    return out


def elf_fields(data: bytes) -> list[Field]:
    """ELF header, section headers, symbols, relocations, and the .BTF/.BTF.ext headers and records."""
    e = ELFFile(io.BytesIO(data))
    out = [Field(o, s) for o, s in ((0x28, 8), (0x3A, 2), (0x3C, 2), (0x3E, 2), (0x12, 2), (0x05, 1))]
    shoff = e["e_shoff"]
    for i, sec in enumerate(e.iter_sections()):
        h = shoff + i * 64
        out += [Field(h, 4), Field(h + 4, 4), Field(h + 8, 8), Field(h + 24, 8), Field(h + 32, 8)]
        out += [Field(h + 40, 4), Field(h + 44, 4), Field(h + 56, 8)]
        off, size = sec["sh_offset"], sec["sh_size"]
        if sec["sh_type"] == "SHT_SYMTAB":
            for s in range(off, off + size, 24):
                out += [Field(s, 4), Field(s + 4, 1), Field(s + 6, 2), Field(s + 8, 8), Field(s + 16, 8)]
        elif sec["sh_type"] == "SHT_REL":
            out += [f for r in range(off, off + size, 16) for f in (Field(r, 8), Field(r + 8, 4), Field(r + 12, 4))]
        elif sec.name == ".BTF":
            out += btf_fields(bytes(sec.data()), off)
        elif sec.name == ".BTF.ext":
            out += [Field(o, 4) for o in range(off + 4, off + min(size, 4096), 4)]
        elif sec.name in (".maps", ".rodata", "license"):
            out += [Field(o, 4) for o in range(off, off + size - 3, 4)]
        elif sec["sh_flags"] & 0x4 and size:  # code: the first instructions' opcode, offset and imm
            insns = range(off, off + min(size, 512), 8)
            out += [f for o in insns for f in (Field(o, 1), Field(o + 2, 2), Field(o + 4, 4))]
    return out


def boundary(size: int, data_len: int) -> st.SearchStrategy[int]:
    if size == 1:
        return st.sampled_from((0, 1, 0x1F, 0x7F, 0x80, 0xFF))
    if size == 2:
        return st.sampled_from((0, 1, 0x7FFF, 0x8000, 0xFFF0, 0xFFFE, 0xFFFF))
    mask = (1 << (8 * size)) - 1
    near = (data_len - 1, data_len, data_len + 1, data_len * 2)
    values = (BOUNDARY_U32 if size == 4 else BOUNDARY_U64) + tuple(v & mask for v in near)
    return st.sampled_from(values) | st.integers(0, mask)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, fields: list[Field]) -> bytes:
    """``seed`` after one to four mutations."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("field", "field", "field", "flip", "byte", "truncate", "insert", "delete")))
        n = len(data)
        if op == "field" and fields:
            f = draw(st.sampled_from(fields))
            if f.offset + f.size <= n:
                data[f.offset : f.offset + f.size] = draw(boundary(f.size, n)).to_bytes(f.size, "little")
        elif op == "flip" and n:
            pos = draw(st.integers(0, n - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif op == "insert":
            pos = draw(st.integers(0, n))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            pos = draw(st.integers(0, n - 1))
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


# ---------------------------------------------------------------------------------------------------------
# The fuzzers


def check_btf(data: bytes) -> None:
    with bounded():
        parse_btf(data)


def test_seeds_parse_cleanly() -> None:
    """The unmutated seeds parse and walk without a single error (so the walks reach real code)."""
    for data in (tiny_btf(), object_btf()):
        spec = btf.Spec.from_bytes(data)
        assert len(spec) > 15
        check_btf(data)
    obj = elf.ObjectSpec.from_bytes(object_bytes())
    assert obj.programs and obj.btf is not None and obj.btf_ext is not None


@given(st.data())
@settings_for("btf-tiny")
def test_fuzz_btf_tiny(data: st.DataObject) -> None:
    seed = tiny_btf()
    check_btf(data.draw(mutated(seed, _fields_of("tiny")), label="input"))


@given(st.data())
@settings_for("btf-object")
def test_fuzz_btf_object(data: st.DataObject) -> None:
    check_btf(data.draw(mutated(object_btf(), _fields_of("object")), label="input"))


@given(st.data())
@settings_for("btf-vmlinux")
def test_fuzz_btf_vmlinux(data: st.DataObject) -> None:
    check_btf(data.draw(mutated(vmlinux_slice(), _fields_of("vmlinux")), label="input"))


@given(st.data())
@settings_for("elf-object")
def test_fuzz_elf_object(data: st.DataObject) -> None:
    seed = object_bytes()
    blob = data.draw(mutated(seed, _elf_fields()), label="input")

    def pick(names: list[str]) -> list[str]:
        # Linking every program costs ~0.3 s; one drawn program (plus the cheapest) covers the linker.
        return sorted({data.draw(st.sampled_from(names), label="linked"), names[0]}) if names else []

    with bounded():
        parse_elf(blob, pick)


@functools.cache
def _fields_of(seed: str) -> list[Field]:
    return btf_fields({"tiny": tiny_btf, "object": object_btf, "vmlinux": vmlinux_slice}[seed]())


@functools.cache
def _elf_fields() -> list[Field]:
    return elf_fields(object_bytes())


# ---------------------------------------------------------------------------------------------------------
# Regressions: inputs the fuzzers once failed on


def _patch(seed: bytes, *edits: tuple[int, bytes]) -> bytes:
    out = bytearray(seed)
    for off, raw in edits:
        out[off : off + len(raw)] = raw
    return bytes(out)


def _u16(v: int) -> bytes:
    return struct.pack("<H", v)


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _record(seed: bytes, name: str, kind: btf.Kind) -> int:
    """Absolute offset of the type record ``name`` of ``kind`` in a BTF blob."""
    spec = btf.Spec.from_bytes(seed)
    return spec._offsets[spec.find_one(name, kind) - spec.first_id]


def _string(seed: bytes, name: str) -> int:
    spec = btf.Spec.from_bytes(seed)
    return spec._str_start + spec.string_offsets(name)[0]


@functools.cache
def _btf_regressions() -> dict[str, tuple[bytes, str]]:
    """Inputs that once escaped as a bare exception: (input, the clean error's message, a regex)."""
    tiny = tiny_btf()
    func = _record(tiny, "f", btf.Kind.FUNC)
    var = _record(tiny, "v", btf.Kind.VAR)
    union = _record(tiny, "either", btf.Kind.UNION)
    either = btf.Spec.from_bytes(tiny).find_one("either", btf.Kind.UNION)
    header = btf._HEADER.pack(btf.BTF_MAGIC, 1, 0, 24, 0, 4, 0, 4)
    return {
        # UnicodeDecodeError: a name that is not UTF-8.
        "string-not-utf8": (_patch(tiny, (_string(tiny, "pair"), b"\x80")), "not valid UTF-8"),
        # ValueError "65534 is not a valid Linkage": a FUNC's vlen is its linkage.
        "func-linkage": (_patch(tiny, (func + 4, _u16(0xFFFE))), "bad linkage 65534"),
        # ValueError "2147483648 is not a valid Linkage": a VAR's extra word.
        "var-linkage": (_patch(tiny, (var + 12, _u32(0x80000000))), "bad linkage 2147483648"),
        # struct.error: a 4-byte type section at the very end of the data (the record header needs 12).
        "record-past-data": (header + b"\0\0\0\0", "runs past the end of the type section"),
        # RecursionError (found reading the code): a union whose anonymous member is the union itself.
        "anonymous-member-cycle": (_patch(tiny, (union + 12 + 12 + 4, _u32(either))), "nest too deep"),
    }


@pytest.mark.parametrize("case", list(_btf_regressions()))
def test_btf_regressions(case: str) -> None:
    data, message = _btf_regressions()[case]
    check_btf(data)  # clean everywhere
    spec = attempt(lambda: btf.Spec.from_bytes(data))
    errors = []
    if isinstance(spec, btf.Spec):
        for tid in range(1, spec.last_id + 1):
            for op in (spec.type, lambda t: spec.member(t, "nothing")):
                try:
                    op(tid)
                except btf.BTFError as e:
                    errors.append(str(e))
    else:
        with pytest.raises(btf.BTFError) as info:
            btf.Spec.from_bytes(data)
        errors.append(str(info.value))
    assert any(message in text for text in errors), errors


def test_encode_out_of_range_is_a_btf_error() -> None:
    """struct.error: a DATASEC sized from a 64-bit ELF section size could not be encoded (found via ELF)."""
    spec = btf.Spec.from_bytes(tiny_btf())
    tid = spec.find_one(".data", btf.Kind.DATASEC)
    spec.replace(tid, btf.Datasec(".data", 1 << 32, ()))
    with pytest.raises(btf.BTFError, match=r"cannot encode DATASEC '.data': a field is out of range"):
        spec.encode()


@functools.cache
def _elf_regressions() -> dict[str, tuple[bytes, str]]:
    seed = object_bytes()
    e = ELFFile(io.BytesIO(seed))
    shoff = e["e_shoff"]
    sections = list(e.iter_sections())
    index = {s.name: i for i, s in enumerate(sections)}

    def shdr(name: str, field: int) -> int:
        return shoff + index[name] * 64 + field

    rel = sections[index[".relkprobe/skb_1"]]["sh_offset"]
    symtab = sections[index[".symtab"]]
    assert isinstance(symtab, SymbolTableSection)
    rodata_sym = next(i for i, sym in enumerate(symtab.iter_symbols()) if sym["st_shndx"] == index[".rodata"])
    obj = elf.ObjectSpec.from_bytes(seed)
    assert obj.btf is not None
    btf_off = sections[index[".BTF"]]["sh_offset"]
    maps_rec = btf_off + _record(object_btf(), ".maps", btf.Kind.DATASEC)
    ext = sections[index[".BTF.ext"]]["sh_offset"]
    (ext_hdr_len,) = struct.unpack_from("<I", seed, ext + 4)
    (co_off,) = struct.unpack_from("<I", seed, ext + 24)
    first_relo = ext + ext_hdr_len + co_off + 4 + 8  # rec_size, then the first section's name_off and count
    return {
        # elftools ELFError "Too small e_shentsize: 0" escaped.
        "shentsize-zero": (_patch(seed, (0x3A, _u16(0))), "malformed ELF object: Too small e_shentsize"),
        # elftools ELFParseError: a section header table past the end of the file.
        "shoff-past-eof": (_patch(seed, (0x28, _u64(len(seed) * 2))), "malformed ELF object"),
        # OverflowError "Python int too large to convert to C ssize_t" reading a section of size 2**64-1.
        "section-size-huge": (_patch(seed, (shdr(".BTF", 32), _u64((1 << 64) - 1))), "runs past the end"),
        # OverflowError (fuzzer, issue 12's object): the section-name string table at offset 2**63 + 5, which
        # pyelftools seeks to while naming the sections, before any of our checks.
        "shstrtab-offset-huge": (
            _patch(seed, (shoff + e["e_shstrndx"] * 64 + 24, _u64((1 << 63) + 5))),
            "malformed ELF object: an offset out of range",
        ),
        # elftools ELFParseError "Reading section ... past EOF".
        "section-offset-past-eof": (_patch(seed, (shdr(".maps", 24), _u64(0x7FFFFFFF))), "runs past the end"),
        # IndexError: a relocation against symbol 0xFFFFFF.
        "relocation-symbol": (_patch(seed, (rel + 12, _u32(0xFFFFFF))), "out of range"),
        # IndexError (code review): a symbol's section index past the section table.
        "symbol-section": (_patch(seed, (symtab["sh_offset"] + 24 * rodata_sym + 6, _u16(0xFEFF))), "out of range"),
        # AssertionError: a .maps entry that is not a VAR (its type id points at the DATASEC itself).
        "maps-entry-not-var": (
            _patch(seed, (maps_rec + 12, _u32(obj.btf.find_one(".maps", btf.Kind.DATASEC)))),
            "not a variable",
        ),
        # ValueError "2097152 is not a valid CoreReloKind".
        "core-relo-kind": (_patch(seed, (first_relo + 12, _u32(0x200000))), "unknown CO-RE relocation kind"),
        # MemoryError (code review): a .bss of 2**40 zero bytes was allocated.
        "nobits-huge": (
            _patch(seed, (shdr(".rodata", 4), _u32(8)), (shdr(".rodata", 32), _u64(1 << 40))),
            "zero bytes, more than",
        ),
        # UnicodeDecodeError (code review): a license that is not UTF-8 is kept, not a traceback.
        "license-not-utf8": (_patch(seed, (sections[index["license"]]["sh_offset"], b"\xff")), ""),
        # struct.error (code review): a .BTF.ext info block shorter than its 4-byte record size.
        "ext-block-short": (_patch(seed, (ext + 12, _u32(2))), ".BTF.ext info block"),
    }


@pytest.mark.parametrize("case", list(_elf_regressions()))
def test_elf_regressions(case: str) -> None:
    data, message = _elf_regressions()[case]
    with bounded():
        parse_elf(data, lambda names: names[:1])
    if not message:
        elf.ObjectSpec.from_bytes(data)
        return
    with pytest.raises(EBPFError, match=re.escape(message)):
        elf.ObjectSpec.from_bytes(data)


def test_guards_catch_what_they_should() -> None:
    """The guards themselves can fail: a hang, a huge allocation and a bare exception are each caught."""
    with pytest.raises(Hang), bounded(0.2):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass
    with pytest.raises(MemoryError), bounded():
        bytearray(2 * INPUT_MEMORY)
    with pytest.raises(IndexError):
        attempt(lambda: [][0])
    assert attempt(lambda: btf.Spec.from_bytes(b"")) is None
