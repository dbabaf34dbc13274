"""A loaded :class:`~pwru.ebpf.elf.ObjectSpec`: maps created and filled, programs relocated once and loadable
many times.

Creating a :class:`Collection` loads the object's BTF into the kernel (so verifier logs show C source lines
and func_info/line_info can be passed), creates every map, fills global data (``.rodata`` gets the
``volatile const`` values given as ``constants`` and is frozen) and is ready to load programs.
:meth:`Collection.load_program` may be called many times for one program: once per fentry target, once
with a different expected attach type (kprobe-multi), or with per-load ``constants`` (a private frozen copy
of ``.rodata``, while the other maps stay shared).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from pwru.ebpf import asm, btf, core, syscall
from pwru.ebpf.asm import Instruction
from pwru.ebpf.elf import (
    FUNC_INFO_REC_SIZE,
    LINE_INFO_REC_SIZE,
    ELFError,
    MapRef,
    MapSpec,
    ObjectSpec,
    ProgramSpec,
)
from pwru.ebpf.errors import EBPFError
from pwru.ebpf.maps import Map
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, BPFError, Cmd, ProgType

__all__ = ["Collection", "ConstantError", "load_btf"]

Constants = Mapping[str, int | bytes]


class ConstantError(EBPFError, ValueError):
    """A constant that names no ``.rodata`` variable, or whose value does not fit it."""


def load_btf(data: bytes) -> int:
    """Load raw BTF into the kernel (``BPF_BTF_LOAD``); returns its fd. Failures carry the kernel's log."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    attr = syscall.BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(data))
    try:
        return syscall.bpf(Cmd.BTF_LOAD, attr)
    except BPFError:
        log = ctypes.create_string_buffer(1 << 20)
        attr.btf_log_buf = ctypes.addressof(log)
        attr.btf_log_size = len(log)
        attr.btf_log_level = 1
        return syscall.bpf(Cmd.BTF_LOAD, attr, log)


@dataclasses.dataclass(slots=True)
class _Relocated:
    """A program after CO-RE and call relocation; map references still to patch per load."""

    insns: list[Instruction]
    map_refs: list[MapRef]
    func_info: bytes
    line_info: bytes
    core: list[core.CoreResult]


class Collection:
    """Maps and loadable programs of one object. ``close()`` releases everything (idempotent)."""

    def __init__(
        self,
        spec: ObjectSpec,
        *,
        kernel_btf: btf.Spec | str | os.PathLike[str] | None = None,
        constants: Constants | None = None,
    ) -> None:
        self.spec = spec
        self.maps: dict[str, Map] = {}
        self._programs: list[Program] = []
        self._relocated: dict[str, _Relocated] = {}
        self._encodings: dict[str, tuple[bytes, list[int]]] = {}
        self._target: core.Target | None = None
        self._kernel_btf = kernel_btf
        self._closed = False
        #: Why the object's BTF could not be loaded (then programs load without func/line info).
        self.btf_error: BPFError | None = None
        self.btf_fd: int | None = None
        self._rodata: dict[str, bytes] = {}
        try:
            self._load_btf()
            self._base_constants = self._check_constants(constants or {})
            for ms in spec.maps.values():
                self.maps[ms.name] = self._create_map(ms, self._base_constants)
        except BaseException:
            self.close()
            raise

    # -- setup -----------------------------------------------------------------------------------------

    def _load_btf(self) -> None:
        if self.spec.btf is None:
            return
        try:
            self.btf_fd = load_btf(self.spec.btf.encode())
        except BPFError as e:
            self.btf_error = e

    def _create_map(self, ms: MapSpec, constants: Mapping[str, int | bytes]) -> Map:
        name = ms.name if not ms.is_global_data else ms.section
        btf_fd = self.btf_fd if ms.key_type_id or ms.value_type_id else None

        def create(btf_fd: int | None) -> Map:
            return Map.create(
                ms.type,
                ms.key_size,
                ms.value_size,
                ms.max_entries,
                flags=ms.flags,
                name=name,
                map_extra=ms.map_extra,
                btf_fd=btf_fd,
                btf_key_type_id=ms.key_type_id,
                btf_value_type_id=ms.value_type_id,
            )

        try:
            m = create(btf_fd)
        except BPFError:
            if btf_fd is None:
                raise
            m = create(None)  # a kernel that refuses the map's BTF types still gets the map
        try:
            if ms.data is not None:
                data = self._with_constants(ms, constants) if ms.readonly else ms.data
                m.update(0, data)
                if ms.readonly:
                    m.freeze()
        except BaseException:
            m.close()
            raise
        return m

    def _check_constants(self, constants: Constants) -> dict[str, int | bytes]:
        for name, value in constants.items():
            var = self.spec.variables.get(name)
            if var is None or not var.section.startswith(".rodata"):
                raise ConstantError(f"no volatile const variable {name!r} in the object")
            _encode_constant(name, value, var.size)
        return dict(constants)

    def _with_constants(self, ms: MapSpec, constants: Mapping[str, int | bytes]) -> bytes:
        """The section's bytes with ``constants`` written over their variables."""
        assert ms.data is not None
        data = bytearray(ms.data)
        for name, value in constants.items():
            var = self.spec.variables.get(name)
            if var is None or not var.section.startswith(".rodata"):
                raise ConstantError(f"no volatile const variable {name!r} in the object")
            if var.section != ms.section:
                continue
            data[var.offset : var.offset + var.size] = _encode_constant(name, value, var.size)
        return bytes(data)

    # -- programs --------------------------------------------------------------------------------------

    def program_names(self) -> list[str]:
        """Names of the object's programs."""
        return list(self.spec.programs)

    def program_spec(self, name: str) -> ProgramSpec:
        return self.spec.program(name)

    def _target_btf(self) -> core.Target:
        if self._target is None:
            kb = self._kernel_btf
            if kb is None:
                self._target = core.Target()
            elif isinstance(kb, btf.Spec):
                self._target = core.Target(kb)
            else:
                self._target = core.Target(btf.Spec.load(Path(kb)))
        return self._target

    def relocated(self, name: str) -> _Relocated:
        """The program's instructions after CO-RE relocation (computed once; map fds not yet patched)."""
        hit = self._relocated.get(name)
        if hit is not None:
            return hit
        ps = self.spec.program(name)
        insns = ps.insns
        results: list[core.CoreResult] = []
        relos = ps.core_relos
        if relos:
            if self.spec.btf is None:
                raise ELFError(f"program {name!r} has CO-RE relocations but the object has no BTF")
            results = core.relocate(insns, relos, self.spec.btf, self._target_btf())
        rel = _Relocated(insns, ps.map_refs, ps.func_info_bytes(insns), ps.line_info_bytes(insns), results)
        self._relocated[name] = rel
        return rel

    def _encoded(self, name: str, rel: _Relocated) -> tuple[bytes, list[int]]:
        """The relocated program's bytecode and each instruction's slot (computed once per program)."""
        hit = self._encodings.get(name)
        if hit is None:
            hit = self._encodings[name] = (asm.encode(rel.insns), asm.slot_offsets(rel.insns))
        return hit

    def load_program(
        self,
        name: str,
        *,
        attach_btf_id: int | None = None,
        attach_btf_obj_fd: int | None = None,
        attach_prog_fd: int | None = None,
        expected_attach_type: int | None = None,
        prog_type: int | None = None,
        constants: Constants | None = None,
    ) -> Program:
        """Load program ``name`` (a new kernel program each call; the collection closes it on close()).

        Tracing programs (fentry/fexit/tp_btf) whose section names a target get ``attach_btf_id`` looked up
        in vmlinux BTF when no target is given. ``attach_btf_obj_fd`` names the module BTF that holds
        ``attach_btf_id``; ``attach_prog_fd`` instead makes the target a function of that loaded BPF program
        (``attach_btf_id`` is then the id of the function in that program's BTF, e.g. from its func_info), as
        fentry/fexit on a tc or xdp program need. ``constants`` overrides ``.rodata`` variables for this load
        only. Raises :class:`~pwru.ebpf.errors.VerifierError` (with the verifier log) when the verifier
        refuses, :class:`~pwru.ebpf.errors.BPFError` when the kernel refuses before verifying (EPERM, ...).
        """
        if self._closed:
            raise ValueError("collection is closed")
        ps = self.spec.program(name)
        rel = self.relocated(name)
        code, slots = self._encoded(name, rel)
        patched = bytearray(code)  # the relocated program, encoded once; only map references differ per load
        private: dict[str, Map] = {}
        try:
            if constants:
                merged = {**self._base_constants, **self._check_constants(constants)}
                for ms in self.spec.maps.values():
                    if ms.is_global_data and ms.readonly:
                        private[ms.name] = self._create_map(ms, merged)
            for ref in rel.map_refs:
                m = private.get(ref.map) or self.maps.get(ref.map)
                if m is None:
                    raise ELFError(f"program {name!r} refers to map {ref.map!r}, which was not created")
                insn = dataclasses.replace(rel.insns[ref.index])
                if ref.offset is None:
                    insn.src, insn.imm = asm.LdImm64Src.MAP_FD, m.fd
                else:
                    insn.src, insn.imm = asm.LdImm64Src.MAP_VALUE, m.fd | (ref.offset << 32)
                at = 8 * slots[ref.index]
                patched[at : at + 8 * insn.slots] = insn.encode()
            ptype = ps.prog_type if prog_type is None else prog_type
            attach = ps.expected_attach_type if expected_attach_type is None else expected_attach_type
            if attach_btf_id is None and attach_btf_obj_fd is None and attach_prog_fd is None:
                attach_btf_id = _default_attach_btf_id(ps, ptype, attach)
            info: dict[str, object] = {}
            if self.btf_fd is not None and rel.func_info:
                info = {
                    "prog_btf_fd": self.btf_fd,
                    "func_info": (FUNC_INFO_REC_SIZE, rel.func_info),
                    "line_info": (LINE_INFO_REC_SIZE, rel.line_info),
                }
            prog = Program.load(
                ptype,
                bytes(patched),
                license=ps.license,
                name=name,
                expected_attach_type=attach,
                attach_btf_id=attach_btf_id,
                attach_btf_obj_fd=attach_btf_obj_fd,
                attach_prog_fd=attach_prog_fd,
                **info,  # type: ignore[arg-type]
            )
        finally:
            for m in private.values():  # the loaded program holds its own reference
                m.close()
        self._programs.append(prog)
        return prog

    def core_results(self, name: str) -> list[core.CoreResult]:
        """What each CO-RE relocation of program ``name`` became."""
        return list(self.relocated(name).core)

    # -- lifetime --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every program loaded through the collection, every map and the BTF (idempotent)."""
        self._closed = True
        for p in self._programs:
            p.close()
        self._programs.clear()
        for m in self.maps.values():
            m.close()
        if self.btf_fd is not None:
            os.close(self.btf_fd)
            self.btf_fd = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collection({self.spec!r}{' closed' if self._closed else ''})"


def _encode_constant(name: str, value: int | bytes, size: int) -> bytes:
    if isinstance(value, bool | int):
        v = int(value)
        if not -(1 << (8 * size - 1)) <= v < (1 << (8 * size)):
            raise ConstantError(f"constant {name}={v} does not fit its {size} bytes")
        return v.to_bytes(size, "little", signed=v < 0)
    raw = bytes(value)
    if len(raw) > size:
        raise ConstantError(f"constant {name} is {len(raw)} bytes, the variable holds {size}")
    return raw.ljust(size, b"\0")


def _default_attach_btf_id(ps: ProgramSpec, prog_type: int, attach: int | None) -> int | None:
    """vmlinux BTF id of the section's target for tracing programs (``btf_trace_<tp>`` or the function)."""
    if prog_type != ProgType.TRACING or not ps.attach_to or "*" in ps.attach_to:
        return None
    kb = btf.kernel_btf()
    try:
        if attach == AttachType.TRACE_RAW_TP:
            return kb.find_one(f"btf_trace_{ps.attach_to}", btf.Kind.TYPEDEF)
        return kb.find_one(ps.attach_to, btf.Kind.FUNC)
    except btf.BTFError:
        return None
