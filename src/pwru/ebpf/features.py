"""What the running kernel allows, decided by trying: each probe loads (and where it matters attaches) a
trivial program, cleans up after itself, and returns a :class:`Feature` whose ``reason`` says in user terms
what is missing when it is not available. Results are cached per process (per target, for probes that take
one).

Probes that must attach somewhere take the target from the caller: :func:`kprobe` and :func:`kprobe_multi`
a kernel function (symbol), :func:`fentry` a function in vmlinux BTF, :func:`tp_btf` and :func:`raw_tp` a
tracepoint name. The library picks none itself: which function is sure to exist is the caller's knowledge.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from pwru.ebpf import asm
from pwru.ebpf.errors import NotSupported
from pwru.ebpf.link import (
    ENOTSUPP,
    KPROBE_PMU_DIR,
    NF_INET_LOCAL_IN,
    NFPROTO_IPV4,
    attach_kprobe,
    attach_kprobe_multi,
    attach_netfilter,
    attach_raw_tracepoint,
    attach_tcx,
    attach_tracing,
)
from pwru.ebpf.maps import Map
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, ProgType


@dataclass(frozen=True)
class Feature:
    """One capability of the running kernel; ``reason`` explains a missing one (or how it was seen)."""

    name: str
    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available

    def require(self) -> None:
        """Raise :class:`~pwru.ebpf.errors.NotSupported` (with :attr:`reason`) when not available."""
        if not self.available:
            raise NotSupported(self.name, self.reason)


def _why(e: OSError, step: str, what: str) -> str:
    """``"<step> refused (EPERM): <what it means>"``."""
    err = e.errno or 0
    names = {errno.EOPNOTSUPP: "EOPNOTSUPP", ENOTSUPP: "ENOTSUPP"}
    name = names.get(err) or errno.errorcode.get(err, str(err))
    meaning = {
        errno.EPERM: f"the kernel forbids {what} (lockdown, or missing CAP_BPF/CAP_PERFMON?)",
        errno.EACCES: f"the verifier refused {what}",
        errno.EINVAL: f"the kernel does not know {what} (too old?)",
        errno.E2BIG: f"the kernel does not know {what} (too old?)",
        errno.EOPNOTSUPP: f"{what} not built into this kernel",
        ENOTSUPP: f"{what} not supported by this kernel",
        errno.ENOENT: f"{what}: target not found",
        errno.ESRCH: f"{what}: target not found",
        errno.ENODEV: f"{what}: device not found",
    }.get(err, f"{what}: {os.strerror(err)}")
    return f"{step} refused ({name}): {meaning}"


def _ret0() -> bytes:
    return asm.assemble([asm.mov_imm(asm.R0, 0), asm.exit_()])


def _kernel_btf_id(name: str, kind_name: str) -> int | None:
    """The vmlinux BTF id of ``name`` (a FUNC or TYPEDEF), or None when there is no kernel BTF or no match."""
    try:
        from pwru.ebpf.btf import Kind, kernel_btf

        ids = kernel_btf().find(name, Kind[kind_name])
    except (OSError, ValueError):
        return None
    return ids[0] if ids else None


def _attempt(name: str, body: Callable[[], str]) -> Feature:
    try:
        return Feature(name, True, body())
    except _Missing as m:
        return Feature(name, False, f"{name}: {m}")


class _Missing(Exception):
    pass


def _load(step_what: str, **kw: object) -> Program:
    try:
        return Program.load(**kw)  # type: ignore[arg-type]
    except OSError as e:
        raise _Missing(_why(e, "program load", step_what)) from None


# --- probes --------------------------------------------------------------------------------------


@functools.cache
def ringbuf() -> Feature:
    """BPF ring buffer maps (kernel >= 5.8)."""

    def body() -> str:
        try:
            Map.ringbuf(os.sysconf("SC_PAGE_SIZE")).close()
        except OSError as e:
            raise _Missing(_why(e, "map create", "ring buffer maps")) from None
        return "ring buffer map created"

    return _attempt("ringbuf", body)


def _tracing(feature: str, what: str, attach: AttachType, btf_name: str, kind: str, target: str) -> Feature:
    """Load a tracing program of ``attach`` type on vmlinux BTF entry ``btf_name`` (a ``kind``) and attach it."""

    def body() -> str:
        btf_id = _kernel_btf_id(btf_name, kind)
        if btf_id is None:
            raise _Missing(f"no {btf_name} in kernel BTF (/sys/kernel/btf/vmlinux missing?)")
        prog = _load(
            what,
            prog_type=ProgType.TRACING,
            insns=_ret0(),
            expected_attach_type=attach,
            attach_btf_id=btf_id,
            log_level=0,
        )
        with prog:
            try:
                attach_tracing(prog).close()
            except OSError as e:
                raise _Missing(_why(e, "attach", f"{feature} on {target}")) from None
        return f"{feature} on {target} attached"

    return _attempt(feature, body)


@functools.cache
def tp_btf(tracepoint: str) -> Feature:
    """BTF-typed raw tracepoints: load and attach a program on ``tracepoint`` (``btf_trace_<name>`` in BTF)."""
    return _tracing(
        "tp_btf", "BTF tracepoint programs", AttachType.TRACE_RAW_TP, f"btf_trace_{tracepoint}", "TYPEDEF", tracepoint
    )


@functools.cache
def fentry(btf_func: str) -> Feature:
    """fentry programs: load with the BTF id of vmlinux function ``btf_func`` and attach."""
    return _tracing("fentry", "tracing programs", AttachType.TRACE_FENTRY, btf_func, "FUNC", btf_func)


@functools.cache
def raw_tp(tracepoint: str) -> Feature:
    """Raw tracepoints by name: attach a program to ``tracepoint``."""

    def body() -> str:
        kw = {"prog_type": ProgType.RAW_TRACEPOINT, "insns": _ret0(), "log_level": 0}
        with _load("raw tracepoint programs", **kw) as p:
            try:
                attach_raw_tracepoint(p, tracepoint).close()
            except OSError as e:
                raise _Missing(_why(e, "attach", "raw tracepoints")) from None
        return f"raw_tp on {tracepoint} attached"

    return _attempt("raw_tp", body)


@functools.cache
def kprobe(symbol: str) -> Feature:
    """kprobes through the perf kprobe PMU, attached for real on kernel function ``symbol``."""

    def body() -> str:
        if not os.path.isdir(KPROBE_PMU_DIR):
            raise _Missing(f"no kprobe PMU ({KPROBE_PMU_DIR} missing: CONFIG_KPROBES off)")
        with _load("kprobe programs", prog_type=ProgType.KPROBE, insns=_ret0(), log_level=0) as p:
            try:
                attach_kprobe(p, symbol).close()
            except OSError as e:
                raise _Missing(_why(e, "attach", f"a kprobe on {symbol}")) from None
        return f"kprobe on {symbol} attached"

    return _attempt("kprobe", body)


@functools.cache
def kprobe_multi(symbol: str) -> Feature:
    """kprobe-multi links (fprobe, kernel >= 5.18), attached for real on kernel function ``symbol``."""

    def body() -> str:
        prog = _load(
            "kprobe-multi programs",
            prog_type=ProgType.KPROBE,
            insns=_ret0(),
            expected_attach_type=AttachType.TRACE_KPROBE_MULTI,
            log_level=0,
        )
        with prog:
            try:
                attach_kprobe_multi(prog, syms=[symbol]).close()
            except OSError as e:
                raise _Missing(_why(e, "link create", "kprobe-multi links (CONFIG_FPROBE)")) from None
        return f"kprobe-multi link on {symbol} attached"

    return _attempt("kprobe_multi", body)


def _helper_in_kprobe(name: str, helper: str) -> Feature:
    insns = asm.assemble([asm.call(helper), asm.mov_imm(asm.R0, 0), asm.exit_()])

    def body() -> str:
        _load(f"bpf_{helper} in kprobe programs", prog_type=ProgType.KPROBE, insns=insns, log_level=0).close()
        return f"kprobe program calling bpf_{helper} loaded"

    return _attempt(name, body)


@functools.cache
def get_func_ip() -> Feature:
    """The ``bpf_get_func_ip`` helper in kprobe programs (kernel >= 5.15)."""
    return _helper_in_kprobe("get_func_ip", "get_func_ip")


@functools.cache
def bpf_cookie() -> Feature:
    """The ``bpf_get_attach_cookie`` helper in kprobe programs (kernel >= 5.15)."""
    return _helper_in_kprobe("bpf_cookie", "get_attach_cookie")


@functools.cache
def tcx() -> Feature:
    """tcx links (kernel >= 6.6): a pass-through program attached to loopback ingress for a moment."""
    tcx_next = -1
    insns = asm.assemble([asm.mov_imm(asm.R0, tcx_next), asm.exit_()])

    def body() -> str:
        with _load("tc programs", prog_type=ProgType.SCHED_CLS, insns=insns, log_level=0) as p:
            try:
                attach_tcx(p, 1, ingress=True).close()
            except OSError as e:
                raise _Missing(_why(e, "link create", "tcx links")) from None
        return "tcx link on lo attached"

    return _attempt("tcx", body)


@functools.cache
def netfilter_link() -> Feature:
    """Netfilter BPF links (kernel >= 6.4, CONFIG_NETFILTER_BPF_LINK): an accept-all hook for a moment."""
    nf_accept = 1
    insns = asm.assemble([asm.mov_imm(asm.R0, nf_accept), asm.exit_()])

    def body() -> str:
        prog = _load(
            "netfilter programs (kernel >= 6.4, CONFIG_NETFILTER_BPF_LINK)",
            prog_type=ProgType.NETFILTER,
            insns=insns,
            expected_attach_type=AttachType.NETFILTER,
            log_level=0,
        )
        with prog:
            try:
                attach_netfilter(prog, NFPROTO_IPV4, NF_INET_LOCAL_IN, priority=1).close()
            except OSError as e:
                raise _Missing(_why(e, "link create", "netfilter links")) from None
        return "netfilter link at IPv4 LOCAL_IN attached"

    return _attempt("netfilter_link", body)


@functools.cache
def long_jump() -> Feature:
    """``gotol`` (BPF_JMP32 | BPF_JA with a 32-bit offset in imm, kernel >= 6.6): a tiny program using it."""
    insns = asm.assemble([asm.mov_imm(asm.R0, 0), asm.Instruction(asm.Class.JMP32 | asm.JmpOp.JA), asm.exit_()])

    def body() -> str:
        _load("long jumps (gotol, Linux 6.6+)", prog_type=ProgType.SOCKET_FILTER, insns=insns, log_level=0).close()
        return "socket filter with a gotol loaded"

    return _attempt("long_jump", body)


#: The probes that need no target.
PROBES: dict[str, Callable[[], Feature]] = {
    "ringbuf": ringbuf,
    "get_func_ip": get_func_ip,
    "bpf_cookie": bpf_cookie,
    "tcx": tcx,
    "netfilter_link": netfilter_link,
    "long_jump": long_jump,
}
#: The probes that attach to a kernel function (its symbol, also its name in vmlinux BTF).
FUNCTION_PROBES: dict[str, Callable[[str], Feature]] = {
    "kprobe": kprobe,
    "kprobe_multi": kprobe_multi,
    "fentry": fentry,
}
#: The probes that attach to a tracepoint (its name without the ``btf_trace_`` prefix).
TRACEPOINT_PROBES: dict[str, Callable[[str], Feature]] = {"tp_btf": tp_btf, "raw_tp": raw_tp}


def probe_all(function: str, tracepoint: str) -> dict[str, Feature]:
    """Every probe's result, by name; the target probes try ``function`` and ``tracepoint``."""
    results = {name: probe() for name, probe in PROBES.items()}
    results |= {name: probe(function) for name, probe in FUNCTION_PROBES.items()}
    results |= {name: probe(tracepoint) for name, probe in TRACEPOINT_PROBES.items()}
    return results


def clear_cache() -> None:
    """Forget cached results (tests; a kernel whose settings changed)."""
    probes: list[object] = [*PROBES.values(), *FUNCTION_PROBES.values(), *TRACEPOINT_PROBES.values()]
    for probe in probes:
        probe.cache_clear()  # type: ignore[attr-defined]
