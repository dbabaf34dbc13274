"""Attach a tiny counting program with each pwru backend mechanism, straight through ``pwru.ebpf.syscall``.

Every probe loads the same program (increment slot 0 of an array map), attaches it the way one backend would
(kprobe through the perf kprobe PMU, kprobe-multi link, fentry, tp_btf tracepoint), and reports how many times
it ran while the caller made traffic. The instructions are encoded here by hand so that these probes depend on
nothing but the syscall layer and the BTF parser.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pwru.ebpf import btf, syscall
from pwru.ebpf.syscall import AttachType, Cmd, MapType, ProgType

PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
BPF_PSEUDO_MAP_FD = 1

#: Functions/tracepoint the probes watch; loopback UDP passes through all of them on every kernel line.
FUNCTION = "ip_rcv"
MULTI_FUNCTIONS = ("ip_rcv", "udp_rcv")
TRACEPOINT = "netif_receive_skb"


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def counter_program(map_fd: int) -> bytes:
    """``map[0] += 1; return 0`` as raw eBPF instructions."""
    return b"".join(
        [
            _insn(0x18, dst=1, src=BPF_PSEUDO_MAP_FD, imm=map_fd), _insn(0),  # r1 = map (ld_imm64)
            _insn(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(r10 - 4) = 0
            _insn(0xBF, dst=2, src=10),  # r2 = r10
            _insn(0x07, dst=2, imm=-4),  # r2 += -4
            _insn(0x85, imm=1),  # call bpf_map_lookup_elem
            _insn(0x15, dst=0, off=2, imm=0),  # if r0 == 0 goto +2
            _insn(0xB7, dst=1, imm=1),  # r1 = 1
            _insn(0xDB, dst=0, src=1),  # lock *(u64 *)(r0 + 0) += r1
            _insn(0xB7, dst=0, imm=0),  # r0 = 0
            _insn(0x95),  # exit
        ]
    )  # fmt: skip


def create_counter_map() -> int:
    attr = syscall.MapCreateAttr(map_type=MapType.ARRAY, key_size=4, value_size=8, max_entries=1)
    attr.map_name = b"lab_count"
    return syscall.bpf(Cmd.MAP_CREATE, attr)


def read_counter(map_fd: int) -> int:
    key = ctypes.c_uint32(0)
    value = ctypes.c_uint64(0)
    attr = syscall.MapElemAttr(map_fd=map_fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    syscall.bpf(Cmd.MAP_LOOKUP_ELEM, attr)
    return value.value


def load_program(prog_type: ProgType, map_fd: int, *, expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """Load the counter program; on failure the BPFError carries the verifier log."""
    code = counter_program(map_fd)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = syscall.ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.addressof(log),
        expected_attach_type=expected_attach_type,
        attach_btf_id=attach_btf_id,
    )
    attr.prog_name = b"lab_count"
    return syscall.bpf(Cmd.PROG_LOAD, attr, log)


def _vmlinux() -> btf.Spec:
    return btf.Spec.load("/sys/kernel/btf/vmlinux")


def attach_kprobe(map_fd: int, fds: list[int]) -> None:
    """kprobe backend: a perf event of the kprobe PMU on :data:`FUNCTION`, with the program set on it."""
    prog = load_program(ProgType.KPROBE, map_fd)
    fds.append(prog)
    with open("/sys/bus/event_source/devices/kprobe/type") as f:
        pmu_type = int(f.read())
    name = ctypes.create_string_buffer(FUNCTION.encode())
    attr = syscall.PerfEventAttr(type=pmu_type, size=ctypes.sizeof(syscall.PerfEventAttr))
    attr.config1 = ctypes.addressof(name)
    event = syscall.perf_event_open(attr, -1, 0, -1, syscall.PERF_FLAG_FD_CLOEXEC)
    fds.append(event)
    fcntl.ioctl(event, PERF_EVENT_IOC_SET_BPF, prog)
    fcntl.ioctl(event, PERF_EVENT_IOC_ENABLE, 0)


def attach_kprobe_multi(map_fd: int, fds: list[int]) -> None:
    """kprobe-multi backend: one BPF_LINK_CREATE over :data:`MULTI_FUNCTIONS` by symbol name."""
    prog = load_program(ProgType.KPROBE, map_fd, expected_attach_type=AttachType.TRACE_KPROBE_MULTI)
    fds.append(prog)
    names = [ctypes.create_string_buffer(n.encode()) for n in MULTI_FUNCTIONS]
    syms = (ctypes.c_uint64 * len(names))(*(ctypes.addressof(n) for n in names))
    attr = syscall.LinkCreateAttr(prog_fd=prog, attach_type=AttachType.TRACE_KPROBE_MULTI)
    attr.u[0] = len(names) << 32  # kprobe_multi.flags = 0, kprobe_multi.cnt
    attr.u[1] = ctypes.addressof(syms)
    fds.append(syscall.bpf(Cmd.LINK_CREATE, attr))


def _attach_tracing(prog: int, fds: list[int]) -> None:
    fds.append(prog)
    attr = syscall.RawTracepointOpenAttr(name=0, prog_fd=prog)
    fds.append(syscall.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr))


def attach_fentry(map_fd: int, fds: list[int]) -> None:
    """fentry backend: a tracing program on the BTF function :data:`FUNCTION`."""
    btf_id = _vmlinux().find_one(FUNCTION, btf.Kind.FUNC)
    prog = load_program(ProgType.TRACING, map_fd, expected_attach_type=AttachType.TRACE_FENTRY, attach_btf_id=btf_id)
    _attach_tracing(prog, fds)


def attach_tracepoint(map_fd: int, fds: list[int]) -> None:
    """tracepoint backend: tp_btf on :data:`TRACEPOINT` (typedef ``btf_trace_<name>`` in vmlinux BTF)."""
    btf_id = _vmlinux().find_one(f"btf_trace_{TRACEPOINT}", btf.Kind.TYPEDEF)
    prog = load_program(ProgType.TRACING, map_fd, expected_attach_type=AttachType.TRACE_RAW_TP, attach_btf_id=btf_id)
    _attach_tracing(prog, fds)


ATTACHERS: dict[str, Callable[[int, list[int]], None]] = {
    "kprobe-multi": attach_kprobe_multi,
    "kprobe": attach_kprobe,
    "fentry": attach_fentry,
    "tracepoint": attach_tracepoint,
}


@contextmanager
def counting(backend: str) -> Iterator[Callable[[], int]]:
    """Attach the counter with ``backend``; yields a function reading the count; closes everything after."""
    fds: list[int] = []
    map_fd = create_counter_map()
    try:
        ATTACHERS[backend](map_fd, fds)
        yield lambda: read_counter(map_fd)
    finally:
        for fd in reversed(fds):
            os.close(fd)
        os.close(map_fd)
