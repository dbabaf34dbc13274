"""Linux's "ancillary" classic loads: ``ld [SKF_AD_OFF + n]`` reads skb metadata, not packet bytes.

libpcap emits them on Linux for ``inbound``/``outbound`` (packet type), ``ifindex N`` (the device) and, for a
live capture that asks for it, ``vlan`` (VLAN tag and its presence); the kernel's socket filters interpret
them (``SKF_AD_*`` in include/uapi/linux/filter.h, the load width is ignored). ``pcap_offline_filter`` cannot
know any of it and rejects such loads as out of bounds; the translator gives them their kernel meaning:

* probe mode reads ``struct sk_buff`` (the body's third argument) with ``bpf_probe_read_kernel``, at offsets
  taken from the running kernel's BTF (:class:`SkbLayout`);
* direct mode reads the ``struct __sk_buff`` context of a tc or socket-filter program (the third argument),
  whose layout is UAPI.

:data:`AVAILABLE` says which load exists in which mode; any other is refused before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import enum

from pwru.ebpf.btf import BTFError, Spec
from pwru.filter import cbpf
from pwru.filter.cbpf import CInsn, CProgram

__all__ = [
    "AVAILABLE",
    "PACKET_HOST",
    "PACKET_OUTGOING",
    "SKB_CTX",
    "SKF_AD_OFF",
    "Anc",
    "Bits",
    "SkbLayout",
    "VlanPresence",
    "ancillary",
    "needs_skb",
    "refusal",
    "used",
]

SKF_AD_OFF = 0xFFFFF000  # -0x1000 as the unsigned k of a classic load
PACKET_HOST = 0
PACKET_OUTGOING = 4
SKB_HDR_UNSET = 0xFFFF  # skb->mac_header before it is set


class Anc(enum.IntEnum):
    """``SKF_AD_*``: the offset after SKF_AD_OFF."""

    PROTOCOL = 0
    PKTTYPE = 4
    IFINDEX = 8
    NLATTR = 12
    NLATTR_NEST = 16
    MARK = 20
    QUEUE = 24
    HATYPE = 28
    RXHASH = 32
    CPU = 36
    ALU_XOR_X = 40
    VLAN_TAG = 44
    VLAN_TAG_PRESENT = 48
    PAY_OFFSET = 52
    RANDOM = 56
    VLAN_TPID = 60

    @property
    def what(self) -> str:
        return _WHAT[self]


_WHAT = {
    Anc.PROTOCOL: "the skb's protocol",
    Anc.PKTTYPE: "the packet type (inbound/outbound)",
    Anc.IFINDEX: "the device's ifindex (ifindex N)",
    Anc.NLATTR: "a netlink attribute search",
    Anc.NLATTR_NEST: "a nested netlink attribute search",
    Anc.MARK: "the skb mark",
    Anc.QUEUE: "the queue mapping",
    Anc.HATYPE: "the device's hardware type",
    Anc.RXHASH: "the skb hash",
    Anc.CPU: "the CPU number",
    Anc.ALU_XOR_X: "A ^= X",
    Anc.VLAN_TAG: "the VLAN tag",
    Anc.VLAN_TAG_PRESENT: "whether a VLAN tag is present",
    Anc.PAY_OFFSET: "the payload offset",
    Anc.RANDOM: "a random number",
    Anc.VLAN_TPID: "the VLAN protocol (TPID)",
}

_EVERYWHERE = frozenset(Anc) - {Anc.NLATTR, Anc.NLATTR_NEST, Anc.PAY_OFFSET}
#: The loads each emission mode can give. Netlink attribute searches and the payload offset (a flow dissection)
#: have no equivalent outside the kernel's own classic interpreter; ``__sk_buff`` has no hardware type.
AVAILABLE: dict[str, frozenset[Anc]] = {"probe": _EVERYWHERE, "direct": _EVERYWHERE - {Anc.HATYPE}}

#: Offsets in ``struct __sk_buff`` (include/uapi/linux/bpf.h) of what direct mode reads, each a __u32.
SKB_CTX = {
    "pkt_type": 4,
    "mark": 8,
    "queue_mapping": 12,
    "protocol": 16,
    "vlan_present": 20,
    "vlan_tci": 24,
    "vlan_proto": 28,
    "ifindex": 40,
    "hash": 68,
}


def ancillary(insn: CInsn) -> Anc | None:
    """The ancillary load ``insn`` is, or None (the kernel decides on ``ld``/``ldh``/``ldb`` absolute loads
    whose k is exactly SKF_AD_OFF + SKF_AD_*, whatever their width)."""
    if insn.cls != cbpf.Class.LD or insn.mode != cbpf.Mode.ABS or insn.size is None:
        return None
    if not SKF_AD_OFF <= insn.k < SKF_AD_OFF + 64:
        return None
    n = insn.k - SKF_AD_OFF
    return Anc(n) if n in Anc._value2member_map_ else None


def used(prog: CProgram) -> set[Anc]:
    """The ancillary loads ``prog`` makes."""
    return {a for a in map(ancillary, prog.insns) if a is not None}


def refusal(prog: CProgram, mode: str) -> str | None:
    """Why ``prog`` cannot be translated in ``mode`` because of an ancillary load, or None."""
    missing = sorted(used(prog) - AVAILABLE[mode])
    if not missing:
        return None
    where = "in a tracing program" if mode == "probe" else "from a __sk_buff context"
    names = ", ".join(f"{a.what} (SKF_AD_{a.name})" for a in missing)
    return f"the filter reads {names}, which pwru cannot read {where}"


def needs_skb(prog: CProgram) -> bool:
    """Whether probe mode needs :class:`SkbLayout` for ``prog`` (CPU, RANDOM and ALU_XOR_X read no field)."""
    return bool(used(prog) - {Anc.CPU, Anc.RANDOM, Anc.ALU_XOR_X})


class VlanPresence(enum.Enum):
    """How a kernel says an skb has a VLAN tag: ``vlan_all != 0`` (6.1+), a ``vlan_present`` bit (4.20-6.0),
    or the CFI bit 0x1000 of ``vlan_tci`` (before 4.20, where the tag is ``vlan_tci & ~0x1000``)."""

    VLAN_ALL = "vlan_all"
    VLAN_PRESENT_BIT = "vlan_present"
    TCI_CFI = "vlan_tci"


@dataclasses.dataclass(frozen=True)
class Bits:
    """A (possibly bit-) field: its byte offset, and for a bitfield the shift and mask within that byte."""

    byte: int
    shift: int = 0
    mask: int = 0  # 0: not a bitfield


@dataclasses.dataclass(frozen=True)
class SkbLayout:
    """Where the fields probe mode reads sit in this kernel's ``struct sk_buff`` and ``struct net_device``
    (byte offsets; ``pkt_type`` and ``vlan_present`` are bitfields)."""

    head: int
    data: int
    mac_header: int
    dev: int
    pkt_type: Bits
    protocol: int
    mark: int
    queue_mapping: int
    hash: int
    vlan_tci: int
    vlan_proto: int
    vlan: VlanPresence
    vlan_present: Bits
    dev_ifindex: int
    dev_type: int

    @classmethod
    def from_btf(cls, spec: Spec) -> SkbLayout:
        """The layout from kernel BTF; raises :class:`BTFError` when a field is missing."""

        def off(struct: str, name: str) -> int:
            return spec.member_offset(struct, name)

        def bits(name: str) -> Bits:
            bit, size = spec.bitfield(spec.member("sk_buff", name))
            if size == 0:
                return Bits(bit // 8)
            if bit // 8 != (bit + size - 1) // 8:
                raise BTFError(f"sk_buff.{name} spans two bytes")
            return Bits(bit // 8, bit % 8, (1 << size) - 1)  # little-endian bit numbering

        vlan, present = VlanPresence.TCI_CFI, Bits(off("sk_buff", "vlan_tci"))
        for kind in (VlanPresence.VLAN_ALL, VlanPresence.VLAN_PRESENT_BIT):
            try:
                present = bits(kind.value)
            except BTFError:
                continue
            vlan = kind
            break
        return cls(
            head=off("sk_buff", "head"),
            data=off("sk_buff", "data"),
            mac_header=off("sk_buff", "mac_header"),
            dev=off("sk_buff", "dev"),
            pkt_type=bits("pkt_type"),
            protocol=off("sk_buff", "protocol"),
            mark=off("sk_buff", "mark"),
            queue_mapping=off("sk_buff", "queue_mapping"),
            hash=off("sk_buff", "hash"),
            vlan_tci=off("sk_buff", "vlan_tci"),
            vlan_proto=off("sk_buff", "vlan_proto"),
            vlan=vlan,
            vlan_present=present,
            dev_ifindex=off("net_device", "ifindex"),
            dev_type=off("net_device", "type"),
        )
