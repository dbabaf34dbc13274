"""Reading a clang-compiled BPF ELF object: programs, maps, global data, relocations, BTF and .BTF.ext.

Conventions follow libbpf's: a program's section name says its type (``kprobe/do_unlinkat``, ``tp_btf/sched_switch``,
``tc``...), several programs may share a section (one per FUNC symbol), functions in ``.text`` are
subprograms appended to every program that calls them (transitively), maps are BTF-defined in ``.maps``, and
``.rodata``/``.data``/``.bss`` (and their ``.name`` variants) become one-element array maps.

Each function is kept as its own unit (:class:`Function`) until a program is linked, so that a subprogram's
body can be swapped (:meth:`ProgramSpec.replace_function`) and calls, func_info and line_info follow without
offset arithmetic: linking labels every function and lets :func:`pwru.ebpf.asm.resolve` fix the calls.
Record offsets (line_info, CO-RE relocations, map references) are kept as *instruction indexes* (into a
function's or a linked program's ``insns``); conversion to the kernel's 8-byte slots happens when encoding.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import io
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from elftools.common import exceptions as elftools_errors
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection

from pwru.ebpf import asm, btf
from pwru.ebpf.asm import Instruction
from pwru.ebpf.errors import EBPFError
from pwru.ebpf.syscall import AttachType, MapType, ProgType

__all__ = [
    "BTFExt",
    "CoreRelo",
    "CoreReloKind",
    "ELFError",
    "FuncInfo",
    "Function",
    "LineInfo",
    "MapRef",
    "MapSpec",
    "ObjectSpec",
    "ProgramSpec",
    "VariableSpec",
    "section_program_type",
]

EM_BPF = 247
R_BPF_64_64 = 1
R_BPF_64_32 = 10
FUNC_INFO_REC_SIZE = 8
LINE_INFO_REC_SIZE = 16
CORE_RELO_REC_SIZE = 16
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10
#: The largest object file :meth:`ObjectSpec.load` reads (pwru's own is under 1 MB).
MAX_OBJECT_SIZE = 256 << 20
#: The largest zero-filled (``SHT_NOBITS``, ``.bss``) section accepted: its bytes are allocated here, and the
#: kernel refuses array-map values above KMALLOC_MAX_SIZE (4 MiB on x86-64) anyway.
MAX_NOBITS_SIZE = 64 << 20
SHF_COMPRESSED = 0x800


class ELFError(EBPFError, ValueError):
    """An object file this loader cannot use (not BPF, unsupported construct, dangling reference)."""


# ---------------------------------------------------------------------------------------------------------
# Section names -> program types


@dataclass(frozen=True, slots=True)
class _SectionDef:
    prefix: str
    prog_type: ProgType
    attach_type: AttachType | None
    exact: bool = False  # the whole section name must equal prefix (or prefix + "/...")
    retprobe: bool = False


_SECTIONS: tuple[_SectionDef, ...] = (
    _SectionDef("kprobe.multi/", ProgType.KPROBE, AttachType.TRACE_KPROBE_MULTI),
    _SectionDef("kretprobe.multi/", ProgType.KPROBE, AttachType.TRACE_KPROBE_MULTI, retprobe=True),
    _SectionDef("kprobe/", ProgType.KPROBE, None),
    _SectionDef("kretprobe/", ProgType.KPROBE, None, retprobe=True),
    _SectionDef("fentry/", ProgType.TRACING, AttachType.TRACE_FENTRY),
    _SectionDef("fexit/", ProgType.TRACING, AttachType.TRACE_FEXIT, retprobe=True),
    _SectionDef("fmod_ret/", ProgType.TRACING, AttachType.MODIFY_RETURN),
    _SectionDef("tp_btf/", ProgType.TRACING, AttachType.TRACE_RAW_TP),
    _SectionDef("raw_tp/", ProgType.RAW_TRACEPOINT, None),
    _SectionDef("raw_tracepoint/", ProgType.RAW_TRACEPOINT, None),
    _SectionDef("tracepoint/", ProgType.TRACEPOINT, None),
    _SectionDef("tp/", ProgType.TRACEPOINT, None),
    _SectionDef("tcx/ingress", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, exact=True),
    _SectionDef("tcx/egress", ProgType.SCHED_CLS, AttachType.TCX_EGRESS, exact=True),
    _SectionDef("tc", ProgType.SCHED_CLS, None, exact=True),
    _SectionDef("classifier", ProgType.SCHED_CLS, None, exact=True),
    _SectionDef("action", ProgType.SCHED_ACT, None, exact=True),
    _SectionDef("xdp", ProgType.XDP, AttachType.XDP, exact=True),
    _SectionDef("netfilter", ProgType.NETFILTER, AttachType.NETFILTER, exact=True),
    _SectionDef("socket", ProgType.SOCKET_FILTER, None, exact=True),
)


def section_program_type(section: str) -> tuple[ProgType, AttachType | None, str, bool]:
    """``(program type, expected attach type, attach target, is return probe)`` for a section name.

    The attach target is what follows the prefix (``do_unlinkat`` for ``kprobe/do_unlinkat``, ``sched/sched_switch`` for
    ``tracepoint/sched/sched_switch``); it may be empty or a placeholder when targets are chosen at load time.
    Raises :class:`ELFError` for sections no convention covers.
    """
    for d in _SECTIONS:
        if d.exact:
            if section == d.prefix or section.startswith(d.prefix + "/"):
                return d.prog_type, d.attach_type, section[len(d.prefix) + 1 :], d.retprobe
        elif section.startswith(d.prefix):
            return d.prog_type, d.attach_type, section[len(d.prefix) :], d.retprobe
    raise ELFError(f"section {section!r}: unknown program type")


# ---------------------------------------------------------------------------------------------------------
# .BTF.ext


class CoreReloKind(enum.IntEnum):
    """``enum bpf_core_relo_kind``."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


@dataclass(frozen=True, slots=True)
class FuncInfo:
    """``bpf_func_info``: the FUNC type of the function starting at instruction ``index``."""

    index: int
    type_id: int


@dataclass(frozen=True, slots=True)
class LineInfo:
    """``bpf_line_info``: source position of the instruction at ``index`` (offsets into the BTF strings)."""

    index: int
    file_name_off: int
    line_off: int
    line_col: int

    @property
    def line(self) -> int:
        return self.line_col >> 10

    @property
    def col(self) -> int:
        return self.line_col & 0x3FF


@dataclass(frozen=True, slots=True)
class CoreRelo:
    """``bpf_core_relo``: patch the instruction at ``index`` for local type ``type_id`` and ``access``."""

    index: int
    type_id: int
    access: str
    kind: CoreReloKind


@dataclass(slots=True)
class BTFExt:
    """Parsed ``.BTF.ext``: records per ELF section, with *byte* offsets into that section."""

    func_info: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    line_info: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    core_relos: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, strings: btf.Spec) -> BTFExt:
        """Parse ``.BTF.ext`` bytes; section names are looked up in ``strings`` (the object's BTF)."""
        if len(data) < 24:
            raise ELFError(".BTF.ext shorter than its header")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != btf.BTF_MAGIC or version != 1:
            raise ELFError(f".BTF.ext: bad magic {magic:#x} or version {version}")
        if hdr_len < 24 or hdr_len > len(data):
            raise ELFError(f".BTF.ext: header length {hdr_len} out of range")
        fi_off, fi_len, li_off, li_len = struct.unpack_from("<IIII", data, 8)
        co_off = co_len = 0
        if hdr_len >= 32:
            co_off, co_len = struct.unpack_from("<II", data, 24)
        out = cls()
        fi = _ext_section(data, hdr_len + fi_off, fi_len, 8, 2, strings)
        li = _ext_section(data, hdr_len + li_off, li_len, 16, 4, strings)
        co = _ext_section(data, hdr_len + co_off, co_len, 16, 4, strings)
        out.func_info = {k: [(r[0], r[1]) for r in v] for k, v in fi.items()}
        out.line_info = {k: [(r[0], r[1], r[2], r[3]) for r in v] for k, v in li.items()}
        out.core_relos = {k: [(r[0], r[1], r[2], r[3]) for r in v] for k, v in co.items()}
        return out


def _ext_section(
    data: bytes, start: int, length: int, min_size: int, words: int, strings: btf.Spec
) -> dict[str, list[tuple[int, ...]]]:
    """One info block of .BTF.ext: ``rec_size`` then, per ELF section, ``sec_name_off, num_info, records``."""
    out: dict[str, list[tuple[int, ...]]] = {}
    if length == 0:
        return out
    end = start + length
    if end > len(data) or length < 4:
        raise ELFError(".BTF.ext info block runs past the end of the section")
    (rec_size,) = struct.unpack_from("<I", data, start)
    if rec_size < min_size:
        raise ELFError(f".BTF.ext record size {rec_size} is smaller than {min_size}")
    p = start + 4
    fmt = struct.Struct(f"<{words}I")
    while p < end:
        if p + 8 > end:
            raise ELFError(".BTF.ext section header runs past its block")
        name_off, count = struct.unpack_from("<II", data, p)
        p += 8
        if p + count * rec_size > end:
            raise ELFError(".BTF.ext records run past their block")
        name = strings.string(name_off)
        out.setdefault(name, []).extend(fmt.unpack_from(data, p + i * rec_size) for i in range(count))
        p += count * rec_size
    return out


# ---------------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True, slots=True)
class MapRef:
    """The ld_imm64 at ``index`` refers to map ``map`` (``offset`` None: the map; else a value address)."""

    index: int
    map: str
    offset: int | None = None


@dataclass(slots=True)
class VariableSpec:
    """A global variable of a data section (``.rodata``...): where it sits and its BTF type."""

    name: str
    section: str
    offset: int
    size: int
    type_id: int


@dataclass(slots=True)
class MapSpec:
    """A map to create: from ``.maps`` (BTF-defined) or a global data section (then ``data`` is its value)."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    map_extra: int = 0
    key_type_id: int = 0
    value_type_id: int = 0
    data: bytes | None = None
    section: str = ".maps"

    @property
    def is_global_data(self) -> bool:
        return self.data is not None

    @property
    def readonly(self) -> bool:
        """Frozen after being filled (``.rodata``)."""
        return self.section.startswith(".rodata")


@dataclass(slots=True)
class Function:
    """One BPF function (program entry or subprogram) as compiled, before linking.

    ``insns`` keep unresolved bpf-to-bpf calls as ``target`` names; record indexes are into ``insns``.
    """

    name: str
    section: str
    insns: list[Instruction]
    type_id: int = 0  # its BTF FUNC (func_info), 0 when the object has no .BTF.ext
    line_info: list[LineInfo] = field(default_factory=list)
    core_relos: list[CoreRelo] = field(default_factory=list)
    map_refs: list[MapRef] = field(default_factory=list)

    def callees(self) -> list[str]:
        """Functions this one calls or takes the address of, in order of first use."""
        seen: dict[str, None] = {}
        for insn in self.insns:
            if insn.target is not None and (insn.is_pseudo_call or insn.is_ld_imm64):
                seen.setdefault(insn.target, None)
        return list(seen)


def _copy_insns(insns: Iterable[Instruction]) -> list[Instruction]:
    return [i.copy() for i in insns]


class FunctionTable(MutableMapping[str, Function]):
    """The object's functions by name. Every name and its section are known from the symbol table; a
    section's functions are built (instructions decoded, relocations applied) when one of them is first looked
    up: a run loads a few of the object's programs, and decoding all of its ~48,000 instructions took most of
    the object's parse (seconds under emulation). Building is serialised (programs load from several
    threads); a section that fails to build raises its :class:`ELFError` at every lookup."""

    def __init__(self) -> None:
        self._section_of: dict[str, str] = {}
        self._built: dict[str, Function] = {}
        self._pending: dict[str, Callable[[], list[Function]]] = {}
        self._lock = threading.Lock()

    def add_section(self, section: str, names: Sequence[str], build: Callable[[], list[Function]]) -> None:
        """Declare ``names`` as ``section``'s functions, ``build`` making them when first needed."""
        for name in names:
            if name in self._section_of:
                raise ELFError(f"two functions named {name!r}")
            self._section_of[name] = section
        self._pending[section] = build

    def section_of(self, name: str) -> str:
        """The section of function ``name``, without building it."""
        return self._section_of[name]

    def __getitem__(self, name: str) -> Function:
        fn = self._built.get(name)
        if fn is not None:
            return fn
        section = self._section_of[name]  # KeyError for an unknown name, as a dict
        with self._lock:
            build = self._pending.get(section)
            if build is not None:
                for f in build():
                    self._built.setdefault(f.name, f)
                del self._pending[section]
        return self._built[name]

    def __setitem__(self, name: str, fn: Function) -> None:
        if name in self._section_of:
            self[name]  # its section built first, so that building later cannot overwrite it
        self._section_of[name] = fn.section
        self._built[name] = fn

    def __delitem__(self, name: str) -> None:
        self[name]
        del self._section_of[name], self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in self._section_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._section_of)

    def __len__(self) -> int:
        return len(self._section_of)


class ProgramSpec:
    """A program of the object: its entry function plus every subprogram it reaches, linked on demand.

    :attr:`insns`, :attr:`func_info`, :attr:`line_info`, :attr:`core_relos` and :attr:`map_refs` describe the
    linked program (entry first, then callees in call order); indexes are into :attr:`insns`, calls resolved.
    """

    def __init__(
        self,
        name: str,
        section: str,
        functions: Mapping[str, Function],
        license: str = "GPL",
    ) -> None:
        self.name = name
        self.section = section
        kind = section_program_type(section)
        self.prog_type, self.expected_attach_type, self.attach_to, self.retprobe = kind
        self.license = license
        self._shared = functions  # the object's functions (built when first used)
        self._own: dict[str, Function] = {}  # this program's replacements
        if name not in functions:
            raise ELFError(f"program {name!r} has no function")
        self._linked: _Linked | None = None

    def _get(self, name: str) -> Function | None:
        fn = self._own.get(name)
        if fn is None and name in self._shared:
            fn = self._shared[name]
        return fn

    def __repr__(self) -> str:
        return f"ProgramSpec({self.name!r}, section={self.section!r}, type={self.prog_type.name})"

    # -- linking -----------------------------------------------------------------------------------

    @property
    def function_names(self) -> list[str]:
        """The entry then every subprogram reached from it, in link order."""
        order: list[str] = []
        todo = [self.name]
        while todo:
            name = todo.pop(0)
            if name in order:
                continue
            fn = self._get(name)
            if fn is None:
                raise ELFError(f"program {self.name!r}: call to unknown function {name!r}")
            order.append(name)
            todo.extend(c for c in fn.callees() if c not in order)
        return order

    def function(self, name: str) -> Function:
        """One function (entry or subprogram) this program can reach."""
        if name not in self.function_names:
            raise ELFError(f"program {self.name!r} does not use function {name!r}")
        fn = self._get(name)
        assert fn is not None
        return fn

    def _link(self) -> _Linked:
        if self._linked is not None:
            return self._linked
        insns: list[Instruction] = []
        fi: list[FuncInfo] = []
        li: list[LineInfo] = []
        cr: list[CoreRelo] = []
        mr: list[MapRef] = []
        for name in self.function_names:
            fn = self._get(name)
            assert fn is not None
            base = len(insns)
            body = list(fn.insns)  # shared until the copy of the linked whole below; the first one labelled
            if not body:
                raise ELFError(f"function {name!r} is empty")
            body[0] = body[0].with_label(name)
            insns.extend(body)
            if fn.type_id:
                fi.append(FuncInfo(base, fn.type_id))
            li.extend(dataclasses.replace(r, index=r.index + base) for r in fn.line_info)
            cr.extend(dataclasses.replace(r, index=r.index + base) for r in fn.core_relos)
            mr.extend(dataclasses.replace(r, index=r.index + base) for r in fn.map_refs)
        try:
            resolved = asm.resolve(insns)
        except asm.AsmError as e:
            raise ELFError(f"program {self.name!r}: {e}") from None
        self._linked = _Linked(_copy_insns(resolved), fi, li, cr, mr)
        return self._linked

    @property
    def insns(self) -> list[Instruction]:
        """The linked instructions (a fresh copy: callers may patch them)."""
        return _copy_insns(self._link().insns)

    @property
    def func_info(self) -> list[FuncInfo]:
        return list(self._link().func_info)

    @property
    def line_info(self) -> list[LineInfo]:
        return list(self._link().line_info)

    @property
    def core_relos(self) -> list[CoreRelo]:
        return list(self._link().core_relos)

    @property
    def map_refs(self) -> list[MapRef]:
        return list(self._link().map_refs)

    @property
    def maps_used(self) -> list[str]:
        """Names of the maps the linked program refers to."""
        return sorted({r.map for r in self.map_refs})

    # -- modification --------------------------------------------------------------------------------

    def replace_function(self, symbol: str, code: bytes | Sequence[Instruction]) -> None:
        """Swap the body of subprogram ``symbol`` for ``code`` (encoded bytes or instructions).

        The replacement must be self-contained: relative jumps inside it (labels are resolved here), helper
        calls, no map references or bpf-to-bpf calls. Its FUNC type (func_info) stays; line_info keeps only
        the function's first record (the kernel wants one at every function start) and CO-RE relocations and
        map references inside the old body are dropped. Calls and records of the other functions follow
        because programs are linked after the swap.
        """
        old = self._get(symbol)
        if old is None:
            raise ELFError(f"program {self.name!r} has no function {symbol!r}")
        if symbol == self.name:
            raise ELFError(f"{symbol!r} is the program's entry, not a subprogram")
        self._own[symbol] = _replacement(old, code)
        self._linked = None

    def _set_function(self, fn: Function) -> None:
        self._own[fn.name] = fn
        self._linked = None

    # -- kernel records --------------------------------------------------------------------------------

    def func_info_bytes(self, insns: Sequence[Instruction] | None = None) -> bytes:
        """``bpf_func_info`` records (slot offsets) for the linked program (or same-shaped ``insns``)."""
        slots = asm.slot_offsets(insns if insns is not None else self._link().insns)
        return b"".join(struct.pack("<II", slots[r.index], r.type_id) for r in self._link().func_info)

    def line_info_bytes(self, insns: Sequence[Instruction] | None = None) -> bytes:
        """``bpf_line_info`` records (slot offsets)."""
        slots = asm.slot_offsets(insns if insns is not None else self._link().insns)
        return b"".join(
            struct.pack("<IIII", slots[r.index], r.file_name_off, r.line_off, r.line_col)
            for r in self._link().line_info
        )


@dataclass(slots=True)
class _Linked:
    insns: list[Instruction]
    func_info: list[FuncInfo]
    line_info: list[LineInfo]
    core_relos: list[CoreRelo]
    map_refs: list[MapRef]


def _replacement(old: Function, code: bytes | Sequence[Instruction]) -> Function:
    if isinstance(code, bytes | bytearray | memoryview):
        new = asm.decode(bytes(code))
    else:
        try:
            new = asm.resolve(list(code))
        except asm.AsmError as e:
            raise ELFError(f"replacement for {old.name!r}: {e}") from None
    if not new:
        raise ELFError(f"replacement for {old.name!r} is empty")
    body: list[Instruction] = []
    for i, insn in enumerate(new):
        if insn.is_pseudo_call or (insn.is_ld_imm64 and insn.src != asm.LdImm64Src.IMM):
            raise ELFError(f"replacement for {old.name!r}: instruction {i} ({insn}) refers outside the body")
        body.append(dataclasses.replace(insn, label=None, target=None))
    if not (body[-1].is_exit or (body[-1].is_jump and body[-1].jmp_op == asm.JmpOp.JA)):
        raise ELFError(f"replacement for {old.name!r} does not end with exit or a jump")
    first_line = [dataclasses.replace(old.line_info[0], index=0)] if old.line_info else []
    return Function(old.name, old.section, body, old.type_id, first_line, [], [])


# ---------------------------------------------------------------------------------------------------------
# Object


class ObjectSpec:
    """A parsed BPF object: :attr:`programs`, :attr:`maps`, :attr:`variables`, its (fixed-up) :attr:`btf`."""

    def __init__(self) -> None:
        self.programs: dict[str, ProgramSpec] = {}
        self.maps: dict[str, MapSpec] = {}
        self.variables: dict[str, VariableSpec] = {}
        self.functions = FunctionTable()
        self.btf: btf.Spec | None = None
        self.btf_ext: BTFExt | None = None
        self.license = "GPL"
        self.path = ""

    def __repr__(self) -> str:
        return f"ObjectSpec({self.path!r}, programs={list(self.programs)}, maps={list(self.maps)})"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ObjectSpec:
        """Parse an object file (a regular file of at most :data:`MAX_OBJECT_SIZE` bytes)."""
        spec = cls.from_bytes(btf.read_regular_file(path, MAX_OBJECT_SIZE, ELFError))
        spec.path = str(path)
        return spec

    @classmethod
    def from_bytes(cls, data: bytes) -> ObjectSpec:
        """Parse an object file's bytes; a malformed one is an :class:`ELFError` (or a BTF/asm error)."""
        spec = cls()
        try:
            _Reader(spec, bytes(data)).read()
        except (elftools_errors.ELFError, OverflowError) as e:
            # pyelftools reads lazily: a bad header field surfaces wherever it is first used (an offset beyond
            # any file, e.g. the section name table's, is an OverflowError from its seek).
            raise ELFError(f"malformed ELF object: {e}") from None
        return spec

    def program(self, name: str) -> ProgramSpec:
        try:
            return self.programs[name]
        except KeyError:
            raise ELFError(f"no program {name!r} (have: {', '.join(self.programs)})") from None

    def replace_function(self, symbol: str, code: bytes | Sequence[Instruction]) -> None:
        """Swap subprogram ``symbol`` in every program (see :meth:`ProgramSpec.replace_function`)."""
        old = self.functions.get(symbol)
        if old is None:
            raise ELFError(f"no function {symbol!r}")
        if symbol in self.programs:
            raise ELFError(f"{symbol!r} is a program, not a subprogram")
        new = _replacement(old, code)
        self.functions[symbol] = new
        for prog in self.programs.values():
            prog._set_function(new)

    def data_section_variables(self, section: str) -> dict[str, VariableSpec]:
        """Variables of one data section (``.rodata``...), by name."""
        return {n: v for n, v in self.variables.items() if v.section == section}


_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size
_SHN_NAMES = {0: "SHN_UNDEF", 0xFFF1: "SHN_ABS", 0xFFF2: "SHN_COMMON", 0xFFFF: "SHN_XINDEX"}
_STT_NAMES = {0: "STT_NOTYPE", 1: "STT_OBJECT", 2: "STT_FUNC", 3: "STT_SECTION", 4: "STT_FILE", 5: "STT_COMMON",
              6: "STT_TLS"}  # fmt: skip
_STB_NAMES = {0: "STB_LOCAL", 1: "STB_GLOBAL", 2: "STB_WEAK"}


class _Sym:
    """One symbol, read the way pyelftools' ``Symbol`` is (``sym.name``, ``sym["st_value"]``,
    ``sym["st_info"]["type"]``, ``sym["st_shndx"]`` a number or ``"SHN_UNDEF"``...)."""

    __slots__ = ("_fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self._fields = fields

    def __getitem__(self, key: str) -> Any:  # as untyped as the pyelftools symbol it stands in for
        return self._fields[key]


def _symbols(symtab: SymbolTableSection, sections: list[Section]) -> list[_Sym]:
    """The symbol table, every entry with one ``struct`` unpack: pyelftools' construct-based parse of the
    object's ~2,700 symbols was 0.17 s of a 1 s start here (seconds under emulation). Entry 0 included, so
    relocations index it as the file does."""
    if symtab["sh_entsize"] not in (0, _SYM.size) or symtab["sh_size"] % _SYM.size:
        raise ELFError("symbol table entries are not 24 bytes")
    link = symtab["sh_link"]
    if not 0 < link < len(sections):
        raise ELFError(f"symbol table's string table index {link} out of range")
    strings = sections[link].data()
    out: list[_Sym] = []
    for st_name, st_info, st_other, shndx, value, size in _SYM.iter_unpack(symtab.data()):
        if st_name >= max(len(strings), 1):
            raise ELFError(f"symbol name offset {st_name} beyond the string table")
        end = strings.find(b"\0", st_name)
        name = strings[st_name : end if end >= 0 else len(strings)].decode("utf-8", errors="replace")
        info = {"type": _STT_NAMES.get(st_info & 0xF, f"STT_{st_info & 0xF}"),
                "bind": _STB_NAMES.get(st_info >> 4, f"STB_{st_info >> 4}")}  # fmt: skip
        section: object = _SHN_NAMES.get(shndx, shndx) if shndx == 0 or shndx >= 0xFF00 else shndx
        out.append(_Sym(name, {"st_name": st_name, "st_info": info, "st_other": st_other, "st_shndx": section,
                               "st_value": value, "st_size": size}))  # fmt: skip
    return out


class _Reader:
    """One pass over the ELF file filling an :class:`ObjectSpec`."""

    def __init__(self, spec: ObjectSpec, data: bytes) -> None:
        self.spec = spec
        self.data = data
        try:
            self.elf = ELFFile(io.BytesIO(data))
        except Exception as e:
            raise ELFError(f"not an ELF file: {e}") from None
        if self.elf["e_machine"] not in ("EM_BPF", EM_BPF):
            raise ELFError(f"not a BPF object (machine {self.elf['e_machine']})")
        if not self.elf.little_endian:
            raise ELFError("big-endian BPF objects are not supported")
        self.sections: list[Section] = list(self.elf.iter_sections())
        for sec in self.sections:
            self._check_section(sec)
        symtab = self.elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise ELFError("object has no symbol table")
        self.symbols = _symbols(symtab, self.sections)
        for sym in self.symbols:
            shndx = sym["st_shndx"]
            if isinstance(shndx, int) and shndx >= len(self.sections):
                raise ELFError(f"symbol {sym.name!r}: section index {shndx} out of range")

    def _check_section(self, sec: Section) -> None:
        """Sizes and offsets against the file before any section is read (pyelftools reads short silently)."""
        size, offset = sec["sh_size"], sec["sh_offset"]
        if sec["sh_type"] == "SHT_NOBITS":
            if size > MAX_NOBITS_SIZE:
                raise ELFError(f"section {sec.name!r}: {size} zero bytes, more than {MAX_NOBITS_SIZE >> 20} MiB")
            return
        if sec["sh_type"] != "SHT_NULL" and offset + size > len(self.data):
            raise ELFError(f"section {sec.name!r} runs past the end of the file")
        if sec["sh_flags"] & SHF_COMPRESSED and not sec.name.startswith(".debug"):
            raise ELFError(f"section {sec.name!r} is compressed (not supported)")

    def read(self) -> None:
        spec = self.spec
        lic = self.elf.get_section_by_name("license")
        if lic is not None:
            spec.license = lic.data().split(b"\0", 1)[0].decode(errors="replace") or "GPL"
        self._read_btf()
        self._read_data_sections()
        self._read_maps()
        self._read_functions()
        for name in spec.functions:
            section = spec.functions.section_of(name)
            if section != ".text":
                spec.programs[name] = ProgramSpec(name, section, spec.functions, spec.license)

    # -- BTF -------------------------------------------------------------------------------------------

    def _read_btf(self) -> None:
        sec = self.elf.get_section_by_name(".BTF")
        if sec is None:
            return
        spec = btf.Spec.from_bytes(sec.data())
        self._fix_datasecs(spec)
        self.spec.btf = spec
        ext = self.elf.get_section_by_name(".BTF.ext")
        if ext is not None:
            self.spec.btf_ext = BTFExt.parse(ext.data(), spec)

    def _fix_datasecs(self, spec: btf.Spec) -> None:
        """DATASEC sizes from section sizes and VAR offsets from symbols (clang leaves them 0), sorted."""
        by_section: dict[str, dict[str, int]] = {}
        for sym in self.symbols:
            if sym["st_info"]["type"] != "STT_OBJECT":
                continue
            shndx = sym["st_shndx"]
            if not isinstance(shndx, int):
                continue
            by_section.setdefault(self.sections[shndx].name, {})[sym.name] = sym["st_value"]
        for tid in list(spec.ids_of_kind(btf.Kind.DATASEC)):
            ds = spec.type(tid)
            assert isinstance(ds, btf.Datasec)
            sec = self.elf.get_section_by_name(ds.name)
            if sec is None:
                continue  # .kconfig/.ksyms and other extern sections: nothing to fix from the ELF
            offsets = by_section.get(ds.name, {})
            new_vars = []
            for v in ds.vars:
                var_name = spec.name_of(v.type)
                off = offsets.get(var_name, v.offset)
                new_vars.append(btf.VarSecinfo(v.type, off, v.size))
            new_vars.sort(key=lambda v: v.offset)
            new = btf.Datasec(ds.name, sec["sh_size"], tuple(new_vars))
            if new != ds:
                spec.replace(tid, new)

    # -- data and maps -----------------------------------------------------------------------------------

    @staticmethod
    def _is_data_section(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in (".rodata", ".data", ".bss"))

    def _read_data_sections(self) -> None:
        spec = self.spec
        for idx, sec in enumerate(self.sections):
            if not self._is_data_section(sec.name) or not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC:
                continue
            size = sec["sh_size"]
            if size == 0:
                continue
            data = bytes(size) if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            value_type = 0
            if spec.btf is not None:
                ids = spec.btf.find(sec.name, btf.Kind.DATASEC)
                value_type = ids[0] if ids else 0
            flags = BPF_F_MMAPABLE
            if sec.name.startswith(".rodata"):
                flags |= BPF_F_RDONLY_PROG
            spec.maps[sec.name] = MapSpec(
                sec.name,
                MapType.ARRAY,
                4,
                size,
                1,
                flags,
                value_type_id=value_type,
                data=data,
                section=sec.name,
            )
            for sym in self.symbols:
                if sym["st_shndx"] == idx and sym["st_info"]["type"] == "STT_OBJECT" and sym.name:
                    spec.variables[sym.name] = VariableSpec(
                        sym.name,
                        sec.name,
                        sym["st_value"],
                        sym["st_size"],
                        self._var_type(sec.name, sym.name),
                    )

    def _var_type(self, section: str, name: str) -> int:
        b = self.spec.btf
        if b is None:
            return 0
        for tid in b.find(section, btf.Kind.DATASEC):
            ds = b.type(tid)
            assert isinstance(ds, btf.Datasec)
            for v in ds.vars:
                if b.name_of(v.type) == name:
                    t = b.type(v.type)
                    return t.type if isinstance(t, btf.Var) else 0
        return 0

    def _read_maps(self) -> None:
        sec = self.elf.get_section_by_name(".maps")
        if sec is None:
            if self.elf.get_section_by_name("maps") is not None:
                raise ELFError("legacy 'maps' section (struct bpf_map_def) is not supported; use BTF maps")
            return
        b = self.spec.btf
        if b is None:
            raise ELFError(".maps needs BTF (compile with -g)")
        ids = b.find(".maps", btf.Kind.DATASEC)
        if not ids:
            raise ELFError("no DATASEC .maps in the object's BTF")
        ds = b.type(ids[0])
        assert isinstance(ds, btf.Datasec)
        for v in ds.vars:
            var = b.type(v.type)
            if not isinstance(var, btf.Var):
                raise ELFError(f".maps: entry {v.type} is a {var.kind.name}, not a variable")
            self.spec.maps[var.name] = _btf_map(b, var.name, var.type)

    # -- functions -------------------------------------------------------------------------------------

    def _read_functions(self) -> None:
        """Each code section's functions declared (names, sizes, the records that fall in them checked), to be
        built when first used (:class:`FunctionTable`)."""
        spec = self.spec
        ext = spec.btf_ext or BTFExt()
        by_section: dict[int, list[_Sym]] = {}
        for s in self.symbols:
            if s["st_info"]["type"] == "STT_FUNC" and isinstance(s["st_shndx"], int):
                by_section.setdefault(s["st_shndx"], []).append(s)
        for idx, sec in enumerate(self.sections):
            if sec["sh_type"] != "SHT_PROGBITS" or not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                continue
            if sec["sh_size"] == 0:
                continue
            funcs = sorted(by_section.get(idx, []), key=lambda s: s["st_value"])
            if not funcs:
                raise ELFError(f"section {sec.name!r} holds code but no function symbols")
            for sym in funcs:
                start, size = sym["st_value"], sym["st_size"]
                if start % 8 or size % 8 or size == 0:
                    raise ELFError(f"function {sym.name!r} has a bad size or offset")
            relos = ext.core_relos.get(sec.name, [])
            for _off, _type_id, _access_off, kind in relos:
                _relo_kind(kind, sec.name)
            rels = self._relocations(idx)
            code = sec.data()

            def build(
                sec: Section = sec, code: bytes = code, funcs: list[_Sym] = funcs, rels: list[Any] = rels
            ) -> list[Function]:
                return self._build_functions(sec, code, funcs, rels)

            spec.functions.add_section(sec.name, [s.name for s in funcs], build)

    def _build_functions(
        self, sec: Section, data: bytes, funcs: list[_Sym], rels: list[tuple[int, object, int]]
    ) -> list[Function]:
        """The functions of one code section: decoded, their records and relocations applied."""
        spec = self.spec
        ext = spec.btf_ext or BTFExt()
        code = asm.decode(data)
        slots = asm.slot_offsets(code)
        slot_index = {s: i for i, s in enumerate(slots[:-1])}
        fi = {off: tid for off, tid in ext.func_info.get(sec.name, [])}
        starts = [s["st_value"] for s in funcs]
        ends = [s["st_value"] + s["st_size"] for s in funcs]

        def by_function(records: Iterable[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
            """Each function's records (by byte offset, the first field), in their order in the file."""
            out: list[list[tuple[Any, ...]]] = [[] for _ in funcs]
            for r in records:
                i = bisect.bisect_right(starts, r[0]) - 1
                if i >= 0 and r[0] < ends[i]:
                    out[i].append(r)
            return out

        lines = by_function(ext.line_info.get(sec.name, []))
        relos = by_function(ext.core_relos.get(sec.name, []))
        relocations = by_function(rels)
        built: list[Function] = []
        for i, sym in enumerate(funcs):
            start, size = sym["st_value"], sym["st_size"]
            first = _index_at(slot_index, start // 8, sym.name)
            end = slot_index.get((start + size) // 8, len(code))
            fn = Function(sym.name, sec.name, code[first:end], fi.get(start, 0))  # fresh from decode: not shared

            def local(
                byte_off: int, first: int = first, name: str = sym.name, index: dict[int, int] = slot_index
            ) -> int:
                return _index_at(index, byte_off // 8, name) - first

            for off, file_off, line_off, line_col in lines[i]:
                fn.line_info.append(LineInfo(local(off), file_off, line_off, line_col))
            for off, type_id, access_off, kind in relos[i]:
                access = spec.btf.string(access_off) if spec.btf is not None else ""
                fn.core_relos.append(CoreRelo(local(off), type_id, access, _relo_kind(kind, sym.name)))
            for off, rsym, rtype in relocations[i]:
                self._apply_relocation(fn, local(off), rsym, rtype, sec.name)
            self._mark_local_calls(fn, sec.name, start // 8, funcs)
            built.append(fn)
        return built

    def _relocations(self, target_idx: int) -> list[tuple[int, object, int]]:
        out: list[tuple[int, object, int]] = []
        for sec in self.sections:
            if isinstance(sec, RelocationSection) and sec["sh_info"] == target_idx:
                for rel in sec.iter_relocations():
                    if rel["r_info_sym"] >= len(self.symbols):
                        raise ELFError(f"{sec.name}: relocation against symbol {rel['r_info_sym']} out of range")
                    out.append((rel["r_offset"], self.symbols[rel["r_info_sym"]], rel["r_info_type"]))
        return out

    def _function_at(self, shndx: int, byte_off: int) -> str:
        for s in self.symbols:
            if s["st_shndx"] == shndx and s["st_info"]["type"] == "STT_FUNC" and s["st_value"] == byte_off:
                return str(s.name)
        raise ELFError(f"no function at offset {byte_off} of section {self.sections[shndx].name!r}")

    def _apply_relocation(self, fn: Function, index: int, sym: object, rtype: int, section: str) -> None:
        insn = fn.insns[index]
        shndx = sym["st_shndx"]  # type: ignore[index]
        name = sym.name  # type: ignore[attr-defined]
        if shndx == "SHN_UNDEF":
            raise ELFError(f"{fn.name}: reference to undefined (extern) symbol {name!r} is not supported")
        if not isinstance(shndx, int):
            raise ELFError(f"{fn.name}: relocation against {name!r} in {shndx}")
        target = self.sections[shndx]
        value = sym["st_value"]  # type: ignore[index]
        is_section_sym = sym["st_info"]["type"] == "STT_SECTION"  # type: ignore[index]
        if insn.is_pseudo_call:
            # imm counts slots from the next one; for section symbols it holds the callee's position.
            dest = value + (insn.imm + 1) * 8
            insn.target = self._function_at(shndx, dest)
            insn.imm = -1
            return
        if not insn.is_ld_imm64:
            raise ELFError(f"{fn.name}: relocation type {rtype} on unsupported instruction {insn}")
        if target["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            addend = insn.imm & 0xFFFFFFFF
            insn.src = asm.LdImm64Src.FUNC
            insn.target = self._function_at(shndx, value + (addend if is_section_sym else 0))
            insn.imm = 0
            return
        if target.name == ".maps":
            if is_section_sym:
                name = self._object_at(shndx, insn.imm & 0xFFFFFFFF)
            if name not in self.spec.maps:
                raise ELFError(f"{fn.name}: reference to unknown map {name!r}")
            insn.src = asm.LdImm64Src.MAP_FD
            insn.imm = 0
            fn.map_refs.append(MapRef(index, name))
            return
        if target.name in self.spec.maps:
            offset = value + (insn.imm & 0xFFFFFFFF)
            insn.src = asm.LdImm64Src.MAP_VALUE
            insn.imm = 0
            fn.map_refs.append(MapRef(index, target.name, offset))
            return
        raise ELFError(
            f"{fn.name} in {section}: relocation against {name!r} in unsupported section {target.name!r}"
        )

    def _object_at(self, shndx: int, byte_off: int) -> str:
        for s in self.symbols:
            if s["st_shndx"] == shndx and s["st_info"]["type"] == "STT_OBJECT" and s["st_value"] == byte_off:
                return str(s.name)
        raise ELFError(f"no object at offset {byte_off} of section {self.sections[shndx].name!r}")

    def _mark_local_calls(self, fn: Function, section: str, start_slot: int, funcs: Sequence[object]) -> None:
        """Calls already resolved by the compiler (same section, no relocation): turn them into targets."""
        starts = {s["st_value"] // 8: s.name for s in funcs}  # type: ignore[index,attr-defined]
        slots: list[int] = []
        for i, insn in enumerate(fn.insns):
            if insn.is_pseudo_call and insn.target is None:
                slots = slots or asm.slot_offsets(fn.insns)  # only for a function with such a call
                dest = start_slot + slots[i] + insn.imm + 1
                if dest not in starts:
                    raise ELFError(f"{fn.name}: call at {i} into the middle of a function in {section!r}")
                insn.target = starts[dest]
                insn.imm = -1


def _relo_kind(kind: int, where: str) -> CoreReloKind:
    try:
        return CoreReloKind(kind)
    except ValueError:
        raise ELFError(f"{where}: unknown CO-RE relocation kind {kind}") from None


def _index_at(slot_index: dict[int, int], slot: int, what: str) -> int:
    try:
        return slot_index[slot]
    except KeyError:
        raise ELFError(f"{what}: slot {slot} is not the start of an instruction") from None


def _btf_map(b: btf.Spec, name: str, type_id: int) -> MapSpec:
    """Decode a BTF-defined map: a struct of ``__uint``/``__type`` pointer members."""
    st = b.resolve_type(type_id)
    if not isinstance(st, btf.Struct):
        raise ELFError(f"map {name!r}: definition is a {st.kind.name}, not a struct")
    fields: dict[str, int] = {}
    key_type = value_type = 0
    key_size = value_size = -1
    for m in st.members:
        ptr = b.resolve_type(m.type)
        if not isinstance(ptr, btf.Pointer):
            raise ELFError(f"map {name!r}: member {m.name!r} is not a pointer (use __uint/__type)")
        if m.name in ("key", "value"):
            size = b.size_of(ptr.type)
            if m.name == "key":
                key_type, key_size = ptr.type, size
            else:
                value_type, value_size = ptr.type, size
            continue
        if m.name == "values":
            raise ELFError(f"map {name!r}: map-in-map and prog-array initial values are not supported")
        arr = b.resolve_type(ptr.type)
        if not isinstance(arr, btf.Array):
            raise ELFError(f"map {name!r}: member {m.name!r} is not an __uint")
        fields[m.name] = arr.nelems
    if "type" not in fields:
        raise ELFError(f"map {name!r} has no type")
    if "key_size" in fields:
        if key_size >= 0 and key_size != fields["key_size"]:
            raise ELFError(f"map {name!r}: key_size disagrees with the key type")
        key_size = fields["key_size"]
    if "value_size" in fields:
        if value_size >= 0 and value_size != fields["value_size"]:
            raise ELFError(f"map {name!r}: value_size disagrees with the value type")
        value_size = fields["value_size"]
    return MapSpec(
        name,
        fields["type"],
        max(key_size, 0),
        max(value_size, 0),
        fields.get("max_entries", 0),
        fields.get("map_flags", 0),
        fields.get("map_extra", 0),
        key_type,
        value_type,
    )


def iter_programs(spec: ObjectSpec) -> Iterator[ProgramSpec]:
    """Programs in section order then name order (a stable order for tests and listings)."""
    yield from sorted(spec.programs.values(), key=lambda p: (p.section, p.name))
