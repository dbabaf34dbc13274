"""Attaching programs: every attachment is a :class:`Link` with a ``kind`` and an idempotent ``close()``.

Kinds: ``raw_tp`` and ``tp_btf`` (raw tracepoints), ``tracing`` (fentry/fexit/fmod_ret), ``kprobe`` (a perf
kprobe event with the program on it), ``kprobe_multi``, ``tcx``, ``netfilter`` and ``xdp``. Failures raise
:class:`AttachError`, an ``OSError`` (and :class:`~pwru.ebpf.errors.EBPFError`) whose ``errno`` is the kernel's
and whose message says what was attached where, so callers can react to the errno (e.g. retry a kprobe-multi
link with fewer functions on E2BIG or ENOMEM). When the kernel lacks the mechanism altogether (no kprobe PMU,
no fprobe) it is an :class:`AttachNotSupported`, also a :class:`~pwru.ebpf.errors.NotSupported`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Self

from pwru.ebpf import syscall
from pwru.ebpf.errors import EBPFError, NotSupported
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, BPFError, Cmd, LinkType

ENOTSUPP = 524  # the kernel-internal "operation not supported" some bpf paths leak to user space
KPROBE_PMU_DIR = "/sys/bus/event_source/devices/kprobe"

# perf ioctls: _IO('$', 0), _IO('$', 1), _IOW('$', 8, __u32)
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

# XDP attach modes (flags of attach_xdp).
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3

# Netfilter protocol families and IPv4/IPv6 hooks.
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4
BPF_F_NETFILTER_IP_DEFRAG = 1 << 0


class AttachError(EBPFError, OSError):
    """Attaching failed. ``errno`` is the kernel's; ``kind`` and ``target`` say what and where."""

    def __init__(self, err: int, kind: str, target: str, detail: str = "") -> None:
        msg = f"{kind} attach to {target} failed: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        OSError.__init__(self, err, msg)
        self.detail = detail
        self.kind = kind
        self.target = target

    def __str__(self) -> str:
        return str(self.strerror)


class AttachNotSupported(AttachError, NotSupported):
    """Attaching failed because the kernel lacks the mechanism itself (no kprobe PMU, no fprobe): both an
    :class:`AttachError` (``errno``, ``kind``, ``target``) and a :class:`NotSupported` (``feature``, ``why``)."""

    def __init__(self, err: int, kind: str, target: str, detail: str) -> None:
        AttachError.__init__(self, err, kind, target, detail)
        self.feature = kind
        self.why = detail


@dataclass(frozen=True)
class LinkInfo:
    """The kernel's view of a BPF link."""

    id: int
    type: int
    prog_id: int


class Link:
    """One attachment. Holds a BPF link fd and/or a perf event fd; ``close()`` detaches (idempotent)."""

    def __init__(self, kind: str, fd: int = -1, perf_fd: int = -1, target: str = "") -> None:
        self.kind = kind
        self.target = target
        self._fd = fd
        self._perf_fd = perf_fd

    @property
    def fd(self) -> int:
        """The BPF link descriptor (-1 for a legacy perf-ioctl attachment)."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0 and self._perf_fd < 0

    def info(self) -> LinkInfo:
        """Link id, type and program id (``BPF_OBJ_GET_INFO_BY_FD``); only for BPF links."""
        if self._fd < 0:
            raise ValueError(f"{self.kind} link has no BPF link descriptor")
        info = syscall.LinkInfo()
        syscall.obj_get_info_by_fd(self._fd, info)
        return LinkInfo(id=info.id, type=info.type, prog_id=info.prog_id)

    def close(self) -> None:
        """Detach and release the descriptors (idempotent)."""
        if self._perf_fd >= 0 and self._fd < 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._perf_fd, PERF_EVENT_IOC_DISABLE, 0)
        for name in ("_fd", "_perf_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Link({self.kind}, {self.target!r}, fd={self._fd})"


# --- helpers -------------------------------------------------------------------------------------------


def _link_create(
    prog: Program,
    attach_type: int,
    *,
    target_fd: int = 0,
    flags: int = 0,
    extra: bytes = b"",
) -> int:
    """BPF_LINK_CREATE; ``extra`` is the per-type union, packed by the caller."""
    attr = syscall.LinkCreateAttr(
        prog_fd=prog.fd, target_fd=target_fd, attach_type=int(attach_type), flags=flags
    )
    if extra:
        if len(extra) > ctypes.sizeof(attr.u):
            raise ValueError("link_create union too large")
        ctypes.memmove(ctypes.addressof(attr.u), extra, len(extra))
    return syscall.bpf(Cmd.LINK_CREATE, attr)


def _raw_tracepoint_open(prog: Program, name: str | None) -> int:
    buf = ctypes.create_string_buffer(name.encode()) if name is not None else None
    attr = syscall.RawTracepointOpenAttr(name=syscall.addr(buf), prog_fd=prog.fd)
    return syscall.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr)


def _fail(e: OSError, kind: str, target: str, detail: str = "") -> AttachError:
    return AttachError(e.errno or errno.EINVAL, kind, target, detail)


# --- raw tracepoints and tracing ------------------------------------------------------------------------


def attach_raw_tracepoint(prog: Program, name: str | None) -> Link:
    """Attach a raw_tp program to tracepoint ``name`` (e.g. ``"sched_switch"``), or a tp_btf program
    (``name`` None: the tracepoint is the one it was loaded for)."""
    kind = "raw_tp" if name is not None else "tp_btf"
    target = name if name is not None else f"btf id {prog.attach_btf_id}"
    try:
        fd = _raw_tracepoint_open(prog, name)
    except BPFError as first:
        if name is not None:
            raise _fail(first, kind, target) from first
        try:  # kernels that only take tp_btf through LINK_CREATE
            fd = _link_create(prog, AttachType.TRACE_RAW_TP)
        except BPFError:
            raise _fail(first, kind, target) from first
    return Link(kind, fd, target=target)


def attach_tracing(prog: Program, cookie: int = 0) -> Link:
    """Attach a fentry/fexit/fmod_ret/tp_btf program to the target it was loaded for.

    Uses LINK_CREATE with the program's expected attach type (a ``cookie`` needs kernel >= 6.0), falling back
    to RAW_TRACEPOINT_OPEN on kernels without LINK_CREATE for tracing programs.
    """
    at = prog.expected_attach_type
    target = f"btf id {prog.attach_btf_id}"
    if at == AttachType.TRACE_RAW_TP:
        return attach_raw_tracepoint(prog, None)
    if at is None:
        raise ValueError("attach_tracing needs a program loaded with expected_attach_type")
    kind = {AttachType.TRACE_FENTRY: "fentry", AttachType.TRACE_FEXIT: "fexit"}.get(
        AttachType(at), "tracing"
    )
    extra = struct.pack("<IIQ", 0, 0, cookie) if cookie else b""
    try:
        fd = _link_create(prog, at, extra=extra)
    except BPFError as first:
        if cookie or first.errno not in (errno.EINVAL, ENOTSUPP):
            raise _fail(first, kind, target) from first
        try:
            fd = _raw_tracepoint_open(prog, None)
        except BPFError:
            raise _fail(first, kind, target) from first
    return Link(kind, fd, target=target)


# --- kprobes --------------------------------------------------------------------------------------------


def kprobe_pmu_type() -> int:
    """The kprobe PMU's perf type number; :class:`AttachNotSupported` (ENOENT) when the kernel has none."""
    try:
        with open(os.path.join(KPROBE_PMU_DIR, "type")) as f:
            return int(f.read())
    except FileNotFoundError:
        raise AttachNotSupported(
            errno.ENOENT, "kprobe", "kprobe PMU", f"{KPROBE_PMU_DIR} missing: CONFIG_KPROBES off"
        ) from None


def _retprobe_bit() -> int:
    """The config bit that makes a kprobe PMU event a kretprobe (``format/retprobe`` says ``config:N``)."""
    with open(os.path.join(KPROBE_PMU_DIR, "format", "retprobe")) as f:
        text = f.read().strip()
    field, _, bit = text.partition(":")
    if field != "config" or not bit.isdigit():
        raise AttachError(errno.EINVAL, "kprobe", "kprobe PMU", f"unexpected retprobe format {text!r}")
    return int(bit)


def _perf_kprobe_open(symbol: str, offset: int, retprobe: bool) -> int:
    pmu = kprobe_pmu_type()
    name = ctypes.create_string_buffer(symbol.encode())
    attr = syscall.PerfEventAttr(
        type=pmu,
        size=ctypes.sizeof(syscall.PerfEventAttr),
        config=(1 << _retprobe_bit()) if retprobe else 0,
        sample_period=1,
        wakeup_events=1,
        config1=ctypes.addressof(name),
        config2=offset,
    )
    return syscall.perf_event_open(attr, -1, 0, -1, syscall.PERF_FLAG_FD_CLOEXEC)


def attach_kprobe(
    prog: Program, symbol: str, offset: int = 0, retprobe: bool = False, cookie: int = 0
) -> Link:
    """Attach a kprobe program to ``symbol+offset`` (a kretprobe with ``retprobe``) via the perf kprobe PMU.

    Prefers a BPF link (LINK_CREATE, BPF_PERF_EVENT; kernel >= 5.15), else PERF_EVENT_IOC_SET_BPF + ENABLE.
    """
    kind = "kretprobe" if retprobe else "kprobe"
    target = f"{symbol}+{offset:#x}" if offset else symbol
    try:
        pfd = _perf_kprobe_open(symbol, offset, retprobe)
    except AttachNotSupported as e:  # no PMU: say so for this target
        raise AttachNotSupported(e.errno or errno.ENOENT, kind, target, e.detail) from None
    except OSError as e:  # perf_event_open refused the probe
        raise _fail(e, kind, target, "perf_event_open") from e
    try:
        fd = _link_create(prog, AttachType.PERF_EVENT, target_fd=pfd, extra=struct.pack("<Q", cookie))
        return Link(kind, fd, pfd, target=target)
    except BPFError as e:
        if cookie or e.errno not in (errno.EINVAL, ENOTSUPP):
            os.close(pfd)
            raise _fail(e, kind, target) from e
    try:
        fcntl.ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog.fd)
        fcntl.ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as e:
        os.close(pfd)
        raise _fail(e, kind, target, "perf ioctl") from e
    return Link(kind, -1, pfd, target=target)


def attach_kprobe_multi(
    prog: Program,
    addrs: list[int] | None = None,
    syms: list[str] | None = None,
    cookies: list[int] | None = None,
    retprobe: bool = False,
) -> Link:
    """One kprobe-multi link over many functions, given by address or by name (not both).

    The program must have been loaded with ``expected_attach_type=TRACE_KPROBE_MULTI``. Raises AttachError
    with the kernel's errno (E2BIG/ENOMEM: too many at once; ESRCH/ENOENT: an unknown function).
    """
    if (addrs is None) == (syms is None):
        raise ValueError("give exactly one of addrs or syms")
    n = len(addrs) if addrs is not None else len(syms or [])
    if n == 0:
        raise ValueError("kprobe-multi needs at least one function")
    if cookies is not None and len(cookies) != n:
        raise ValueError("one cookie per function")
    keep: list[object] = []
    addrs_p = syms_p = cookies_p = 0
    if addrs is not None:
        a = (ctypes.c_uint64 * n)(*addrs)
        keep.append(a)
        addrs_p = ctypes.addressof(a)
    else:
        strs = [ctypes.create_string_buffer(s.encode()) for s in syms or []]
        ptrs = (ctypes.c_uint64 * n)(*(ctypes.addressof(s) for s in strs))
        keep += [strs, ptrs]
        syms_p = ctypes.addressof(ptrs)
    if cookies is not None:
        c = (ctypes.c_uint64 * n)(*cookies)
        keep.append(c)
        cookies_p = ctypes.addressof(c)
    flags = syscall.BPF_F_KPROBE_MULTI_RETURN if retprobe else 0
    extra = struct.pack("<IIQQQ", flags, n, syms_p, addrs_p, cookies_p)
    kind = "kretprobe_multi" if retprobe else "kprobe_multi"
    target = f"{n} functions"
    try:
        fd = _link_create(prog, AttachType.TRACE_KPROBE_MULTI, extra=extra)
    except BPFError as e:
        detail = {
            errno.EOPNOTSUPP: "kernel without CONFIG_FPROBE",
            errno.E2BIG: "too many functions in one link",
            errno.ENOMEM: "not enough memory for this many functions",
            errno.ESRCH: "a function is not traceable",
            errno.ENOENT: "a function is not known",
        }.get(e.errno or 0, "")
        if e.errno == errno.EOPNOTSUPP:
            raise AttachNotSupported(e.errno, kind, target, detail) from e
        raise _fail(e, kind, target, detail) from e
    return Link(kind, fd, target=target)


# --- networking hooks ------------------------------------------------------------------------------------


#: tcx (mprog) attach flags: with no relative program, BEFORE places the new one first, AFTER last.
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4


def attach_tcx(
    prog: Program, ifindex: int, ingress: bool = True, flags: int = 0, relative_fd: int = 0
) -> Link:
    """Attach a sched_cls program to an interface's tcx ingress or egress hook (kernel >= 6.6)."""
    at = AttachType.TCX_INGRESS if ingress else AttachType.TCX_EGRESS
    target = f"ifindex {ifindex} {'ingress' if ingress else 'egress'}"
    try:
        fd = _link_create(
            prog, at, target_fd=ifindex, flags=flags, extra=struct.pack("<IIQ", relative_fd, 0, 0)
        )
    except BPFError as e:
        raise _fail(e, "tcx", target) from e
    return Link("tcx", fd, target=target)


def attach_netfilter(prog: Program, pf: int, hooknum: int, priority: int, flags: int = 0) -> Link:
    """Attach a netfilter program (loaded with expected attach type NETFILTER) at ``pf``/``hooknum``."""
    target = f"pf {pf} hook {hooknum} priority {priority}"
    try:
        extra = struct.pack("<IIiI", pf, hooknum, priority, flags)
        fd = _link_create(prog, AttachType.NETFILTER, extra=extra)
    except BPFError as e:
        raise _fail(e, "netfilter", target) from e
    return Link("netfilter", fd, target=target)


def attach_xdp(prog: Program, ifindex: int, flags: int = 0) -> Link:
    """Attach an XDP program to an interface through a BPF link (``flags``: XDP_FLAGS_*_MODE)."""
    target = f"ifindex {ifindex}"
    try:
        fd = _link_create(prog, AttachType.XDP, target_fd=ifindex, flags=flags)
    except BPFError as e:
        raise _fail(e, "xdp", target) from e
    return Link("xdp", fd, target=target)


__all__ = [
    "BPF_F_AFTER",
    "BPF_F_BEFORE",
    "AttachError",
    "AttachNotSupported",
    "Link",
    "LinkInfo",
    "LinkType",
    "attach_kprobe",
    "attach_kprobe_multi",
    "attach_netfilter",
    "attach_raw_tracepoint",
    "attach_tcx",
    "attach_tracing",
    "attach_xdp",
    "kprobe_pmu_type",
]
