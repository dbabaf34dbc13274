"""BPF programs: load instructions into the kernel, describe them, test-run them.

Loading is cheap on purpose: the first attempt carries no verifier log (the kernel then skips formatting
one). Only when the kernel refuses is the load repeated with a log buffer, grown on ENOSPC. A refusal by the
verifier (a log came back, or EACCES) raises :class:`~pwru.ebpf.errors.VerifierError` with the program's name
and the log; a refusal before the verifier ran (EPERM from lockdown, EINVAL for attributes the kernel does not
know, with no log) stays a plain :class:`~pwru.ebpf.errors.BPFError`.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from pwru.ebpf import syscall
from pwru.ebpf.errors import BPFError, VerifierError
from pwru.ebpf.fd import FDObject
from pwru.ebpf.syscall import Cmd, ProgType

# Verifier log levels.
LOG_LEVEL_BRANCH = 1
LOG_LEVEL_INSN = 2
LOG_LEVEL_STATS = 4

_LOG_START = 1 << 20
_LOG_MAX = 64 << 20
_INSN_SIZE = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_LINE_INFO = struct.Struct("<IIII")  # struct bpf_line_info: insn_off, file_name_off, line_off, line_col
_LINE_INFO_SIZE = _LINE_INFO.size
_FUNC_INFO_SIZE = 8  # struct bpf_func_info: insn_off, type_id


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel reports about a loaded program."""

    id: int
    type: int
    name: str
    tag: str
    verified_insns: int
    xlated_len: int
    jited_len: int
    btf_id: int
    map_ids: tuple[int, ...]
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


@dataclass(frozen=True)
class JitedLine:
    """A source line of a loaded program where its JIT-compiled code starts (``BPF_OBJ_GET_INFO_BY_FD``'s
    ``jited_line_info`` paired with ``line_info`` and the program's BTF strings)."""

    address: int
    file: str
    line: int
    column: int
    text: str


class TestRunResult(NamedTuple):
    """``BPF_PROG_TEST_RUN`` outcome: the program's return value, the packet after it, mean ns per run."""

    retval: int
    data_out: bytes
    duration: int


class Program(FDObject):
    """A loaded BPF program, owning its file descriptor (``close()`` is idempotent; context manager)."""

    _what = "program"

    def __init__(
        self,
        fd: int,
        prog_type: int,
        name: str = "",
        expected_attach_type: int | None = None,
        attach_btf_id: int | None = None,
        log: str = "",
    ) -> None:
        super().__init__(fd)
        self.type = ProgType(prog_type) if prog_type in ProgType._value2member_map_ else prog_type
        self.name = name
        self.expected_attach_type = expected_attach_type
        self.attach_btf_id = attach_btf_id
        #: The verifier log of a successful load, when one was asked for (``log_on_success``).
        self.log = log

    @classmethod
    def load(
        cls,
        prog_type: int,
        insns: bytes,
        *,
        license: str = "GPL",
        name: str = "",
        expected_attach_type: int | None = None,
        attach_btf_id: int | None = None,
        attach_btf_obj_fd: int | None = None,
        attach_prog_fd: int | None = None,
        prog_btf_fd: int | None = None,
        func_info: tuple[int, bytes] | None = None,
        line_info: tuple[int, bytes] | None = None,
        fd_array: list[int] | None = None,
        flags: int = 0,
        kern_version: int = 0,
        ifindex: int = 0,
        log_level: int = LOG_LEVEL_BRANCH,
        log_on_success: bool = False,
    ) -> Program:
        """Load ``insns`` (encoded instructions) as a program of ``prog_type``.

        ``func_info``/``line_info`` are ``(record size, records)`` from the object's .BTF.ext and need
        ``prog_btf_fd``. ``attach_btf_obj_fd`` names the module BTF holding ``attach_btf_id``;
        ``attach_prog_fd`` instead names a loaded BPF program whose BTF holds it (fentry/fexit/freplace on a
        BPF program). The kernel keeps both in one slot of ``bpf_attr``, so at most one may be given. On
        refusal the load is retried with verifier log level ``log_level``: :class:`VerifierError` (with the
        log) when the verifier refused, :class:`BPFError` otherwise. ``log_on_success`` loads with the log
        from the start and keeps it in :attr:`log`.
        """
        if len(insns) % _INSN_SIZE or not insns:
            raise ValueError(f"instructions must be a non-empty multiple of 8 bytes, got {len(insns)}")
        if attach_btf_obj_fd is not None and attach_prog_fd is not None:
            raise ValueError("attach_btf_obj_fd and attach_prog_fd share one slot: give at most one")
        insn_buf = ctypes.create_string_buffer(bytes(insns), len(insns))
        lic = ctypes.create_string_buffer(license.encode())
        attr = syscall.ProgLoadAttr(
            prog_type=int(prog_type),
            insn_cnt=len(insns) // _INSN_SIZE,
            insns=ctypes.addressof(insn_buf),
            license=ctypes.addressof(lic),
            kern_version=kern_version,
            prog_flags=flags,
            prog_ifindex=ifindex,
        )
        attr.prog_name = syscall.object_name(name)
        if expected_attach_type is not None:
            attr.expected_attach_type = int(expected_attach_type)
        if attach_btf_id is not None:
            attr.attach_btf_id = attach_btf_id
        if attach_btf_obj_fd is not None:
            attr.attach_btf_obj_fd = attach_btf_obj_fd
        elif attach_prog_fd is not None:
            attr.attach_prog_fd = attach_prog_fd
        keep: list[object] = [insn_buf, lic]
        if prog_btf_fd is not None:
            attr.prog_btf_fd = prog_btf_fd
            for kind, info in (("func", func_info), ("line", line_info)):
                if info is None or not info[1]:
                    continue
                rec_size, recs = info
                buf = ctypes.create_string_buffer(bytes(recs), len(recs))
                keep.append(buf)
                setattr(attr, f"{kind}_info_rec_size", rec_size)
                setattr(attr, f"{kind}_info", ctypes.addressof(buf))
                setattr(attr, f"{kind}_info_cnt", len(recs) // rec_size)
        if fd_array:
            arr = (ctypes.c_int32 * len(fd_array))(*fd_array)
            keep.append(arr)
            attr.fd_array = ctypes.addressof(arr)

        try:
            if log_on_success:
                fd, log = _load_with_log(attr, log_level or LOG_LEVEL_BRANCH)
                return cls(fd, prog_type, name, expected_attach_type, attach_btf_id, log)
            try:
                fd = syscall.bpf(Cmd.PROG_LOAD, attr)
            except BPFError:
                if log_level <= 0:
                    raise
                # Repeat with a verifier log so the error says why. (Should this one succeed, keep it.)
                fd, _ = _load_with_log(attr, log_level)
        except BPFError as e:
            raise _refusal(e, name) from None
        return cls(fd, prog_type, name, expected_attach_type, attach_btf_id)

    @classmethod
    def from_fd(cls, fd: int) -> Program:
        """Adopt a program descriptor (the new object owns it)."""
        info = syscall.prog_info(fd)
        return cls(fd, info.type, info.name.decode(errors="replace"))

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        return cls.from_fd(syscall.get_fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id))

    # --- life cycle: fd, closed, close() and the context manager come from FDObject ---------------

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, ProgType) else str(self.type)
        return f"Program({self.name!r}, {t}, fd={self._fd})"

    # --- introspection -----------------------------------------------------------------------------

    def info(self) -> ProgramInfo:
        """Id, tag, name, verified instruction count, map ids and run statistics."""
        info = syscall.prog_info(self.fd)
        map_ids: tuple[int, ...] = ()
        if info.nr_map_ids:
            ids = (ctypes.c_uint32 * info.nr_map_ids)()
            again = syscall.ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(ids))
            syscall.obj_get_info_by_fd(self.fd, again)
            map_ids = tuple(ids[: again.nr_map_ids])
        return ProgramInfo(
            id=info.id,
            type=info.type,
            name=info.name.decode(errors="replace"),
            tag=bytes(info.tag).hex(),
            verified_insns=info.verified_insns,
            xlated_len=info.xlated_prog_len,
            jited_len=info.jited_prog_len,
            btf_id=info.btf_id,
            map_ids=map_ids,
            run_time_ns=info.run_time_ns,
            run_cnt=info.run_cnt,
            recursion_misses=info.recursion_misses,
        )

    def func_info(self) -> list[tuple[int, int]]:
        """The program's BTF function records, ``(insn_off, type_id)`` each, in instruction order: the first is
        its entry function (the BTF id that fentry/fexit on this program name as ``attach_btf_id``); empty for a
        program loaded without BTF."""
        info = syscall.prog_info(self.fd)
        if not info.nr_func_info or not info.btf_id:
            return []
        rec = info.func_info_rec_size or _FUNC_INFO_SIZE
        buf = ctypes.create_string_buffer(info.nr_func_info * rec)
        again = syscall.ProgInfo(
            nr_func_info=info.nr_func_info, func_info_rec_size=rec, func_info=ctypes.addressof(buf)
        )
        syscall.obj_get_info_by_fd(self.fd, again)
        raw = buf.raw
        n = min(again.nr_func_info, info.nr_func_info)
        word = _U32.unpack_from
        return [(word(raw, i * rec)[0], word(raw, i * rec + 4)[0]) for i in range(n)]

    def xlated(self) -> bytes:
        """The program's instructions as the verifier left them (``xlated_prog_insns``, 8 bytes each): a helper
        call's ``imm`` is the called kernel function's offset from ``__bpf_call_base``, or 0 where the kernel
        withholds addresses (``bpf_dump_raw_ok``: kptr_restrict, CAP_SYSLOG)."""
        n = syscall.prog_info(self.fd).xlated_prog_len
        if not n:
            return b""
        buf = ctypes.create_string_buffer(n)
        again = syscall.ProgInfo(xlated_prog_len=n, xlated_prog_insns=ctypes.addressof(buf))
        syscall.obj_get_info_by_fd(self.fd, again)
        return buf.raw[: min(n, again.xlated_prog_len)]

    def jited_lines(self) -> list[JitedLine]:
        """The program's source lines by JIT address, ascending; empty without BTF line info, without a JIT, or
        when the kernel withholds the addresses (``bpf_dump_raw_ok``: kptr_restrict, CAP_SYSLOG)."""
        from pwru.ebpf import btf, btf_kernel

        info = syscall.prog_info(self.fd)
        n, nj = info.nr_line_info, info.nr_jited_line_info
        if not n or n != nj or not info.btf_id:
            return []
        rec = info.line_info_rec_size or _LINE_INFO_SIZE
        jrec = info.jited_line_info_rec_size or 8
        lines = ctypes.create_string_buffer(n * rec)
        jited = ctypes.create_string_buffer(nj * jrec)
        again = syscall.ProgInfo(
            nr_line_info=n, line_info_rec_size=rec, line_info=ctypes.addressof(lines),
            nr_jited_line_info=nj, jited_line_info_rec_size=jrec, jited_line_info=ctypes.addressof(jited),
        )  # fmt: skip
        syscall.obj_get_info_by_fd(self.fd, again)
        spec = btf.Spec.from_bytes(btf_kernel.raw_btf(info.btf_id))
        out: list[JitedLine] = []
        for i in range(min(again.nr_line_info, again.nr_jited_line_info, n)):
            address = _U64.unpack_from(jited.raw, i * jrec)[0]
            _insn, file_off, line_off, line_col = _LINE_INFO.unpack_from(lines.raw, i * rec)
            if not address:
                return []  # withheld
            try:
                file, text = spec.string(file_off), spec.string(line_off)
            except btf.BTFError:
                file, text = "", ""
            out.append(JitedLine(address, file, line_col >> 10, line_col & 0x3FF, text))
        out.sort(key=lambda x: x.address)
        return out

    # --- running -----------------------------------------------------------------------------------

    def test_run(
        self,
        data: bytes = b"",
        ctx: bytes | None = None,
        repeat: int = 1,
        *,
        flags: int = 0,
        cpu: int = 0,
        data_out_size: int | None = None,
    ) -> TestRunResult:
        """Run the program once (or ``repeat`` times) on ``data``/``ctx`` (``BPF_PROG_TEST_RUN``).

        Packet programs take ``data``; raw tracepoint and tracing programs take only ``ctx`` (the argument
        array). Returns (return value, packet after the run, mean duration in ns).
        """
        attr = syscall.TestRunAttr(prog_fd=self.fd, repeat=0 if repeat == 1 else repeat, flags=flags, cpu=cpu)
        keep: list[object] = []
        out = None
        if data:
            din = ctypes.create_string_buffer(bytes(data), len(data))
            size = data_out_size if data_out_size is not None else len(data) + 512
            out = ctypes.create_string_buffer(size)
            keep += [din, out]
            attr.data_in = ctypes.addressof(din)
            attr.data_size_in = len(data)
            attr.data_out = ctypes.addressof(out)
            attr.data_size_out = size
        if ctx is not None:
            cin = ctypes.create_string_buffer(bytes(ctx), max(len(ctx), 1))
            keep.append(cin)
            attr.ctx_in = ctypes.addressof(cin)
            attr.ctx_size_in = len(ctx)
        syscall.bpf(Cmd.PROG_TEST_RUN, attr)
        data_out = out.raw[: attr.data_size_out] if out is not None else b""
        return TestRunResult(int(attr.retval), data_out, int(attr.duration))


def loaded_ids() -> Iterator[int]:
    """The id of every program loaded in the kernel, ascending (``BPF_PROG_GET_NEXT_ID``); a program unloaded
    during the walk is simply not seen again."""
    prog_id = 0
    while (next_id := syscall.get_next_id(Cmd.PROG_GET_NEXT_ID, prog_id)) is not None:
        prog_id = next_id
        yield prog_id


def _refusal(e: BPFError, program: str) -> BPFError:
    """``e`` as a :class:`VerifierError` when the verifier refused (it left a log, or said EACCES)."""
    if isinstance(e, VerifierError) or not (e.log.strip() or e.errno == errno.EACCES):
        return e
    return VerifierError(e.errno or 0, e.cmd, e.log, program=program)


def _load_with_log(attr: syscall.ProgLoadAttr, level: int) -> tuple[int, str]:
    """Load with a verifier log, growing the buffer on ENOSPC up to 64 MB. Returns (fd, log text)."""
    size = _LOG_START
    while True:
        log = ctypes.create_string_buffer(size)
        attr.log_level = level
        attr.log_size = size
        attr.log_buf = ctypes.addressof(log)
        attr.log_true_size = 0
        try:
            fd = syscall.bpf(Cmd.PROG_LOAD, attr, log)
        except BPFError as e:
            if e.errno == errno.ENOSPC and size < _LOG_MAX:
                want = int(attr.log_true_size)
                size = min(_LOG_MAX, max(size * 4, want + 1))
                continue
            raise
        finally:
            attr.log_level = 0
            attr.log_size = 0
            attr.log_buf = 0
        text = log.value.decode(errors="replace")
        return fd, text
