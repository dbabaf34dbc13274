"""libpcap through ctypes: compile a filter expression to classic BPF, and run classic BPF on packets.

Only the system library is used (``libpcap.so.0.8``, the soname Debian and most distributions ship); the
expression grammar is libpcap's own, so its error messages reach the user unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from pwru.filter.cbpf import CInsn, CProgram

__all__ = ["DLT_EN10MB", "DLT_RAW", "SNAPLEN", "FilterError", "PcapProgram", "compile_cbpf", "offline_filter"]

DLT_EN10MB = 1
DLT_RAW = 12
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class FilterError(Exception):
    """An expression libpcap refuses; ``str()`` is ``invalid pcap filter "<expr>": <libpcap message>``."""

    def __init__(self, expr: str, message: str) -> None:
        super().__init__(f'invalid pcap filter "{expr}": {message}')
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
    found = ctypes.util.find_library("pcap")
    if found and found not in names:  # usually libpcap.so.0.8 again: a name tried twice reads as a bug
        names.append(found)
    err: OSError | None = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            err = e
    else:
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
                insns = tuple(
                    CInsn(int(i.code), int(i.jt), int(i.jf), int(i.k)) for i in prog.bf_insns[: prog.bf_len]
                )
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)
    return CProgram(insns)


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
