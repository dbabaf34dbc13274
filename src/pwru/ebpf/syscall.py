"""The bpf(2) system call through ctypes.

Each command's part of ``union bpf_attr`` is a ctypes structure laid out as in ``include/uapi/linux/bpf.h``
(natural alignment gives the kernel's layout). :func:`bpf` zero-pads the attribute to the size the kernel
expects and turns failures into :class:`~pwru.ebpf.errors.BPFError`, which carries errno and, for loads, the
kernel's log.
"""

from __future__ import annotations

import ctypes
import enum
import os
from typing import Any

from pwru.ebpf.errors import BPFError as BPFError  # re-exported: it lived here first
from pwru.ebpf.errors import SyscallError

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine, 298)

BPF_OBJ_NAME_LEN = 16


class Cmd(enum.IntEnum):
    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    RAW_TRACEPOINT_OPEN = 17
    BTF_LOAD = 18
    BTF_GET_FD_BY_ID = 19
    TASK_FD_QUERY = 20
    MAP_LOOKUP_AND_DELETE_ELEM = 21
    MAP_FREEZE = 22
    BTF_GET_NEXT_ID = 23
    MAP_LOOKUP_BATCH = 24
    MAP_LOOKUP_AND_DELETE_BATCH = 25
    MAP_UPDATE_BATCH = 26
    MAP_DELETE_BATCH = 27
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    ITER_CREATE = 33
    LINK_DETACH = 34
    PROG_BIND_MAP = 35


class MapType(enum.IntEnum):
    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30


class ProgType(enum.IntEnum):
    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    LWT_IN = 10
    LWT_OUT = 11
    LWT_XMIT = 12
    SOCK_OPS = 13
    SK_SKB = 14
    CGROUP_DEVICE = 15
    SK_MSG = 16
    RAW_TRACEPOINT = 17
    CGROUP_SOCK_ADDR = 18
    LWT_SEG6LOCAL = 19
    LIRC_MODE2 = 20
    SK_REUSEPORT = 21
    FLOW_DISSECTOR = 22
    CGROUP_SYSCTL = 23
    RAW_TRACEPOINT_WRITABLE = 24
    CGROUP_SOCKOPT = 25
    TRACING = 26
    STRUCT_OPS = 27
    EXT = 28
    LSM = 29
    SK_LOOKUP = 30
    SYSCALL = 31
    NETFILTER = 32


class AttachType(enum.IntEnum):
    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1
    TRACE_RAW_TP = 23
    TRACE_FENTRY = 24
    TRACE_FEXIT = 25
    MODIFY_RETURN = 26
    LSM_MAC = 27
    TRACE_ITER = 28
    XDP = 37
    PERF_EVENT = 41
    TRACE_KPROBE_MULTI = 42
    LSM_CGROUP = 43
    STRUCT_OPS = 44
    NETFILTER = 45
    TCX_INGRESS = 46
    TCX_EGRESS = 47
    TRACE_UPROBE_MULTI = 48


class LinkType(enum.IntEnum):
    UNSPEC = 0
    RAW_TRACEPOINT = 1
    TRACING = 2
    CGROUP = 3
    ITER = 4
    NETNS = 5
    XDP = 6
    PERF_EVENT = 7
    KPROBE_MULTI = 8
    STRUCT_OPS = 9
    NETFILTER = 10
    TCX = 11


# Map flags.
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_WRONLY_PROG = 1 << 8
BPF_F_MMAPABLE = 1 << 10
# Update flags.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
# Program load flags.
BPF_F_STRICT_ALIGNMENT = 1 << 0
BPF_F_SLEEPABLE = 1 << 4
BPF_F_XDP_HAS_FRAGS = 1 << 5
# kprobe-multi link flags.
BPF_F_KPROBE_MULTI_RETURN = 1 << 0


# --- attribute layouts ------------------------------------------------------------------------------


class MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # also next_key
        ("flags", ctypes.c_uint64),
    ]


class _AttachTarget(ctypes.Union):
    """The kernel's anonymous union: a module BTF object for ``attach_btf_id``, or a target BPF program."""

    _fields_ = [("attach_btf_obj_fd", ctypes.c_uint32), ("attach_prog_fd", ctypes.c_uint32)]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD; ``attach_btf_obj_fd`` and ``attach_prog_fd`` share one slot, as in the kernel."""

    _anonymous_ = ("attach_target",)
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_target", _AttachTarget),
        ("core_relo_cnt", ctypes.c_uint32),
        ("fd_array", ctypes.c_uint64),
        ("core_relos", ctypes.c_uint64),
        ("core_relo_rec_size", ctypes.c_uint32),
        ("log_true_size", ctypes.c_uint32),
    ]


class BtfLoadAttr(ctypes.Structure):
    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_log_buf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("btf_log_size", ctypes.c_uint32),
        ("btf_log_level", ctypes.c_uint32),
        ("btf_log_true_size", ctypes.c_uint32),
    ]


class GetIdAttr(ctypes.Structure):
    """BPF_*_GET_NEXT_ID and BPF_*_GET_FD_BY_ID."""

    _fields_ = [
        ("start_id", ctypes.c_uint32),  # also prog_id / map_id / btf_id / link_id
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class InfoByFdAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class RawTracepointOpenAttr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_uint64),
        ("prog_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("cookie", ctypes.c_uint64),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE; ``u`` holds the per-attach-type union as raw 32-bit words (see the helpers below)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),  # also target_ifindex
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("u", ctypes.c_uint64 * 6),
    ]


class LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class MapFreezeAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32)]


# The kernel rejects attributes whose tail beyond what it knows is non-zero, and accepts shorter ones.
_ATTR_SIZE = 160


def bpf(cmd: Cmd, attr: ctypes.Structure, log: Any = None) -> int:
    """Run one bpf(2) command. Returns the kernel's non-negative result (often a new fd).

    ``log`` is an optional ctypes char buffer whose text is attached to the error when the command fails.
    """
    size = ctypes.sizeof(attr)
    if size > _ATTR_SIZE:
        raise ValueError(f"attribute for {cmd.name} is larger than {_ATTR_SIZE} bytes")
    while True:
        ret = _syscall(_NR_BPF, int(cmd), ctypes.byref(attr), size)
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        if err == 4:  # EINTR
            continue
        text = ""
        if log is not None:
            text = bytes(log).split(b"\0", 1)[0].decode(errors="replace")
        raise BPFError(err, cmd, text)


def perf_event_open(attr: ctypes.Structure, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2); raises :class:`SyscallError` (an OSError) with errno on failure."""
    ret = _syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, group_fd, ctypes.c_ulong(flags))
    if ret < 0:
        err = ctypes.get_errno()
        raise SyscallError(err, "perf_event_open")
    return int(ret)


def object_name(name: str) -> bytes:
    """A kernel object name (maps, programs): at most 15 characters of ``[A-Za-z0-9_.]``; others become ``_``."""
    clean = "".join(c if c.isascii() and (c.isalnum() or c in "_.") else "_" for c in name)
    return clean[: BPF_OBJ_NAME_LEN - 1].encode()


def addr(buf: Any) -> int:
    """The address of a ctypes object or buffer, for the u64 pointer fields of bpf_attr."""
    if buf is None:
        return 0
    return ctypes.addressof(buf)


# --- thin command wrappers used across the library ------------------------------------------------


def obj_get_info_by_fd(fd: int, info: ctypes.Structure) -> None:
    attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)


def get_next_id(cmd: Cmd, start_id: int) -> int | None:
    """The next object id after ``start_id`` (PROG/MAP/BTF/LINK_GET_NEXT_ID), or None at the end."""
    attr = GetIdAttr(start_id=start_id)
    try:
        bpf(cmd, attr)
    except BPFError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return int(attr.next_id)


def get_fd_by_id(cmd: Cmd, obj_id: int) -> int:
    return bpf(cmd, GetIdAttr(start_id=obj_id))


def map_freeze(fd: int) -> None:
    bpf(Cmd.MAP_FREEZE, MapFreezeAttr(map_fd=fd))


def link_detach(fd: int) -> None:
    bpf(Cmd.LINK_DETACH, LinkDetachAttr(link_fd=fd))


class BtfInfo(ctypes.Structure):
    _fields_ = [
        ("btf", ctypes.c_uint64),
        ("btf_size", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("name", ctypes.c_uint64),
        ("name_len", ctypes.c_uint32),
        ("kernel_btf", ctypes.c_uint32),
    ]


class ProgInfo(ctypes.Structure):
    """The leading part of ``struct bpf_prog_info`` (enough for ids, names, tags and instruction counts)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
    ]


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    obj_get_info_by_fd(fd, info)
    return info


class MapInfo(ctypes.Structure):
    """``struct bpf_map_info``."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class LinkInfo(ctypes.Structure):
    """The leading part of ``struct bpf_link_info`` (type, id, prog_id; the per-type union as raw words)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("u", ctypes.c_uint64 * 8),
    ]


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` (through ``config3``); bit flags live in ``flags``."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),  # also sample_freq
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),  # also wakeup_watermark
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # also kprobe_func / uprobe_path
        ("config2", ctypes.c_uint64),  # also kprobe_addr / probe_offset
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("_reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("_reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
        ("config3", ctypes.c_uint64),
    ]


# perf_event_attr.flags bits and constants used by the kprobe and perf-buffer code.
PERF_ATTR_FLAG_DISABLED = 1 << 0
PERF_ATTR_FLAG_WATERMARK = 1 << 14
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
