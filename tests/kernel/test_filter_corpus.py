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
import os
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
from tests.ebpf_vm import Program, run_on_packet
from tests.filter_packets import PacketGen
from tests.filter_reference import uninitialized_scratch_read

pytestmark = pytest.mark.root

CORPUS = Path(__file__).resolve().parents[1] / "data" / "filter" / "expressions.txt"
REGRESSIONS = CORPUS.with_name("regressions.txt")
PREFIX = bytes(12) + b"\x88\xb5"  # dummy Ethernet header in front of every test packet
R0, R1, R2, R3, R6, R10 = Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R6, Reg.R10


def corpus() -> list[str]:
    """The corpus, and the fuzzer's regression cases after it."""
    lines = CORPUS.read_text().splitlines() + REGRESSIONS.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


# --- programs -------------------------------------------------------------------------------------

LOG = ctypes.create_string_buffer(1 << 20)


def load(insns: list[Instruction], prog_type: ProgType) -> int:
    code = asm.assemble(insns)
    small = len(code) < 8 * 8192  # a big program's log overflows the buffer (ENOSPC): load it without
    buf = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ProgLoadAttr(
        prog_type=prog_type,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(buf),
        license=ctypes.addressof(lic),
        log_level=int(small),
        log_size=len(LOG) if small else 0,
        log_buf=ctypes.addressof(LOG) if small else 0,
    )
    try:
        return bpf(Cmd.PROG_LOAD, attr, LOG)
    except BPFError as e:
        attr.log_level = 0
        raise AssertionError(f"verifier refused:\n{asm.disasm(insns)}\n{e.log_tail(30)}") from e


def direct_wrapper(body: list[Instruction]) -> list[Instruction]:
    """SCHED_CLS: filter(skb->data + 14, skb->data_end, skb), the context (a ``__sk_buff``) last."""
    return [
        asm.mov_reg(R3, R1),
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
        asm.mov_imm(R3, 0),  # no struct sk_buff here: bodies with ancillary loads are checked elsewhere
        asm.call_pseudo("filter"),
        asm.exit_(),
        body[0].with_label("filter"),
        *body[1:],
    ]


def kprobe_wrapper(body: list[Instruction]) -> list[Instruction]:
    """KPROBE: filter((void *)regs->di, (void *)regs->si, (void *)regs->dx) -- load only, to run the
    verifier (all three plain scalars, as in a kprobe on a function taking an skb)."""
    return [
        asm.ldx(Size.DW, R3, R1, 96),
        asm.ldx(Size.DW, R2, R1, 104),
        asm.ldx(Size.DW, R1, R1, 112),
        asm.call_pseudo("filter"),
        asm.exit_(),
        body[0].with_label("filter"),
        *body[1:],
    ]


class Runner:
    """BPF_PROG_TEST_RUN of a SCHED_CLS program on one packet (behind :data:`PREFIX`); ``ctx`` is an optional
    ``__sk_buff`` prefix (the kernel takes ``mark``, ``priority``, ``ingress_ifindex``, ... from it)."""

    def __init__(self, fd: int, ctx: bytes = b"") -> None:
        self.fd = fd
        self.attr = RunAttr(prog_fd=fd, repeat=1)
        self.ctx = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None

    def __call__(self, packet: bytes) -> int:
        data = PREFIX + packet
        buf = ctypes.create_string_buffer(data, len(data))
        self.attr.data_in = ctypes.addressof(buf)
        self.attr.data_size_in = len(data)
        self.attr.data_out = 0
        self.attr.data_size_out = 0
        if self.ctx is not None:
            self.attr.ctx_in = ctypes.addressof(self.ctx)
            self.attr.ctx_size_in = len(self.ctx)
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
        # libpcap's verdict is stack garbage where it reads scratch memory it never wrote (tests/filter_reference)
        defined = uninitialized_scratch_read(prog) is None
        stats.classic_total += len(prog)
        for mode, wrap in (("direct", direct_wrapper), ("probe", probe_wrapper)):
            body = f.to_ebpf(link, mode)  # type: ignore[arg-type]
            stats.ebpf[mode] += asm.slot_count(body)
            vm = Program(body)
            fd = load(wrap(body), ProgType.SCHED_CLS)
            try:
                run = Runner(fd)
                for pkt, exp in zip(packets[link], want, strict=True):
                    got = run(pkt)
                    stats.pairs += 1
                    if got != exp and defined:
                        stats.disagreements.append(
                            f"{f.expr!r} {link} {mode}: {pkt.hex()} pcap={exp} ebpf={got}"
                        )
                    # the test machine the fuzzer trusts must agree with the kernel, always
                    if run_on_packet(vm, pkt) != got:
                        stats.disagreements.append(f"{f.expr!r} {link} {mode}: {pkt.hex()} kernel={got}, test vm not")
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
