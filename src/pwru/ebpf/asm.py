"""eBPF instructions: encoding, decoding, disassembly, builders and label resolution.

The model follows the kernel's ``Documentation/bpf/standardization/instruction-set.rst``.
An :class:`Instruction` is one *logical* instruction: a 64-bit immediate load (``ld_imm64``, including
the pseudo forms that name a map fd, a map value, a BTF id or a function) is one object holding a 64-bit
``imm`` and takes two 8-byte slots when encoded. Jumps and calls count offsets in slots; :func:`assemble`
and :func:`resolve` turn label names into those offsets.

Builders take registers as :class:`Reg` and immediates as plain ints, with explicit ``_imm``/``_reg`` names
so the two can never be confused.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import struct
from collections.abc import Iterable, Sequence

from pwru.ebpf.errors import EBPFError

__all__ = [
    "LD_IMM64",
    "R0",
    "R1",
    "R2",
    "R3",
    "R4",
    "R5",
    "R6",
    "R7",
    "R8",
    "R9",
    "R10",
    "RFP",
    "AluOp",
    "AsmError",
    "AtomicOp",
    "CallSrc",
    "Class",
    "Instruction",
    "JmpOp",
    "LdImm64Src",
    "Mode",
    "Reg",
    "Size",
    "Source",
    "alu_imm",
    "alu_reg",
    "assemble",
    "atomic",
    "call",
    "call_kfunc",
    "call_pseudo",
    "decode",
    "disasm",
    "encode",
    "endian",
    "exit_",
    "helper_id",
    "helper_name",
    "instruction_at_slot",
    "ja",
    "jmp_imm",
    "jmp_reg",
    "ld_abs",
    "ld_btf_id",
    "ld_func",
    "ld_imm64",
    "ld_ind",
    "ld_map_fd",
    "ld_map_value",
    "ldx",
    "mov_imm",
    "mov_reg",
    "neg",
    "resolve",
    "slot_count",
    "slot_offsets",
    "st",
    "stx",
]


class AsmError(EBPFError, ValueError):
    """Instructions that cannot be encoded, decoded or resolved (unknown label, offset out of range)."""


class Class(enum.IntEnum):
    """Instruction class: the low three bits of the opcode."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    JMP32 = 0x06
    ALU64 = 0x07


class Size(enum.IntEnum):
    """Access size of load/store instructions."""

    W = 0x00
    H = 0x08
    B = 0x10
    DW = 0x18

    @property
    def nbytes(self) -> int:
        return {Size.W: 4, Size.H: 2, Size.B: 1, Size.DW: 8}[self]

    @classmethod
    def of_bytes(cls, n: int) -> Size:
        """The size for an access of ``n`` bytes (1, 2, 4 or 8)."""
        try:
            return {1: cls.B, 2: cls.H, 4: cls.W, 8: cls.DW}[n]
        except KeyError:
            raise AsmError(f"no access size of {n} bytes") from None


class Mode(enum.IntEnum):
    """Addressing mode of load/store instructions."""

    IMM = 0x00
    ABS = 0x20
    IND = 0x40
    MEM = 0x60
    MEMSX = 0x80
    ATOMIC = 0xC0


class Source(enum.IntEnum):
    """Operand source of ALU and jump instructions (for ``END``: K = to little endian, X = to big endian)."""

    K = 0x00
    X = 0x08


class AluOp(enum.IntEnum):
    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class JmpOp(enum.IntEnum):
    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60
    JSGE = 0x70
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0
    JLE = 0xB0
    JSLT = 0xC0
    JSLE = 0xD0


class AtomicOp(enum.IntEnum):
    """The ``imm`` of an atomic instruction."""

    ADD = 0x00
    OR = 0x40
    AND = 0x50
    XOR = 0xA0
    FETCH = 0x01
    XCHG = 0xE1
    CMPXCHG = 0xF1


class LdImm64Src(enum.IntEnum):
    """The ``src`` register field of an ld_imm64: what its immediate means."""

    IMM = 0
    MAP_FD = 1
    MAP_VALUE = 2
    BTF_ID = 3
    FUNC = 4
    MAP_IDX = 5
    MAP_IDX_VALUE = 6


class CallSrc(enum.IntEnum):
    """The ``src`` field of a call: helper id, bpf-to-bpf relative call, or kernel function BTF id."""

    HELPER = 0
    PSEUDO_CALL = 1
    KFUNC = 2


class Reg(enum.IntEnum):
    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg
RFP = Reg.R10

LD_IMM64 = Class.LD | Size.DW | Mode.IMM

# Helper ids are positions in the kernel's enum bpf_func_id (include/uapi/linux/bpf.h).
_HELPER_TEXT = """
unspec map_lookup_elem map_update_elem map_delete_elem probe_read ktime_get_ns trace_printk
get_prandom_u32 get_smp_processor_id skb_store_bytes l3_csum_replace l4_csum_replace tail_call
clone_redirect get_current_pid_tgid get_current_uid_gid get_current_comm get_cgroup_classid
skb_vlan_push skb_vlan_pop skb_get_tunnel_key skb_set_tunnel_key perf_event_read redirect
get_route_realm perf_event_output skb_load_bytes get_stackid csum_diff skb_get_tunnel_opt
skb_set_tunnel_opt skb_change_proto skb_change_type skb_under_cgroup get_hash_recalc get_current_task
probe_write_user current_task_under_cgroup skb_change_tail skb_pull_data csum_update set_hash_invalid
get_numa_node_id skb_change_head xdp_adjust_head probe_read_str get_socket_cookie get_socket_uid
set_hash setsockopt skb_adjust_room redirect_map sk_redirect_map sock_map_update xdp_adjust_meta
perf_event_read_value perf_prog_read_value getsockopt override_return sock_ops_cb_flags_set
msg_redirect_map msg_apply_bytes msg_cork_bytes msg_pull_data bind xdp_adjust_tail skb_get_xfrm_state
get_stack skb_load_bytes_relative fib_lookup sock_hash_update msg_redirect_hash sk_redirect_hash
lwt_push_encap lwt_seg6_store_bytes lwt_seg6_adjust_srh lwt_seg6_action rc_repeat rc_keydown
skb_cgroup_id get_current_cgroup_id get_local_storage sk_select_reuseport skb_ancestor_cgroup_id
sk_lookup_tcp sk_lookup_udp sk_release map_push_elem map_pop_elem map_peek_elem msg_push_data
msg_pop_data rc_pointer_rel spin_lock spin_unlock sk_fullsock tcp_sock skb_ecn_set_ce get_listener_sock
skc_lookup_tcp tcp_check_syncookie sysctl_get_name sysctl_get_current_value sysctl_get_new_value
sysctl_set_new_value strtol strtoul sk_storage_get sk_storage_delete send_signal tcp_gen_syncookie
skb_output probe_read_user probe_read_kernel probe_read_user_str probe_read_kernel_str tcp_send_ack
send_signal_thread jiffies64 read_branch_records get_ns_current_pid_tgid xdp_output get_netns_cookie
get_current_ancestor_cgroup_id sk_assign ktime_get_boot_ns seq_printf seq_write sk_cgroup_id
sk_ancestor_cgroup_id ringbuf_output ringbuf_reserve ringbuf_submit ringbuf_discard ringbuf_query
csum_level skc_to_tcp6_sock skc_to_tcp_sock skc_to_tcp_timewait_sock skc_to_tcp_request_sock
skc_to_udp6_sock get_task_stack load_hdr_opt store_hdr_opt reserve_hdr_opt inode_storage_get
inode_storage_delete d_path copy_from_user snprintf_btf seq_printf_btf skb_cgroup_classid redirect_neigh
per_cpu_ptr this_cpu_ptr redirect_peer task_storage_get task_storage_delete get_current_task_btf
bprm_opts_set ktime_get_coarse_ns ima_inode_hash sock_from_file check_mtu for_each_map_elem snprintf
sys_bpf btf_find_by_name_kind sys_close timer_init timer_set_callback timer_start timer_cancel
get_func_ip get_attach_cookie task_pt_regs get_branch_snapshot trace_vprintk skc_to_unix_sock
kallsyms_lookup_name find_vma loop strncmp get_func_arg get_func_ret get_func_arg_cnt get_retval
set_retval xdp_get_buff_len xdp_load_bytes xdp_store_bytes copy_from_user_task skb_set_tstamp
ima_file_hash kptr_xchg map_lookup_percpu_elem skc_to_mptcp_sock dynptr_from_mem ringbuf_reserve_dynptr
ringbuf_submit_dynptr ringbuf_discard_dynptr dynptr_read dynptr_write dynptr_data
tcp_raw_gen_syncookie_ipv4 tcp_raw_gen_syncookie_ipv6 tcp_raw_check_syncookie_ipv4
tcp_raw_check_syncookie_ipv6 ktime_get_tai_ns user_ringbuf_drain cgrp_storage_get cgrp_storage_delete
"""
_HELPER_NAMES: tuple[str, ...] = tuple(_HELPER_TEXT.split())


def helper_name(helper_id: int) -> str | None:
    """The name of helper ``helper_id`` without its ``bpf_`` prefix, or None when unknown."""
    if 0 <= helper_id < len(_HELPER_NAMES):
        return _HELPER_NAMES[helper_id]
    return None


def helper_id(name: str) -> int:
    """The id of helper ``name`` (with or without ``bpf_``); raises AsmError when unknown."""
    short = name.removeprefix("bpf_")
    try:
        return _HELPER_NAMES.index(short)
    except ValueError:
        raise AsmError(f"unknown helper {name!r}") from None


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _s16(v: int) -> int:
    v &= 0xFFFF
    return v - (1 << 16) if v & 0x8000 else v


@dataclasses.dataclass(slots=True)
class Instruction:
    """One logical eBPF instruction.

    ``imm`` is a signed 32-bit value, except for an ld_imm64 where it is the unsigned 64-bit immediate.
    ``label`` names this instruction as a jump/call target; ``target`` names the label a jump, a bpf-to-bpf
    call or an ld_imm64 of a function refers to (resolved by :func:`resolve`/:func:`assemble`).
    """

    op: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    label: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.op <= 0xFF:
            raise AsmError(f"opcode {self.op:#x} does not fit in a byte")
        if not (0 <= self.dst <= 15 and 0 <= self.src <= 15):
            raise AsmError(f"register out of range: dst={self.dst} src={self.src}")
        if not -(1 << 15) <= self.off < (1 << 16):
            raise AsmError(f"offset {self.off} does not fit in 16 bits")
        self.off = _s16(self.off)
        if self.op == LD_IMM64:
            if not -(1 << 63) <= self.imm < (1 << 64):
                raise AsmError(f"immediate {self.imm} does not fit in 64 bits")
            self.imm &= (1 << 64) - 1
        else:
            if not -(1 << 31) <= self.imm < (1 << 32):
                raise AsmError(f"immediate {self.imm} does not fit in 32 bits")
            self.imm = _s32(self.imm)

    # --- opcode fields ---------------------------------------------------------------------------

    @property
    def cls(self) -> Class:
        return Class(self.op & 0x07)

    @property
    def size(self) -> Size:
        return Size(self.op & 0x18)

    @property
    def mode(self) -> Mode:
        return Mode(self.op & 0xE0)

    @property
    def source(self) -> Source:
        return Source(self.op & 0x08)

    @property
    def alu_op(self) -> AluOp:
        return AluOp(self.op & 0xF0)

    @property
    def jmp_op(self) -> JmpOp:
        return JmpOp(self.op & 0xF0)

    @property
    def is_ld_imm64(self) -> bool:
        return self.op == LD_IMM64

    @property
    def slots(self) -> int:
        """How many 8-byte slots this instruction takes when encoded (2 for ld_imm64, else 1)."""
        return 2 if self.op == LD_IMM64 else 1

    @property
    def is_call(self) -> bool:
        return self.op == Class.JMP | JmpOp.CALL

    @property
    def is_helper_call(self) -> bool:
        return self.is_call and self.src == CallSrc.HELPER

    @property
    def is_pseudo_call(self) -> bool:
        """A bpf-to-bpf call: ``imm`` is the callee's slot offset relative to the next slot."""
        return self.is_call and self.src == CallSrc.PSEUDO_CALL

    @property
    def is_exit(self) -> bool:
        return self.op == Class.JMP | JmpOp.EXIT

    @property
    def is_jump(self) -> bool:
        """A (conditional or unconditional) jump whose target is given by ``off`` (or ``imm`` for gotol)."""
        return self.cls in (Class.JMP, Class.JMP32) and self.jmp_op not in (JmpOp.CALL, JmpOp.EXIT)

    @property
    def is_long_jump(self) -> bool:
        """``gotol``: JMP32 | JA, whose offset is in ``imm``."""
        return self.op == Class.JMP32 | JmpOp.JA

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The little-endian encoding: 8 bytes, or 16 for an ld_imm64."""
        regs = (self.src << 4) | self.dst
        if self.op == LD_IMM64:
            lo = self.imm & 0xFFFFFFFF
            hi = self.imm >> 32
            return struct.pack("<BBhIBBhI", self.op, regs, self.off, lo, 0, 0, 0, hi)
        return struct.pack("<BBhi", self.op, regs, self.off, self.imm)

    def with_label(self, label: str) -> Instruction:
        """A copy of this instruction carrying ``label``."""
        return dataclasses.replace(self, label=label)

    def copy(self) -> Instruction:
        """A copy, without validating again what was validated when this one was made (``dataclasses.replace``
        runs ``__init__`` and ``__post_init__``: ~8x slower, and objects are copied by the tens of thousands at
        every start). Slots, not a dict: the object's ~41,000 instructions took 13 MB with a dict each, 4 MB with
        slots."""
        new = object.__new__(Instruction)
        new.op, new.dst, new.src, new.off, new.imm = self.op, self.dst, self.src, self.off, self.imm
        new.label, new.target = self.label, self.target
        return new

    def __str__(self) -> str:
        return _disasm_one(self)


def _decoded(op: int, dst: int, src: int, off: int, imm: int) -> Instruction:
    """An instruction from decoded fields, which are in range by construction (a byte, two nibbles, a signed
    16-bit offset, a signed 32-bit or unsigned 64-bit immediate): ``__post_init__``'s checks are skipped, as
    every instruction of the object is decoded at every start."""
    new = object.__new__(Instruction)
    new.op, new.dst, new.src, new.off, new.imm, new.label, new.target = op, dst, src, off, imm, None, None
    return new


def decode(data: bytes) -> list[Instruction]:
    """Decode little-endian bytecode into instructions (an ld_imm64 becomes one instruction)."""
    if len(data) % 8:
        raise AsmError(f"bytecode length {len(data)} is not a multiple of 8")
    out: list[Instruction] = []
    i = 0
    n = len(data)
    while i < n:
        op, regs, off, imm = struct.unpack_from("<BBhi", data, i)
        if op == LD_IMM64:
            if i + 16 > n:
                raise AsmError(f"ld_imm64 at slot {i // 8} is missing its second slot")
            op2, regs2, off2, hi = struct.unpack_from("<BBhI", data, i + 8)
            if op2 or regs2 or off2:
                raise AsmError(f"ld_imm64 at slot {i // 8} has a malformed second slot")
            out.append(_decoded(op, regs & 0xF, regs >> 4, off, (imm & 0xFFFFFFFF) | (hi << 32)))
            i += 16
        else:
            out.append(_decoded(op, regs & 0xF, regs >> 4, off, imm))
            i += 8
    return out


def encode(insns: Iterable[Instruction]) -> bytes:
    """Encode instructions as they are (targets must already be resolved; see :func:`assemble`)."""
    return b"".join(insn.encode() for insn in insns)


# --- slots and labels -----------------------------------------------------------------------------


def slot_count(insns: Iterable[Instruction]) -> int:
    """The number of 8-byte slots ``insns`` take when encoded."""
    return sum(insn.slots for insn in insns)


def slot_offsets(insns: Sequence[Instruction]) -> list[int]:
    """For each instruction, the slot at which it starts; one extra entry at the end holds the total."""
    # accumulate over a comprehension, not a loop over .slots: called on every program's ~1,000-6,000
    # instructions several times per start, this was seconds of it under emulation
    return list(itertools.accumulate([2 if i.op == LD_IMM64 else 1 for i in insns], initial=0))


def instruction_at_slot(insns: Sequence[Instruction], slot: int) -> int:
    """The index of the instruction starting at ``slot``; raises AsmError if ``slot`` is inside an ld_imm64
    or out of range."""
    offsets = slot_offsets(insns)
    lo, hi = 0, len(insns)
    while lo < hi:
        mid = (lo + hi) // 2
        if offsets[mid] < slot:
            lo = mid + 1
        else:
            hi = mid
    if lo >= len(insns) or offsets[lo] != slot:
        raise AsmError(f"slot {slot} is not the start of an instruction")
    return lo


def resolve(insns: Sequence[Instruction]) -> list[Instruction]:
    """Copies of ``insns`` with every ``target`` turned into a slot-relative offset.

    Jumps get ``off`` (``imm`` for gotol), bpf-to-bpf calls and ld_imm64 of a function get ``imm``. Raises
    AsmError for duplicate or unknown labels and for offsets that do not fit the field.
    """
    offsets = slot_offsets(insns)
    labels: dict[str, int] = {}
    for i, insn in enumerate(insns):
        if insn.label is not None:
            if insn.label in labels:
                raise AsmError(f"label {insn.label!r} defined twice")
            labels[insn.label] = offsets[i]
    out: list[Instruction] = []
    for i, insn in enumerate(insns):
        if insn.target is None:
            out.append(insn)
            continue
        if insn.target not in labels:
            raise AsmError(f"instruction {i} ({insn}) refers to unknown label {insn.target!r}")
        rel = labels[insn.target] - offsets[i] - 1
        if insn.is_jump and not insn.is_long_jump:
            if not -(1 << 15) <= rel < (1 << 15):
                raise AsmError(
                    f"jump at instruction {i} to {insn.target!r} is {rel} slots away, beyond a 16-bit offset"
                )
            new = insn.copy()  # in range, checked above: no need to validate again
            new.off = rel
            out.append(new)
        elif insn.is_long_jump or insn.is_pseudo_call or (insn.is_ld_imm64 and insn.src == LdImm64Src.FUNC):
            if not -(1 << 31) <= rel < (1 << 31):
                raise AsmError(f"instruction {i} to {insn.target!r} is {rel} slots away, beyond 32 bits")
            new = insn.copy()
            new.imm = rel
            out.append(new)
        else:
            raise AsmError(f"instruction {i} ({insn}) cannot have a target")
    return out


def assemble(insns: Sequence[Instruction]) -> bytes:
    """Resolve labels (see :func:`resolve`) and encode."""
    return encode(resolve(insns))


# --- builders -------------------------------------------------------------------------------------


def _alu_class(bits: int) -> Class:
    if bits == 64:
        return Class.ALU64
    if bits == 32:
        return Class.ALU
    raise AsmError(f"ALU width must be 32 or 64, not {bits}")


def _jmp_class(bits: int) -> Class:
    if bits == 64:
        return Class.JMP
    if bits == 32:
        return Class.JMP32
    raise AsmError(f"jump width must be 32 or 64, not {bits}")


def _jump_target(target: int | str) -> tuple[int, str | None]:
    if isinstance(target, str):
        return 0, target
    return target, None


def mov_imm(dst: Reg, imm: int, *, bits: int = 64) -> Instruction:
    """``dst = imm`` (sign-extended to 64 bits for bits=64)."""
    return Instruction(_alu_class(bits) | AluOp.MOV | Source.K, dst, 0, 0, imm)


def mov_reg(dst: Reg, src: Reg, *, bits: int = 64) -> Instruction:
    """``dst = src`` (bits=32 zero-extends the low half)."""
    return Instruction(_alu_class(bits) | AluOp.MOV | Source.X, dst, src)


def alu_imm(op: AluOp, dst: Reg, imm: int, *, bits: int = 64) -> Instruction:
    """``dst <op>= imm``."""
    return Instruction(_alu_class(bits) | op | Source.K, dst, 0, 0, imm)


def alu_reg(op: AluOp, dst: Reg, src: Reg, *, bits: int = 64) -> Instruction:
    """``dst <op>= src``."""
    return Instruction(_alu_class(bits) | op | Source.X, dst, src)


def neg(dst: Reg, *, bits: int = 64) -> Instruction:
    """``dst = -dst``."""
    return Instruction(_alu_class(bits) | AluOp.NEG, dst)


def endian(dst: Reg, width: int, *, big: bool = True) -> Instruction:
    """Convert the low ``width`` bits (16/32/64) of ``dst`` from host order to big (or little) endian."""
    if width not in (16, 32, 64):
        raise AsmError(f"byte swap width must be 16, 32 or 64, not {width}")
    return Instruction(Class.ALU | AluOp.END | (Source.X if big else Source.K), dst, 0, 0, width)


def ldx(size: Size, dst: Reg, src: Reg, off: int) -> Instruction:
    """``dst = *(size *)(src + off)``."""
    return Instruction(Class.LDX | size | Mode.MEM, dst, src, off)


def st(size: Size, dst: Reg, off: int, imm: int) -> Instruction:
    """``*(size *)(dst + off) = imm``."""
    return Instruction(Class.ST | size | Mode.MEM, dst, 0, off, imm)


def stx(size: Size, dst: Reg, off: int, src: Reg) -> Instruction:
    """``*(size *)(dst + off) = src``."""
    return Instruction(Class.STX | size | Mode.MEM, dst, src, off)


def atomic(size: Size, op: AtomicOp | int, dst: Reg, off: int, src: Reg) -> Instruction:
    """An atomic read-modify-write of ``*(size *)(dst + off)`` with ``src`` (``op`` may include FETCH)."""
    return Instruction(Class.STX | size | Mode.ATOMIC, dst, src, off, int(op))


def ld_abs(size: Size, imm: int) -> Instruction:
    """Legacy packet load ``r0 = ntoh(*(size *)(skb->data + imm))``."""
    return Instruction(Class.LD | size | Mode.ABS, 0, 0, 0, imm)


def ld_ind(size: Size, src: Reg, imm: int) -> Instruction:
    """Legacy packet load ``r0 = ntoh(*(size *)(skb->data + src + imm))``."""
    return Instruction(Class.LD | size | Mode.IND, 0, src, 0, imm)


def ld_imm64(dst: Reg, value: int, src: LdImm64Src = LdImm64Src.IMM) -> Instruction:
    """``dst = value ll`` (two slots)."""
    return Instruction(LD_IMM64, dst, src, 0, value)


def ld_map_fd(dst: Reg, fd: int) -> Instruction:
    """``dst = <map of fd>``: a pseudo ld_imm64 the verifier turns into the map's address."""
    return Instruction(LD_IMM64, dst, LdImm64Src.MAP_FD, 0, fd & 0xFFFFFFFF)


def ld_map_value(dst: Reg, fd: int, off: int = 0) -> Instruction:
    """``dst = &<value of array map fd> + off``."""
    return Instruction(LD_IMM64, dst, LdImm64Src.MAP_VALUE, 0, (fd & 0xFFFFFFFF) | ((off & 0xFFFFFFFF) << 32))


def ld_btf_id(dst: Reg, btf_id: int) -> Instruction:
    """``dst = <address of the kernel variable with BTF id>``."""
    return Instruction(LD_IMM64, dst, LdImm64Src.BTF_ID, 0, btf_id & 0xFFFFFFFF)


def ld_func(dst: Reg, target: int | str) -> Instruction:
    """``dst = <address of a bpf function>``; ``target`` is a label or a slot offset from the next slot."""
    off, label = _jump_target(target)
    return Instruction(LD_IMM64, dst, LdImm64Src.FUNC, 0, off & 0xFFFFFFFF, target=label)


def jmp_imm(op: JmpOp, dst: Reg, imm: int, target: int | str, *, bits: int = 64) -> Instruction:
    """``if dst <op> imm goto target`` (a label or a slot offset)."""
    off, label = _jump_target(target)
    return Instruction(_jmp_class(bits) | op | Source.K, dst, 0, off, imm, target=label)


def jmp_reg(op: JmpOp, dst: Reg, src: Reg, target: int | str, *, bits: int = 64) -> Instruction:
    """``if dst <op> src goto target`` (a label or a slot offset)."""
    off, label = _jump_target(target)
    return Instruction(_jmp_class(bits) | op | Source.X, dst, src, off, target=label)


def ja(target: int | str) -> Instruction:
    """``goto target``."""
    off, label = _jump_target(target)
    return Instruction(Class.JMP | JmpOp.JA, 0, 0, off, target=label)


def call(helper: int | str) -> Instruction:
    """Call a helper by id or name (``bpf_probe_read_kernel`` or ``probe_read_kernel``)."""
    hid = helper_id(helper) if isinstance(helper, str) else helper
    return Instruction(Class.JMP | JmpOp.CALL, 0, CallSrc.HELPER, 0, hid)


def call_pseudo(target: int | str) -> Instruction:
    """A bpf-to-bpf call; ``target`` is a label or a slot offset relative to the next slot."""
    off, label = _jump_target(target)
    return Instruction(Class.JMP | JmpOp.CALL, 0, CallSrc.PSEUDO_CALL, 0, off, target=label)


def call_kfunc(btf_id: int) -> Instruction:
    """Call a kernel function by its BTF id."""
    return Instruction(Class.JMP | JmpOp.CALL, 0, CallSrc.KFUNC, 0, btf_id)


def exit_() -> Instruction:
    """``exit``: return R0."""
    return Instruction(Class.JMP | JmpOp.EXIT)


# --- disassembly ----------------------------------------------------------------------------------

_ALU_SYM = {
    AluOp.ADD: "+=",
    AluOp.SUB: "-=",
    AluOp.MUL: "*=",
    AluOp.DIV: "/=",
    AluOp.OR: "|=",
    AluOp.AND: "&=",
    AluOp.LSH: "<<=",
    AluOp.RSH: ">>=",
    AluOp.MOD: "%=",
    AluOp.XOR: "^=",
    AluOp.MOV: "=",
    AluOp.ARSH: "s>>=",
}
_JMP_SYM = {
    JmpOp.JEQ: "==",
    JmpOp.JGT: ">",
    JmpOp.JGE: ">=",
    JmpOp.JSET: "&",
    JmpOp.JNE: "!=",
    JmpOp.JSGT: "s>",
    JmpOp.JSGE: "s>=",
    JmpOp.JLT: "<",
    JmpOp.JLE: "<=",
    JmpOp.JSLT: "s<",
    JmpOp.JSLE: "s<=",
}
_SIZE_NAME = {Size.B: "u8", Size.H: "u16", Size.W: "u32", Size.DW: "u64"}
_ATOMIC_SYM = {AtomicOp.ADD: "+=", AtomicOp.OR: "|=", AtomicOp.AND: "&=", AtomicOp.XOR: "^="}
_ATOMIC_NAME = {AtomicOp.ADD: "add", AtomicOp.OR: "or", AtomicOp.AND: "and", AtomicOp.XOR: "xor"}


def _imm_text(v: int, hexa: bool = False) -> str:
    if hexa or v > 0xFFFF or v < -0xFFFF:
        return f"{v:#x}" if v >= 0 else f"-{-v:#x}"
    return str(v)


def _mem(size: Size, reg: int, off: int, signed: bool = False) -> str:
    name = _SIZE_NAME[size]
    if signed:
        name = "s" + name[1:]
    sign = "-" if off < 0 else "+"
    return f"*({name} *)(r{reg} {sign} {abs(off)})"


def _rel(off: int, target: str | None) -> str:
    text = f"{off:+d}"
    return f"{text} <{target}>" if target is not None else text


def _disasm_alu(insn: Instruction) -> str:
    w = "r" if insn.cls == Class.ALU64 else "w"
    op = insn.alu_op
    dst = f"{w}{insn.dst}"
    if op == AluOp.NEG:
        return f"{dst} = -{dst}"
    if op == AluOp.END:
        if insn.cls == Class.ALU64:
            return f"r{insn.dst} = bswap{insn.imm} r{insn.dst}"
        kind = "be" if insn.source == Source.X else "le"
        return f"r{insn.dst} = {kind}{insn.imm} r{insn.dst}"
    src = f"{w}{insn.src}" if insn.source == Source.X else None
    if op == AluOp.MOV and insn.source == Source.X and insn.off in (8, 16, 32):
        return f"{dst} = (s{insn.off}){src}"
    sym = _ALU_SYM.get(op)
    if sym is None:
        return f"invalid alu op {insn.op:#04x}"
    if op in (AluOp.DIV, AluOp.MOD) and insn.off == 1:
        sym = "s" + sym
    if src is None:
        hexa = op in (AluOp.AND, AluOp.OR, AluOp.XOR)
        return f"{dst} {sym} {_imm_text(insn.imm, hexa)}"
    return f"{dst} {sym} {src}"


def _disasm_jmp(insn: Instruction) -> str:
    op = insn.jmp_op
    if insn.cls == Class.JMP:
        if op == JmpOp.EXIT:
            return "exit"
        if op == JmpOp.CALL:
            if insn.src == CallSrc.PSEUDO_CALL:
                return f"call pc{_rel(insn.imm, insn.target)}"
            if insn.src == CallSrc.KFUNC:
                return f"call kfunc#{insn.imm}"
            name = helper_name(insn.imm)
            return f"call bpf_{name}#{insn.imm}" if name else f"call #{insn.imm}"
        if op == JmpOp.JA:
            return f"goto {_rel(insn.off, insn.target)}"
    elif op == JmpOp.JA:
        return f"gotol {_rel(insn.imm, insn.target)}"
    sym = _JMP_SYM.get(op)
    if sym is None:
        return f"invalid jump op {insn.op:#04x}"
    w = "r" if insn.cls == Class.JMP else "w"
    rhs = f"{w}{insn.src}" if insn.source == Source.X else _imm_text(insn.imm, op == JmpOp.JSET)
    return f"if {w}{insn.dst} {sym} {rhs} goto {_rel(insn.off, insn.target)}"


def _disasm_ld_imm64(insn: Instruction) -> str:
    lo, hi = insn.imm & 0xFFFFFFFF, insn.imm >> 32
    d = f"r{insn.dst}"
    src = insn.src
    if src == LdImm64Src.IMM:
        return f"{d} = {insn.imm:#x} ll"
    if src == LdImm64Src.MAP_FD:
        return f"{d} = map_fd({lo}) ll"
    if src == LdImm64Src.MAP_VALUE:
        return f"{d} = map_value({lo}) + {hi} ll"
    if src == LdImm64Src.BTF_ID:
        return f"{d} = btf_id({lo}) ll"
    if src == LdImm64Src.FUNC:
        return f"{d} = func(pc{_rel(_s32(lo), insn.target)}) ll"
    if src == LdImm64Src.MAP_IDX:
        return f"{d} = map_idx({lo}) ll"
    if src == LdImm64Src.MAP_IDX_VALUE:
        return f"{d} = map_idx_value({lo}) + {hi} ll"
    return f"{d} = {insn.imm:#x} ll (src {src})"


def _disasm_one(insn: Instruction) -> str:
    try:
        cls = insn.cls
        if cls in (Class.ALU, Class.ALU64):
            return _disasm_alu(insn)
        if cls in (Class.JMP, Class.JMP32):
            return _disasm_jmp(insn)
        if insn.is_ld_imm64:
            return _disasm_ld_imm64(insn)
        size, mode = insn.size, insn.mode
        if cls == Class.LD and mode == Mode.ABS:
            return f"r0 = *({_SIZE_NAME[size]} *)skb[{insn.imm}]"
        if cls == Class.LD and mode == Mode.IND:
            return f"r0 = *({_SIZE_NAME[size]} *)skb[r{insn.src} + {insn.imm}]"
        if cls == Class.LDX and mode in (Mode.MEM, Mode.MEMSX):
            return f"r{insn.dst} = {_mem(size, insn.src, insn.off, mode == Mode.MEMSX)}"
        if cls == Class.ST and mode == Mode.MEM:
            return f"{_mem(size, insn.dst, insn.off)} = {_imm_text(insn.imm)}"
        if cls == Class.STX and mode == Mode.MEM:
            return f"{_mem(size, insn.dst, insn.off)} = r{insn.src}"
        if cls == Class.STX and mode == Mode.ATOMIC:
            return _disasm_atomic(insn)
    except ValueError:
        pass
    return f"invalid insn {insn.op:#04x}"


def _disasm_atomic(insn: Instruction) -> str:
    w = "r" if insn.size == Size.DW else "w"
    loc = _mem(insn.size, insn.dst, insn.off)[1:]  # "(u64 *)(r1 + 0)"
    imm = insn.imm
    if imm == AtomicOp.XCHG:
        return f"{w}{insn.src} = xchg({loc}, {w}{insn.src})"
    if imm == AtomicOp.CMPXCHG:
        return f"{w}0 = cmpxchg({loc}, {w}0, {w}{insn.src})"
    base = AtomicOp(imm & ~AtomicOp.FETCH)
    if imm & AtomicOp.FETCH:
        return f"{w}{insn.src} = atomic_fetch_{_ATOMIC_NAME[base]}({loc}, {w}{insn.src})"
    return f"lock *{loc} {_ATOMIC_SYM[base]} {w}{insn.src}"


def disasm(insns: Sequence[Instruction]) -> str:
    """A listing: one instruction a line, prefixed by its slot number; labels on their own lines."""
    lines: list[str] = []
    for slot, insn in zip(slot_offsets(insns), insns, strict=False):
        if insn.label is not None:
            lines.append(f"{insn.label}:")
        lines.append(f"{slot:5d}: {insn}")
    return "\n".join(lines)
