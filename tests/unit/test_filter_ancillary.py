"""Linux ancillary loads in the translation, run by the test eBPF machine on synthetic skbs.

libpcap's offline filter has no skb, so the reference is libpcap on the same program with each ancillary load
replaced by an immediate load of the value the skb holds: the rest of the program is still libpcap's to judge.
The real kernel's skbs are in tests/e2e/test_filter_ancillary.py (probe mode) and
tests/kernel/test_filter_fuzz.py (direct mode, a tc context)."""

from __future__ import annotations

import struct

import pytest

from pwru.filter import FilterError, compile_filter
from pwru.filter.ancillary import (
    PACKET_OUTGOING,
    SKB_CTX,
    SKF_AD_OFF,
    Anc,
    Bits,
    SkbLayout,
    VlanPresence,
    ancillary,
    refusal,
)
from pwru.filter.cbpf import CInsn, CProgram
from pwru.filter.pcap import PcapProgram
from pwru.filter.translate import TranslationError, translate
from tests.ebpf_vm import PACKET_BASE, SKB_BASE, Program, run_on_packet
from tests.filter_packets import PacketGen

DEV = 2048  # where the synthetic net_device sits in the synthetic skb blob


def layout(vlan: VlanPresence = VlanPresence.VLAN_ALL) -> SkbLayout:
    present = {VlanPresence.VLAN_ALL: Bits(40), VlanPresence.VLAN_PRESENT_BIT: Bits(7, 5, 1)}
    return SkbLayout(
        head=200, data=208, mac_header=60, dev=16, pkt_type=Bits(128, 1, 7), protocol=180, mark=164,
        queue_mapping=124, hash=148, vlan_tci=42, vlan_proto=40, vlan=vlan,
        vlan_present=present.get(vlan, Bits(42)), dev_ifindex=224, dev_type=536,
    )  # fmt: skip


class Skb:
    """The metadata of one synthetic skb, and its images for probe mode (struct sk_buff) and direct mode
    (struct __sk_buff)."""

    def __init__(self, *, pkt_type: int = 0, ifindex: int | None = 7, hatype: int = 1, protocol: int = 0x0800,
                 mark: int = 0, queue: int = 0, rxhash: int = 0, tci: int = 0, tpid: int = 0,
                 present: bool = False, outgoing: bool = False, mac_set: bool = True) -> None:  # fmt: skip
        self.pkt_type, self.ifindex, self.hatype, self.protocol = pkt_type, ifindex, hatype, protocol
        self.mark, self.queue, self.rxhash, self.tci, self.tpid = mark, queue, rxhash, tci, tpid
        self.present, self.outgoing, self.mac_set = present, outgoing, mac_set

    def value(self, anc: Anc, mode: str, vlan: VlanPresence = VlanPresence.VLAN_ALL) -> int:
        """What the kernel (direct) or pwru (probe: the direction rule for the packet type) reads."""
        if anc == Anc.PKTTYPE:
            if mode == "probe" and self.pkt_type == 0 and (self.outgoing or not self.mac_set):
                return PACKET_OUTGOING
            return self.pkt_type
        if anc == Anc.IFINDEX:
            return self.ifindex or 0
        if anc == Anc.VLAN_TAG:
            return self.tci & 0xEFFF if vlan == VlanPresence.TCI_CFI else self.tci
        if anc == Anc.VLAN_TAG_PRESENT:
            if vlan == VlanPresence.TCI_CFI:
                return (self.tci >> 12) & 1
            return int(self.present) if vlan == VlanPresence.VLAN_PRESENT_BIT else int(bool(self.tci or self.tpid))
        return {
            Anc.HATYPE: self.hatype if self.ifindex else 0, Anc.PROTOCOL: self.protocol, Anc.MARK: self.mark,
            Anc.QUEUE: self.queue, Anc.RXHASH: self.rxhash, Anc.VLAN_TPID: self.tpid, Anc.CPU: 3,
            Anc.RANDOM: 0x12345678,
        }[anc]  # fmt: skip

    def probe_image(self, lay: SkbLayout) -> bytes:
        b = bytearray(4096)
        b[lay.pkt_type.byte] |= self.pkt_type << lay.pkt_type.shift
        if self.ifindex is not None:
            struct.pack_into("<Q", b, lay.dev, SKB_BASE + DEV)
            struct.pack_into("<I", b, DEV + lay.dev_ifindex, self.ifindex)
            struct.pack_into("<H", b, DEV + lay.dev_type, self.hatype)
        struct.pack_into(">H", b, lay.protocol, self.protocol)
        struct.pack_into("<I", b, lay.mark, self.mark)
        struct.pack_into("<H", b, lay.queue_mapping, self.queue)
        struct.pack_into("<I", b, lay.hash, self.rxhash)
        struct.pack_into("<H", b, lay.vlan_tci, self.tci)
        struct.pack_into(">H", b, lay.vlan_proto, self.tpid)
        if lay.vlan == VlanPresence.VLAN_PRESENT_BIT:
            b[lay.vlan_present.byte] |= int(self.present) << lay.vlan_present.shift
        head = PACKET_BASE - 64
        struct.pack_into("<Q", b, lay.head, head)
        struct.pack_into("<H", b, lay.mac_header, 64 if self.mac_set else 0xFFFF)
        struct.pack_into("<Q", b, lay.data, PACKET_BASE if self.outgoing else PACKET_BASE + 14)
        return bytes(b)

    def ctx_image(self) -> bytes:
        b = bytearray(192)
        for name, v in (("pkt_type", self.pkt_type), ("mark", self.mark), ("queue_mapping", self.queue),
                        ("vlan_present", int(self.present)), ("vlan_tci", self.tci), ("ifindex", self.ifindex or 0),
                        ("hash", self.rxhash)):  # fmt: skip
            struct.pack_into("<I", b, SKB_CTX[name], v)
        struct.pack_into(">H", b, SKB_CTX["protocol"], self.protocol)  # __be16 in the low half of a __u32
        struct.pack_into(">H", b, SKB_CTX["vlan_proto"], self.tpid)
        return bytes(b)

SKBS = [
    Skb(),
    Skb(outgoing=True),
    Skb(mac_set=False, ifindex=None),
    Skb(pkt_type=1, ifindex=3, mark=0xFFFFFFFF, queue=5, rxhash=0xDEADBEEF),
    Skb(pkt_type=PACKET_OUTGOING, outgoing=True, ifindex=4301, protocol=0x86DD),
    Skb(pkt_type=3, tci=0x2064, tpid=0x8100, present=True, hatype=772),
    Skb(tci=0x1005, tpid=0x88A8, present=True),
]


def substituted(prog: CProgram, skb: Skb, mode: str, vlan: VlanPresence = VlanPresence.VLAN_ALL) -> CProgram:
    """``prog`` with every ancillary load replaced by ``ld #value``, for libpcap to run."""
    out = []
    for insn in prog.insns:
        anc = ancillary(insn)
        out.append(CInsn(0x00, 0, 0, skb.value(anc, mode, vlan)) if anc is not None else insn)
    return CProgram(tuple(out))


def verdicts(prog: CProgram, mode: str, lay: SkbLayout, packets: list[bytes]) -> None:
    vm = Program(translate(prog, mode, skb=lay))  # type: ignore[arg-type]
    for skb in SKBS:
        ref = PcapProgram(substituted(prog, skb, mode, lay.vlan))
        image = skb.probe_image(lay) if mode == "probe" else skb.ctx_image()
        for pkt in packets:
            assert run_on_packet(vm, pkt, image, cpu=3) == ref.run(pkt), (prog.dump(), vars(skb), pkt.hex())


@pytest.mark.parametrize("mode", ["probe", "direct"])
@pytest.mark.parametrize(
    "expr",
    ["inbound", "outbound", "ifindex 7", "ifindex 4301 and tcp", "not ifindex 3 or inbound and udp port 53",
     "outbound and (ip or ip6) and len > 60"],
)  # fmt: skip
def test_libpcap_filters_with_ancillary_loads(expr: str, mode: str) -> None:
    f = compile_filter(expr)
    assert f is not None and f.needs_skb
    l2, l3 = PacketGen(7).packets(40)
    for link, packets in (("l2", l2), ("l3", l3)):
        prog = f.classic(link)  # type: ignore[arg-type]
        assert prog is not None and any(ancillary(i) for i in prog.insns)
        verdicts(prog, mode, layout(), packets)


@pytest.mark.parametrize("vlan", list(VlanPresence))
@pytest.mark.parametrize("anc", [a for a in Anc if a not in (Anc.NLATTR, Anc.NLATTR_NEST, Anc.PAY_OFFSET)])
@pytest.mark.parametrize("size", [0x00, 0x08, 0x10])  # ld, ldh, ldb: the kernel ignores the width
def test_each_ancillary_load_reads_its_value(anc: Anc, size: int, vlan: VlanPresence) -> None:
    # ldx #5; ld [SKF_AD_OFF + n]; ret a  (A ^= X for ALU_XOR_X, with A = 0x30 first)
    prog = CProgram((CInsn(0x01, 0, 0, 5), CInsn(0x00, 0, 0, 0x30), CInsn(0x20 | size, 0, 0, SKF_AD_OFF + anc),
                     CInsn(0x16)))  # fmt: skip
    for mode in ("probe", "direct"):
        if anc == Anc.HATYPE and mode == "direct":
            continue
        vm = Program(translate(prog, mode, skb=layout(vlan)))  # type: ignore[arg-type]
        for skb in SKBS:
            seen = vlan if mode == "probe" else VlanPresence.VLAN_PRESENT_BIT  # __sk_buff: tag and flag apart
            want = 0x30 ^ 5 if anc == Anc.ALU_XOR_X else skb.value(anc, mode, seen)
            image = skb.probe_image(layout(vlan)) if mode == "probe" else skb.ctx_image()
            assert run_on_packet(vm, b"\x00" * 20, image, cpu=3) == want, (anc, mode, vars(skb))


def test_what_a_mode_cannot_read_is_refused_before_loading() -> None:
    hatype = CProgram((CInsn(0x28, 0, 0, SKF_AD_OFF + Anc.HATYPE), CInsn(0x16)))
    assert translate(hatype, "probe", skb=layout())
    with pytest.raises(TranslationError, match=r"hardware type \(SKF_AD_HATYPE\).*__sk_buff"):
        translate(hatype, "direct")
    nlattr = CProgram((CInsn(0x20, 0, 0, SKF_AD_OFF + Anc.NLATTR), CInsn(0x16)))
    assert refusal(nlattr, "probe") is not None
    with pytest.raises(TranslationError, match="netlink attribute search"):
        translate(nlattr, "probe", skb=layout())
    with pytest.raises(TranslationError, match="struct sk_buff layout is unknown"):
        translate(compile_filter("inbound").l2, "probe")  # type: ignore[union-attr, arg-type]
    # CPU and RANDOM read no skb field: no layout needed
    assert translate(CProgram((CInsn(0x20, 0, 0, SKF_AD_OFF + Anc.CPU), CInsn(0x16))), "probe")
    # a k that is not exactly SKF_AD_OFF + SKF_AD_* stays an (out of bounds) packet load
    assert ancillary(CInsn(0x20, 0, 0, SKF_AD_OFF + 2)) is None and ancillary(CInsn(0x40, 0, 0, SKF_AD_OFF)) is None


def test_layout_from_the_running_kernel() -> None:
    from pwru.ebpf.btf import kernel_btf

    try:
        spec = kernel_btf()
    except OSError:
        pytest.skip("no kernel BTF")
    lay = SkbLayout.from_btf(spec)
    assert lay.pkt_type.mask == 7 and lay.dev_ifindex > 0 and lay.protocol > 0
    assert lay.vlan in (VlanPresence.VLAN_ALL, VlanPresence.VLAN_PRESENT_BIT)


def test_offline_libpcap_knows_no_ancillary_value() -> None:
    # Why the reference above substitutes: libpcap offline rejects every ancillary load as out of bounds.
    f = compile_filter("inbound")
    assert f is not None and f.l2 is not None
    assert PcapProgram(f.l2).run(bytes(64)) == 0
    with pytest.raises(FilterError):
        compile_filter("inbound and")
