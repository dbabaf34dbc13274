"""The translated filters in the real kernel agree with libpcap on every (expression, packet) pair.

Each corpus expression is compiled for Ethernet and raw IP; each translation is wrapped in a small SCHED_CLS
program that calls the body as a bpf-to-bpf subprogram (as the pwru program does) and is test-run over every
generated packet with BPF_PROG_TEST_RUN. The reference is libpcap's ``pcap_offline_filter`` on the same bytes;
return values must be equal, not only their truth.

* direct mode: the wrapper passes the packet pointers (after a 14-byte dummy prefix, so that packets shorter
  than an Ethernet header can be test-run too).
* probe mode: the wrapper launders the same addresses into plain scalars (copied through the stack with
  ``bpf_probe_read_kernel``), so the body runs exactly as in a tracing program: bounds checks on scalars,
  every load a ``bpf_probe_read_kernel`` of real kernel memory.
* every probe body is also loaded inside a KPROBE-type program (the verifier must accept it there).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pwru.ebpf import asm
from pwru.ebpf.asm import Instruction, Reg, Size
from pwru.ebpf.syscall import BPFError, Cmd, ProgLoadAttr, ProgType, bpf
from pwru.ebpf.syscall import TestRunAttr as RunAttr
from pwru.filter import CompiledFilter, FilterError, compile_filter
from pwru.filter.pcap import PcapProgram

pytestmark = pytest.mark.root

CORPUS = Path(__file__).resolve().parents[1] / "data" / "filter" / "expressions.txt"
PREFIX = bytes(12) + b"\x88\xb5"  # dummy Ethernet header in front of every test packet
R0, R1, R2, R3, R6, R10 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R6, Reg.R10


def corpus() -> list[str]:
    lines = CORPUS.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


# --- packets --------------------------------------------------------------------------------------

V4 = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "192.168.1.100", "1.2.3.4", "1.2.3.5", "8.8.8.8", "127.0.0.1"]
V4 += ["255.255.255.255", "224.0.0.1", "10.0.1.7"]
V6 = ["::1", "fe80::1", "2001:db8::1", "2001:db8::2", "ff02::1", "2001:db8:1::5"]
MACS = [
    "00:11:22:33:44:55",
    "66:77:88:99:aa:bb",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
    "33:33:00:00:00:01",
]
PORTS = [22, 53, 80, 443, 1024, 6000, 6005, 8080, 8500, 65535, 0, 1500, 123]


def mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def ip4(s: str) -> bytes:
    return ipaddress.IPv4Address(s).packed


def ip6(s: str) -> bytes:
    return ipaddress.IPv6Address(s).packed


class PacketGen:
    """Random but reproducible packets built with struct: L2 frames and the raw-IP packets inside them."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def payload(self) -> bytes:
        n = self.r.choice([0, 0, 1, 4, 10, 40, 100, 300, 1200])
        return bytes(self.r.getrandbits(8) for _ in range(n))

    def tcp(self) -> bytes:
        r = self.r
        opts = bytes(r.choice([0, 4, 12, 20]))
        doff = (20 + len(opts)) // 4
        flags = r.choice([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x01, 0x29, 0xC2, 0x00, r.getrandbits(8)])
        hdr = struct.pack(
            "!HHIIBBHHH",
            r.choice(PORTS),
            r.choice(PORTS),
            r.getrandbits(32) if r.random() < 0.7 else 0,
            r.getrandbits(32) if r.random() < 0.7 else 0,
            doff << 4,
            flags,
            r.getrandbits(16),
            0,
            r.choice([0, 5, 1000]),
        )
        return hdr + opts + self.payload()

    def udp(self) -> bytes:
        data = self.payload()
        if self.r.random() < 0.2:
            data = b"\x12\x34" + data
        return struct.pack("!HHHH", self.r.choice(PORTS), self.r.choice(PORTS), 8 + len(data), 0) + data

    def icmp(self, v6: bool) -> bytes:
        types = [128, 129, 135, 136, 1, 2] if v6 else [8, 0, 3, 11, 5]
        return struct.pack("!BBHI", self.r.choice(types), self.r.choice([0, 0, 1, 3]), 0, 0) + self.payload()

    def l4(self, v6: bool) -> tuple[int, bytes]:
        kind = self.r.choice(["tcp", "tcp", "udp", "udp", "icmp", "other"])
        if kind == "tcp":
            return 6, self.tcp()
        if kind == "udp":
            return 17, self.udp()
        if kind == "icmp":
            return (58 if v6 else 1), self.icmp(v6)
        return self.r.choice([2, 47, 132, 89]), self.payload()

    def ipv4(self) -> bytes:
        r = self.r
        proto, body = self.l4(False)
        opts = bytes(4 * r.choice([0, 0, 0, 1, 3]))
        ihl = 5 + len(opts) // 4
        frag = r.choice([0, 0, 0, 0x4000, 0x2000, 0x2000 | 185, 185, 0x1FFF])
        total = 4 * ihl + len(body)
        if r.random() < 0.05:
            total = r.getrandbits(16)
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            r.choice([0, 0, 0x10, 0xB8, r.getrandbits(8)]),
            total,
            r.getrandbits(16),
            frag,
            r.choice([1, 2, 63, 64, 65, 128, 255]),
            proto,
            0,
            ip4(r.choice(V4)),
            ip4(r.choice(V4)),
        )
        return hdr + opts + body

    def ipv6(self) -> bytes:
        r = self.r
        nh, body = self.l4(True)
        if r.random() < 0.15:  # fragment header
            offset = r.choice([0, 0, 8, 185])
            body = struct.pack("!BBHI", nh, 0, (offset << 3) | r.choice([0, 1]), r.getrandbits(32)) + body
            nh = 44
        elif r.random() < 0.1:  # hop-by-hop options
            body = struct.pack("!BB6s", nh, 0, bytes(6)) + body
            nh = 0
        tc = r.choice([0, 0x12, 0x3F, r.getrandbits(8)])
        first = (6 << 28) | (tc << 20) | r.getrandbits(20)
        hdr = struct.pack(
            "!IHBB16s16s",
            first,
            len(body),
            nh,
            r.choice([1, 64, 255]),
            ip6(r.choice(V6)),
            ip6(r.choice(V6)),
        )
        return hdr + body

    def arp(self) -> bytes:
        r = self.r
        return struct.pack(
            "!HHBBH6s4s6s4s",
            1,
            0x0800,
            6,
            4,
            r.choice([1, 2, 3]),
            mac(r.choice(MACS)),
            ip4(r.choice(V4)),
            mac(r.choice(MACS)),
            ip4(r.choice(V4)),
        )

    def frame(self) -> tuple[bytes, bytes | None]:
        """An Ethernet frame and, when it carries IP directly, the raw-IP packet inside it."""
        r = self.r
        kind = r.choice(["v4", "v4", "v4", "v6", "v6", "arp", "vlan", "other"])
        inner: bytes | None = None
        tags = b""
        if kind == "vlan":
            for _ in range(r.choice([1, 1, 2])):
                tags += struct.pack("!HH", 0x8100, (r.choice([0, 3]) << 13) | r.choice([10, 20, 100, 4095]))
            kind = r.choice(["v4", "v6", "arp"])
        if kind == "v4":
            etype, body = 0x0800, self.ipv4()
        elif kind == "v6":
            etype, body = 0x86DD, self.ipv6()
        elif kind == "arp":
            etype, body = 0x0806, self.arp()
        else:
            etype, body = r.choice([0x8035, 0x88CC, 0x0801, 0x1234]), self.payload()
        if not tags and kind in ("v4", "v6"):
            inner = body
        head = mac(r.choice(MACS)) + mac(r.choice(MACS))
        return head + tags + struct.pack("!H", etype) + body, inner

    def truncate(self, pkt: bytes) -> bytes:
        return pkt[: self.r.randrange(0, len(pkt) + 1)]

    def packets(self, n: int) -> tuple[list[bytes], list[bytes]]:
        l2: list[bytes] = []
        l3: list[bytes] = []
        while len(l2) < n:
            frame, inner = self.frame()
            l2.append(self.truncate(frame) if self.r.random() < 0.12 else frame)
            if inner is not None:
                l3.append(self.truncate(inner) if self.r.random() < 0.12 else inner)
        return l2, l3


# --- programs -------------------------------------------------------------------------------------

LOG = ctypes.create_string_buffer(1 << 20)


def load(insns: list[Instruction], prog_type: ProgType) -> int:
    code = asm.assemble(insns)
    buf = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(buf),
        license=ctypes.addressof(lic),
        log_level=1,
        log_size=len(LOG),
        log_buf=ctypes.addressof(LOG),
    )
    try:
        return bpf(Cmd.PROG_LOAD, attr, LOG)
    except BPFError as e:
        attr.log_level = 0
        raise AssertionError(f"verifier refused:\n{asm.disasm(insns)}\n{e.log_tail(30)}") from e


def direct_wrapper(body: list[Instruction]) -> list[Instruction]:
    """SCHED_CLS: filter(skb->data + 14, skb->data_end)."""
    return [
        asm.ldx(Size.W, R2, R1, 80),
        asm.ldx(Size.W, R1, R1, 76),
        asm.alu_imm(asm.AluOp.ADD, R1, len(PREFIX)),
        asm.call_pseudo("filter"),
        asm.exit_(),
        body[0].with_label("filter"),
        *body[1:],
    ]


def probe_wrapper(body: list[Instruction]) -> list[Instruction]:
    """SCHED_CLS: the same addresses as scalars (copied through the stack by the helper), as a tracing
    program would have them."""
    return [
        asm.ldx(Size.W, R2, R1, 76),
        asm.ldx(Size.W, R3, R1, 80),
        asm.stx(Size.DW, R10, -8, R2),
        asm.stx(Size.DW, R10, -16, R3),
        asm.mov_reg(R1, R10),
        asm.alu_imm(asm.AluOp.ADD, R1, -32),
        asm.mov_imm(R2, 16),
        asm.mov_reg(R3, R10),
        asm.alu_imm(asm.AluOp.ADD, R3, -16),
        asm.call("probe_read_kernel"),
        asm.ldx(Size.DW, R1, R10, -24),
        asm.alu_imm(asm.AluOp.ADD, R1, len(PREFIX)),
        asm.ldx(Size.DW, R2, R10, -32),
        asm.call_pseudo("filter"),
        asm.exit_(),
        body[0].with_label("filter"),
        *body[1:],
    ]


def kprobe_wrapper(body: list[Instruction]) -> list[Instruction]:
    """KPROBE: filter((void *)regs->di, (void *)regs->si) -- load only, to run the verifier."""
    return [
        asm.ldx(Size.DW, R2, R1, 104),
        asm.ldx(Size.DW, R1, R1, 112),
        asm.call_pseudo("filter"),
        asm.exit_(),
        body[0].with_label("filter"),
        *body[1:],
    ]


class Runner:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.attr = RunAttr(prog_fd=fd, repeat=1)

    def __call__(self, packet: bytes) -> int:
        data = PREFIX + packet
        buf = ctypes.create_string_buffer(data, len(data))
        self.attr.data_in = ctypes.addressof(buf)
        self.attr.data_size_in = len(data)
        self.attr.data_out = 0
        self.attr.data_size_out = 0
        bpf(Cmd.PROG_TEST_RUN, self.attr)
        return int(self.attr.retval)


class Stats:
    pairs = 0
    disagreements: list[str] = []
    classic = {"l2": 0, "l3": 0}
    ebpf = {"direct": 0, "probe": 0}
    classic_total = 0


def compare(f: CompiledFilter, packets: dict[str, list[bytes]], stats: type[Stats]) -> None:
    for link in ("l2", "l3"):
        prog = f.classic(link)  # type: ignore[arg-type]
        if prog is None:
            continue
        ref = PcapProgram(prog)
        want = [ref.run(p) for p in packets[link]]
        stats.classic_total += len(prog)
        for mode, wrap in (("direct", direct_wrapper), ("probe", probe_wrapper)):
            body = f.to_ebpf(link, mode)  # type: ignore[arg-type]
            stats.ebpf[mode] += asm.slot_count(body)
            fd = load(wrap(body), ProgType.SCHED_CLS)
            try:
                run = Runner(fd)
                for pkt, exp in zip(packets[link], want, strict=True):
                    got = run(pkt)
                    stats.pairs += 1
                    if got != exp:
                        stats.disagreements.append(
                            f"{f.expr!r} {link} {mode}: {pkt.hex()} pcap={exp} ebpf={got}"
                        )
            finally:
                os.close(fd)
            if mode == "probe":
                os.close(load(kprobe_wrapper(body), ProgType.KPROBE))


@pytest.fixture(scope="module")
def packets() -> dict[str, list[bytes]]:
    l2, l3 = PacketGen(20240611).packets(600)
    return {"l2": l2, "l3": l3}


def test_packets_cover_what_the_corpus_needs(packets: dict[str, list[bytes]]) -> None:
    assert len(packets["l2"]) >= 500 and len(packets["l3"]) >= 300
    assert any(len(p) < 14 for p in packets["l2"])
    ref = compile_filter("vlan and tcp")
    assert ref is not None and ref.l2 is not None
    assert any(PcapProgram(ref.l2).run(p) for p in packets["l2"])


def test_corpus_agrees_with_libpcap(packets: dict[str, list[bytes]]) -> None:
    exprs = corpus()
    assert len(exprs) >= 200
    stats = Stats
    for expr in exprs:
        f = compile_filter(expr)
        assert f is not None
        compare(f, packets, stats)
    print(
        f"\nfilter corpus: {len(exprs)} expressions, {stats.pairs} pairs compared, "
        f"{len(stats.disagreements)} disagreements; eBPF/classic slots: "
        f"direct {stats.ebpf['direct'] / stats.classic_total:.2f}, "
        f"probe {stats.ebpf['probe'] / stats.classic_total:.2f} (classic total {stats.classic_total})"
    )
    assert not stats.disagreements, "\n".join(stats.disagreements[:20])


def test_bad_expression_does_not_reach_the_kernel() -> None:
    with pytest.raises(FilterError, match='invalid pcap filter "tcp port": '):
        compile_filter("tcp port")


# --- property-based -------------------------------------------------------------------------------

_atoms = st.sampled_from(
    [
        "tcp",
        "udp",
        "icmp",
        "ip",
        "ip6",
        "arp",
        "vlan",
        "host 10.0.0.1",
        "src net 192.168.0.0/16",
        "dst host 2001:db8::1",
        "port 80",
        "portrange 6000-6010",
        "tcp[tcpflags] & tcp-syn != 0",
        "len > 100",
        "greater 64",
        "ip[8] < 64",
        "ip6[6] = 17",
    ]
)
_fields = st.sampled_from(
    ["ip[8]", "ip[0]", "ip[2:2]", "tcp[13]", "udp[4:2]", "len", "ip6[7]", "ether[12:2]"]
)
_ops = st.sampled_from(["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"])
_rels = st.sampled_from(["=", "!=", "<", ">", "<=", ">="])


@st.composite
def _arith(draw: st.DrawFn) -> str:
    a, b = draw(_fields), draw(_fields)
    k = draw(st.integers(0, 300))
    return f"({a} {draw(_ops)} {b}) {draw(_rels)} {k}"


_leaf = st.one_of(_atoms, _arith())
_exprs = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
        st.builds(lambda a: f"not ({a})", inner),
    ),
    max_leaves=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(expr=_exprs, seed=st.integers(0, 2**32 - 1))
def test_random_expressions_agree_with_libpcap(expr: str, seed: int) -> None:
    try:
        f = compile_filter(expr)
    except FilterError:
        return  # e.g. "expression rejects all packets", or a constant division by zero
    assert f is not None
    l2, l3 = PacketGen(seed).packets(40)
    stats = type("S", (Stats,), {"pairs": 0, "disagreements": [], "ebpf": {"direct": 0, "probe": 0}})
    compare(f, {"l2": l2, "l3": l3}, stats)
    assert not stats.disagreements, "\n".join(stats.disagreements[:10])
