"""The kernel's side of the translator fuzzer and of what the test machine cannot show alone.

* a slice of the fuzzer's expressions (tests/filter_grammar.py) test-run in the kernel, both modes, against
  libpcap, and the test eBPF machine against the kernel on every pair (the unit fuzzer trusts it);
* far jumps: a body with gotol and trampolines loads and gives libpcap's verdicts (kernel 6.6+);
* direct-mode ancillary loads read a tc program's ``__sk_buff`` as the kernel fills it for BPF_PROG_TEST_RUN
  (mark and ingress device from ``ctx_in``, protocol and packet type from ``eth_type_trans`` on loopback);
* probe-mode bodies with ancillary loads, at this kernel's ``struct sk_buff`` offsets, pass the verifier in a
  kprobe program (their verdicts on real skbs: tests/e2e/test_filter_ancillary.py).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pwru.ebpf import features
from pwru.ebpf.btf import kernel_btf
from pwru.ebpf.syscall import ProgType
from pwru.filter import FilterError, SkbLayout, compile_filter
from pwru.filter.ancillary import SKB_CTX
from pwru.filter.pcap import PcapProgram
from pwru.filter.translate import translate
from tests.filter_grammar import expressions
from tests.filter_packets import PacketGen
from tests.kernel.test_filter_corpus import Runner, Stats, compare, direct_wrapper, kprobe_wrapper, load
from tests.unit.test_filter import far_program

pytestmark = pytest.mark.root

SLICE = int(os.environ.get("PWRU_FILTER_FUZZ_KERNEL_EXAMPLES", "250"))


@settings(max_examples=SLICE, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(expr=expressions, seed=st.integers(0, 2**32 - 1))
def test_fuzz_slice_in_the_kernel(expr: str, seed: int) -> None:
    try:
        f = compile_filter(expr)
    except FilterError:
        return
    assert f is not None
    l2, l3 = PacketGen(seed).packets(12)
    stats = type("S", (Stats,), {"pairs": 0, "disagreements": [], "ebpf": {"direct": 0, "probe": 0}})
    compare(f, {"l2": l2, "l3": l3}, stats)
    assert not stats.disagreements, "\n".join(stats.disagreements[:10])


def test_far_jumps_run_in_the_kernel() -> None:
    gotol = features.long_jump()
    if not gotol:
        pytest.skip(gotol.reason)
    prog = far_program(9000)  # far in both modes (a direct-mode load is 4 instructions, a probe one 11)
    ref = PcapProgram(prog)
    direct = translate(prog, "direct", long_jumps=True)
    probe = translate(prog, "probe", long_jumps=True)
    assert any(i.is_long_jump for i in direct) and any(i.is_long_jump for i in probe)
    fd = load(direct_wrapper(direct), ProgType.SCHED_CLS)
    try:
        run = Runner(fd)
        for pkt in (bytes(range(60)), bytes(59), b"", bytes(range(100))):
            assert run(pkt) == ref.run(pkt)
    finally:
        os.close(fd)
    os.close(load(kprobe_wrapper(probe), ProgType.KPROBE))


def ctx(mark: int, ingress_ifindex: int) -> bytes:
    """The head of a ``__sk_buff`` for ctx_in (the kernel refuses other fields set)."""
    b = bytearray(SKB_CTX["ifindex"])
    struct.pack_into("<I", b, SKB_CTX["mark"], mark)
    struct.pack_into("<I", b, 36, ingress_ifindex)  # __sk_buff.ingress_ifindex
    return bytes(b)


@pytest.mark.parametrize(
    ("expr", "accepts"),
    [("ifindex 1", True), ("ifindex 2", False), ("inbound", True), ("outbound", False),
     ("inbound and ifindex 1 and ip", True), ("not ifindex 1", False)],
)  # fmt: skip
def test_direct_mode_reads_the_tc_context(expr: str, accepts: bool) -> None:
    # BPF_PROG_TEST_RUN runs a tc program on loopback (ifindex 1); eth_type_trans sees the dummy Ethernet
    # header in front of the packet: to 00:00:00:00:00:00, loopback's own address, so PACKET_HOST.
    f = compile_filter(expr)
    assert f is not None
    packet = PacketGen(5).ipv4()
    fd = load(direct_wrapper(f.to_ebpf("l3", "direct")), ProgType.SCHED_CLS)
    try:
        assert bool(Runner(fd, ctx(7, 0))(packet)) is accepts
    finally:
        os.close(fd)


def test_direct_mode_ancillary_values() -> None:
    from pwru.filter.ancillary import SKF_AD_OFF, Anc
    from pwru.filter.cbpf import CInsn, CProgram

    want = {Anc.MARK: 0xC0FFEE, Anc.PROTOCOL: 0x88B5, Anc.IFINDEX: 1, Anc.PKTTYPE: 0, Anc.VLAN_TAG_PRESENT: 0}
    for anc, value in want.items():
        prog = CProgram((CInsn(0x20, 0, 0, SKF_AD_OFF + anc), CInsn(0x16)))  # ld [SKF_AD_OFF + n]; ret a
        fd = load(direct_wrapper(translate(prog, "direct")), ProgType.SCHED_CLS)
        try:
            assert Runner(fd, ctx(0xC0FFEE, 0))(bytes(20)) == value, anc
        finally:
            os.close(fd)


@pytest.mark.parametrize("expr", ["inbound", "outbound", "ifindex 3", "not ifindex 3 and (inbound or udp)"])
def test_probe_bodies_with_ancillary_loads_pass_the_verifier(expr: str) -> None:
    layout = SkbLayout.from_btf(kernel_btf())
    f = compile_filter(expr)
    assert f is not None
    for link in ("l2", "l3"):
        os.close(load(kprobe_wrapper(f.to_ebpf(link, "probe", skb=layout)), ProgType.KPROBE))  # type: ignore[arg-type]
