"""Links against the real kernel: tp_btf, raw_tp, tcx, xdp and netfilter for real (with traffic in test
namespaces); kprobe and kprobe-multi must fail cleanly with an errno where the kernel lacks them."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import R0, R1, R2, R10, AluOp, AtomicOp, JmpOp, Size
from pwru.ebpf.btf import Kind, kernel_btf
from pwru.ebpf.link import (
    NF_INET_LOCAL_IN,
    NFPROTO_IPV4,
    AttachError,
    Link,
    attach_kprobe,
    attach_kprobe_multi,
    attach_netfilter,
    attach_raw_tracepoint,
    attach_tcx,
    attach_tracing,
    attach_xdp,
)
from pwru.ebpf.maps import Map
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, LinkType, MapType, ProgType
from tests.e2e.conftest import in_netns as in_netns_path

pytestmark = pytest.mark.root



def counting_insns(counter: Map, retval: int) -> bytes:
    """Add 1 to element 0 of array map ``counter`` and return ``retval``."""
    return asm.assemble(
        [
            asm.st(Size.W, R10, -4, 0),
            asm.ld_map_fd(R1, counter.fd),
            asm.mov_reg(R2, R10),
            asm.alu_imm(AluOp.ADD, R2, -4),
            asm.call("map_lookup_elem"),
            asm.jmp_imm(JmpOp.JEQ, R0, 0, "out"),
            asm.mov_imm(R1, 1),
            asm.atomic(Size.DW, AtomicOp.ADD, R0, 0, R1),
            asm.mov_imm(R0, retval).with_label("out"),
            asm.exit_(),
        ]
    )


@pytest.fixture
def counter() -> Iterator[Map]:
    with Map.create(MapType.ARRAY, 4, 8, 1, name="t_counter") as m:
        yield m


def count(m: Map) -> int:
    v = m.lookup_u64(0)
    assert v is not None
    return v


def in_netns(name: str) -> contextlib.AbstractContextManager[None]:
    """Run the block with this thread inside network namespace ``name``."""
    return in_netns_path(f"/run/netns/{name}")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: ns_a/va 10.77.0.1 <-> ns_b/vb 10.77.0.2."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"pwt_a_{tag}", f"pwt_b_{tag}"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "va")
        sh("ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "vb")
        for ns, dev in ((a, "va"), (b, "vb")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], check=False)
        subprocess.run(["ip", "netns", "del", b], check=False)


def ping(ns_a: str, ns_b: str, n: int = 3) -> int:
    """Send ``n`` UDP datagrams from ns_a to 10.77.0.2 in ns_b; how many arrived."""
    with in_netns(ns_b):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(ns_a):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("10.77.0.2", 0))
        rx.settimeout(0.5)
        port = rx.getsockname()[1]
        got = 0
        for i in range(n):
            tx.sendto(b"ping %d" % i, ("10.77.0.2", port))
            try:
                rx.recv(64)
                got += 1
            except TimeoutError:
                pass
        return got


def ifindex(ns: str, dev: str) -> int:
    with in_netns(ns):
        return socket.if_nametoindex(dev)


def test_tp_btf_link_counts_and_detaches(counter: Map) -> None:
    btf_id = kernel_btf().find_one("btf_trace_sys_enter", Kind.TYPEDEF)
    with Program.load(
        ProgType.TRACING,
        counting_insns(counter, 0),
        expected_attach_type=AttachType.TRACE_RAW_TP,
        attach_btf_id=btf_id,
        name="t_tp_btf",
    ) as prog:
        link = attach_tracing(prog)
        assert link.kind == "tp_btf"
        info = link.info()
        assert info.type == LinkType.RAW_TRACEPOINT and info.prog_id == prog.info().id
        for _ in range(20):
            os.getppid()
        seen = count(counter)
        assert seen >= 20
        link.close()
        link.close()
        assert link.closed
        after = count(counter)
        for _ in range(50):
            os.getppid()
        assert count(counter) == after


def test_raw_tp_by_name(counter: Map) -> None:
    with Program.load(ProgType.RAW_TRACEPOINT, counting_insns(counter, 0)) as prog:
        with attach_raw_tracepoint(prog, "sys_enter") as link:
            assert link.kind == "raw_tp"
            for _ in range(10):
                os.getppid()
            assert count(counter) >= 10
        with pytest.raises(AttachError) as e:
            attach_raw_tracepoint(prog, "no_such_tracepoint_xyz")
        assert e.value.errno == errno.ENOENT and "no_such_tracepoint_xyz" in str(e.value)


def test_tcx_ingress_sees_traffic(counter: Map, veth_pair: tuple[str, str]) -> None:
    a, b = veth_pair
    idx = ifindex(b, "vb")
    with Program.load(ProgType.SCHED_CLS, counting_insns(counter, 0), name="t_tcx") as prog:  # TCX_PASS
        with in_netns(b):
            link = attach_tcx(prog, idx, ingress=True)
        try:
            assert link.kind == "tcx" and link.info().type == LinkType.TCX
            assert ping(a, b) == 3
            assert count(counter) >= 3
        finally:
            link.close()
        before = count(counter)
        assert ping(a, b, n=2) == 2
        assert count(counter) == before


def test_tcx_drop_blocks_traffic(counter: Map, veth_pair: tuple[str, str]) -> None:
    a, b = veth_pair
    idx = ifindex(b, "vb")
    with Program.load(ProgType.SCHED_CLS, counting_insns(counter, 2), name="t_tcx_drop") as prog:  # TCX_DROP
        with in_netns(b):
            link = attach_tcx(prog, idx, ingress=True)
        with link:
            assert ping(a, b, n=2) == 0
        assert ping(a, b, n=1) == 1


def test_xdp_link(counter: Map, veth_pair: tuple[str, str]) -> None:
    a, b = veth_pair
    idx = ifindex(b, "vb")
    with Program.load(ProgType.XDP, counting_insns(counter, 2), name="t_xdp") as prog:  # XDP_PASS
        with in_netns(b), attach_xdp(prog, idx) as link:
            assert link.info().type == LinkType.XDP
            assert ping(a, b) == 3
            assert count(counter) >= 3
        with in_netns(b):
            out = subprocess.run(["ip", "link", "show", "vb"], capture_output=True, text=True, check=True)
        assert "xdp" not in out.stdout


def test_netfilter_link_drops_and_counts(counter: Map, veth_pair: tuple[str, str]) -> None:
    a, b = veth_pair
    assert ping(a, b, n=1) == 1
    with Program.load(
        ProgType.NETFILTER,
        counting_insns(counter, 0),  # NF_DROP
        expected_attach_type=AttachType.NETFILTER,
        name="t_nf",
    ) as prog:
        with in_netns(b):
            link = attach_netfilter(prog, NFPROTO_IPV4, NF_INET_LOCAL_IN, priority=-128)
        with link:
            assert link.info().type == LinkType.NETFILTER
            assert ping(a, b, n=2) == 0
            assert count(counter) >= 2
        assert ping(a, b, n=1) == 1


def test_kprobe_fails_cleanly() -> None:
    insns = asm.assemble([asm.mov_imm(R0, 0), asm.exit_()])
    with Program.load(ProgType.KPROBE, insns) as prog:
        if os.path.exists("/sys/bus/event_source/devices/kprobe"):
            with attach_kprobe(prog, "ip_rcv") as link:  # a kernel with kprobes: it must work
                assert link.kind == "kprobe"
            with pytest.raises(AttachError) as e:
                attach_kprobe(prog, "no_such_function_xyz")
            assert e.value.errno in (errno.ENOENT, errno.EINVAL)
        else:
            with pytest.raises(AttachError) as e:
                attach_kprobe(prog, "ip_rcv")
            assert e.value.errno == errno.ENOENT
            assert "CONFIG_KPROBES" in str(e.value) and e.value.kind == "kprobe"


def test_kprobe_multi_fails_cleanly() -> None:
    insns = asm.assemble([asm.mov_imm(R0, 0), asm.exit_()])
    with Program.load(
        ProgType.KPROBE, insns, expected_attach_type=AttachType.TRACE_KPROBE_MULTI, name="t_kpm"
    ) as prog:
        try:
            link = attach_kprobe_multi(prog, syms=["ip_rcv"])
        except AttachError as e:
            assert e.errno in (errno.EOPNOTSUPP, errno.ENOENT, errno.ESRCH, errno.EPERM)
            assert e.kind == "kprobe_multi" and "1 functions" in str(e)
        else:
            link.close()
        with pytest.raises(ValueError):
            attach_kprobe_multi(prog)
        with pytest.raises(ValueError):
            attach_kprobe_multi(prog, addrs=[1], cookies=[1, 2])


def test_link_object_without_fds() -> None:
    link = Link("test")
    link.close()
    assert link.closed
    with pytest.raises(ValueError):
        link.info()
