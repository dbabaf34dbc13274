"""libpcap through ctypes: compile a filter expression to classic BPF, and run classic BPF on packets.

Only the system library is used (``libpcap.so.0.8``, the soname Debian and most distributions ship); the
expression grammar is libpcap's own, so its error messages reach the user unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import resource
import signal
import struct
import threading

from pwru.filter.cbpf import CInsn, CProgram

__all__ = [
    "DLT_EN10MB",
    "DLT_RAW",
    "SNAPLEN",
    "FilterError",
    "FilterMemoryExhausted",
    "PcapProgram",
    "compile_cbpf",
    "compile_cbpf_bounded",
    "compile_memory_limit",
    "offline_filter",
]

DLT_EN10MB = 1
DLT_RAW = 12
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


#: An expression longer than this is shown shortened in messages (its start, and how long it is).
SHOWN_EXPR_CHARS = 120


def shown_expr(expr: str) -> str:
    """``expr`` as a message quotes it: whole when short, else its start and its length."""
    if len(expr) <= SHOWN_EXPR_CHARS:
        return expr
    return f"{expr[: SHOWN_EXPR_CHARS - 20].rstrip()} ... ({len(expr):,} characters)"


class FilterError(Exception):
    """An expression libpcap refuses; ``str()`` is ``invalid pcap filter "<expr>": <libpcap message>``
    (a long expression shortened, see :func:`shown_expr`)."""

    def __init__(self, expr: str, message: str) -> None:
        super().__init__(f'invalid pcap filter "{shown_expr(expr)}": {message}')
        self.expr = expr
        self.message = message


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


_lib: ctypes.CDLL | None = None
# pcap_compile is not thread-safe in older libpcap releases.
_lock = threading.Lock()


def _libpcap() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    names = ["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"]
    err: OSError | None = None
    lib: ctypes.CDLL | None = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            err = e
    if lib is None:
        # Asked only when the usual names fail: find_library runs ldconfig (a process; half a second emulated).
        found = ctypes.util.find_library("pcap")
        if found and found not in names:  # usually libpcap.so.0.8 again: a name tried twice reads as a bug
            names.append(found)
            try:
                lib = ctypes.CDLL(found)
            except OSError as e:
                err = e
    if lib is None:
        raise OSError(f"libpcap not found (tried {', '.join(names)}): {err}")
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_close.restype = None
    lib.pcap_offline_filter.argtypes = [
        ctypes.POINTER(_BpfProgram),
        ctypes.POINTER(_PktHdr),
        ctypes.c_char_p,
    ]
    lib.pcap_offline_filter.restype = ctypes.c_int
    lib.bpf_image.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_int]
    lib.bpf_image.restype = ctypes.c_char_p
    _lib = lib
    return lib


def compile_cbpf(expr: str, linktype: int, *, optimize: bool = True) -> CProgram:
    """Compile ``expr`` for ``linktype`` (DLT_EN10MB or DLT_RAW) with snaplen 262144; raises FilterError."""
    lib = _libpcap()
    with _lock:
        handle = lib.pcap_open_dead(linktype, SNAPLEN)
        if not handle:
            raise OSError(f"pcap_open_dead({linktype}) failed")
        try:
            prog = _BpfProgram()
            code = expr.encode()
            rc = lib.pcap_compile(handle, ctypes.byref(prog), code, int(optimize), PCAP_NETMASK_UNKNOWN)
            if rc != 0:
                message = (lib.pcap_geterr(handle) or b"unknown error").decode(errors="replace")
                raise FilterError(expr, message)
            try:
                insns = tuple(CInsn(int(i.code), int(i.jt), int(i.jf), int(i.k)) for i in prog.bf_insns[: prog.bf_len])
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)
    return CProgram(insns)


class FilterMemoryExhausted(FilterError):
    """A bounded compilation ran out of its memory (or its child died): the expression is too large."""


_INSN = struct.Struct("<HBBI")
_PR_SET_PDEATHSIG = 1
_OUT_OF_MEMORY = re.compile(r"\b(?:[mc]alloc|realloc|out of memory|Cannot allocate memory)\b", re.IGNORECASE)


def compile_memory_limit() -> int:
    """How many bytes a bounded compilation may add to the address space: half the memory available now
    (at least 256 MiB), so a filter libpcap's optimizer cannot handle fails alone instead of taking the machine
    down with it (a ~12,000-term filter asked for more than 15 GB here)."""
    available = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(available // 2, 256 << 20)


def _address_space() -> int:
    """This process's current virtual size in bytes (VmSize), 0 when unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _child_compile(expr: str, linktype: int, limit: int, optimize: bool, out: int) -> int:
    """In the forked child: bound the address space, compile, send the result; the exit status."""
    try:
        # Dies with its parent (a SIGKILLed pwru must not leave a compiler running for minutes) and on Ctrl-C.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        total = _address_space() + limit
        resource.setrlimit(resource.RLIMIT_AS, (total, total))
        prog = compile_cbpf(expr, linktype, optimize=optimize)
        data = b"P" + b"".join(_INSN.pack(i.code, i.jt, i.jf, i.k) for i in prog.insns)
    except FilterError as e:
        if _OUT_OF_MEMORY.search(e.message):  # libpcap's word for a failed allocation ("malloc", "calloc: ...")
            return 3
        data = b"E" + e.message.encode(errors="replace")
    except MemoryError:
        return 3
    view = memoryview(data)
    while view:
        view = view[os.write(out, view) :]
    return 0


def compile_cbpf_bounded(expr: str, linktype: int, limit: int, *, optimize: bool = True) -> CProgram:
    """:func:`compile_cbpf` in a forked child whose address space may grow by at most ``limit`` bytes.

    libpcap's optimizer grows superlinearly with the expression, and on malloc failure it may abort rather
    than return: only a separate process can be stopped from exhausting the machine's memory. A child that
    runs out, or dies, is a :class:`FilterError` saying the filter is too large."""
    lib = _libpcap()  # loaded (or refused) here, in the parent, where its error is reported as usual
    del lib
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        status = 4
        try:
            os.close(rfd)
            status = _child_compile(expr, linktype, limit, optimize, wfd)
        finally:
            os._exit(status)
    os.close(wfd)
    chunks = []
    try:
        while chunk := os.read(rfd, 1 << 20):
            chunks.append(chunk)
    except BaseException:  # Ctrl-C, SIGTERM's exception: the child goes too
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(rfd)
        _, wait_status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if os.waitstatus_to_exitcode(wait_status) != 0 or not data:
        raise FilterMemoryExhausted(
            expr,
            f"too large to compile: libpcap needed more than {limit >> 20:,} MiB of memory "
            "(split the filter, or match on fewer hosts and ports)",
        )
    if data[:1] == b"E":
        raise FilterError(expr, data[1:].decode(errors="replace"))
    body = data[1:]
    return CProgram(tuple(CInsn(*_INSN.unpack_from(body, off)) for off in range(0, len(body), _INSN.size)))


class PcapProgram:
    """A classic program handed back to libpcap, to run it on packets with ``pcap_offline_filter``
    (the reference the translation is checked against) or to print it with libpcap's ``bpf_image``."""

    def __init__(self, prog: CProgram) -> None:
        self._lib = _libpcap()
        n = len(prog.insns)
        self._insns = (_BpfInsn * max(n, 1))()
        for i, insn in enumerate(prog.insns):
            self._insns[i] = _BpfInsn(insn.code, insn.jt, insn.jf, insn.k)
        self._prog = _BpfProgram(n, ctypes.cast(self._insns, ctypes.POINTER(_BpfInsn)))

    def run(self, packet: bytes, wirelen: int | None = None) -> int:
        """The program's return value on ``packet`` (0: reject)."""
        hdr = _PktHdr(_Timeval(0, 0), len(packet), len(packet) if wirelen is None else wirelen)
        ret = self._lib.pcap_offline_filter(ctypes.byref(self._prog), ctypes.byref(hdr), packet)
        return int(ret) & 0xFFFFFFFF

    def image(self) -> str:
        """libpcap's own listing (``bpf_image``) of every instruction."""
        ptr = ctypes.cast(self._insns, ctypes.POINTER(_BpfInsn))
        lines = []
        for i in range(self._prog.bf_len):
            lines.append(self._lib.bpf_image(ctypes.byref(ptr[i]), i).decode())
        return "\n".join(lines)


def offline_filter(prog: CProgram, packet: bytes) -> int:
    """Run ``prog`` on ``packet`` with libpcap (captured length = wire length = ``len(packet)``)."""
    return PcapProgram(prog).run(packet)
