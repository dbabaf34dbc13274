"""--filter-track-skb on this machine's kernel: real skbs whose headers change after they matched the filter.

A tc program of the test's own (assembled with pwru.ebpf, attached with tcx) rewrites the UDP destination port
of packets entering a namespace; the filter names only the port before the rewrite. With tracking, the events
after the rewrite (down to the drop) are shown with the same skb address; without it, they are not.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import R0, R1, R2, R3, R4, R5, R6, R10, AluOp, JmpOp, Size
from pwru.ebpf.link import attach_tcx
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import ProgType
from tests.e2e.conftest import Netns, PwruRun, in_netns, map_entries, run_cli, udp_send

pytestmark = pytest.mark.root

OLD_PORT, NEW_PORT = 7777, 7778
#: Ethernet + IPv4 without options: the UDP destination port's offset in the frame tc sees.
DPORT_OFFSET = 14 + 20 + 2
LINE = re.compile(r"^(0x[0-9a-f]+) .* (\S+:\d+->\S+:(\d+)\(udp\)) +(\S+)")  # TUPLE is padded


def rewrite_port_insns(old: int, new: int) -> bytes:
    """sched_cls: if the 16 bits at DPORT_OFFSET are ``old``, store ``new`` there (bpf_skb_store_bytes); pass."""
    return asm.assemble(
        [
            asm.mov_reg(R6, R1),
            # r0 = bpf_skb_load_bytes(skb, DPORT_OFFSET, fp-8, 2)
            asm.mov_imm(R2, DPORT_OFFSET),
            asm.mov_reg(R3, R10),
            asm.alu_imm(AluOp.ADD, R3, -8),
            asm.mov_imm(R4, 2),
            asm.call("skb_load_bytes"),
            asm.jmp_imm(JmpOp.JNE, R0, 0, "pass"),
            asm.ldx(Size.H, R1, R10, -8),
            asm.jmp_imm(JmpOp.JNE, R1, socket.htons(old), "pass"),
            asm.st(Size.H, R10, -8, socket.htons(new)),
            asm.mov_reg(R1, R6),
            asm.mov_imm(R2, DPORT_OFFSET),
            asm.mov_reg(R3, R10),
            asm.alu_imm(AluOp.ADD, R3, -8),
            asm.mov_imm(R4, 2),
            asm.mov_imm(R5, 0),
            asm.call("skb_store_bytes"),
            asm.mov_imm(R0, 0).with_label("pass"),  # TCX_PASS
            asm.exit_(),
        ]
    )


@pytest.fixture
def port_rewrite(veth_pair: tuple[Netns, Netns]) -> Iterator[tuple[Netns, Netns]]:
    """The veth pair with a tcx ingress program on b0 rewriting UDP dport OLD_PORT -> NEW_PORT."""
    a, b = veth_pair
    with Program.load(ProgType.SCHED_CLS, rewrite_port_insns(OLD_PORT, NEW_PORT), name="t_rewrite") as prog:
        with in_netns(b.path):
            link = attach_tcx(prog, b.ifindex("b0"), ingress=True)
        try:
            yield a, b
        finally:
            link.close()


def send_no_checksum(ns: Netns, host: str, port: int, count: int) -> None:
    """UDP datagrams without a checksum (SO_NO_CHECK), so a rewritten port is not a checksum error."""
    ns.python(
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, 11, 1)\n"
        f"for _ in range({count}):\n"
        f"    s.sendto(b'pwru', ({host!r}, {port}))\n"
        "    time.sleep(0.02)\n"
    )


def events(run: PwruRun) -> list[tuple[str, int, str]]:
    """(skb, destination port, probe) of every text event line."""
    out = []
    for line in run.stdout.splitlines():
        m = LINE.match(line)
        if m:
            out.append((m.group(1), int(m.group(3)), m.group(4)))
    return out


def test_a_tc_rewrite_is_followed_with_tracking(pwru: object, port_rewrite: tuple[Netns, Netns]) -> None:
    a, _ = port_rewrite
    filt = f"udp and dst port {OLD_PORT}"
    runs = {}
    for tracked in (True, False):
        run: PwruRun = pwru(*(["--filter-track-skb"] if tracked else []), filt)  # type: ignore[operator]
        run.start()
        send_no_checksum(a, "10.99.0.2", OLD_PORT, 3)
        time.sleep(0.5)
        run.stop()
        assert run.returncode == 0, run.stderr
        runs[tracked] = events(run)
    seen = runs[True]
    before = {skb for skb, port, _ in seen if port == OLD_PORT}
    after = [(skb, probe) for skb, port, probe in seen if port == NEW_PORT]
    assert before, seen
    # After the rewrite: the same skbs, down to the drop (nothing listens on NEW_PORT in b).
    assert after and {skb for skb, _ in after} <= before, seen
    assert any(probe.startswith("tp:kfree_skb") for _, probe in after), after
    # Without tracking the filter alone decides: nothing after the rewrite.
    assert runs[False] and all(port == OLD_PORT for _, port, _ in runs[False]), runs[False]


@pytest.mark.parametrize("delivered", [False, True], ids=["dropped", "delivered"])
def test_the_tracked_set_is_empty_again_after_10000_packets(
    pwru: object, veth_pair: tuple[Netns, Netns], tmp_path: Path, delivered: bool
) -> None:
    """Dropped skbs end at the kfree_skb tracepoint: the set empties. Delivered ones read by a socket are freed
    by 6.x through the NAPI skb cache, which has no tracepoint: on a kernel without kprobes and fentry some stay,
    and the exit report says how many (tests/e2e/test_lab.py checks they leave the set where kprobes exist)."""
    a, b = veth_pair
    port = 9400
    receiver = None
    if delivered:
        receiver = b.python_background(
            "import socket\n"
            "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1<<22)\n"
            f"s.bind(('10.99.0.2', {port}))\n"
            "print('ready', flush=True)\n"
            "while True: s.recv(100)\n"
        )
    out = tmp_path / "events.txt"
    run: PwruRun = pwru(  # type: ignore[operator]
        "--filter-track-skb", "--output-file", str(out), f"udp and dst port {port}"
    )
    run.start()
    assert run.proc is not None
    pid = run.proc.pid
    try:
        udp_send(a, "10.99.0.2", port, count=10_000, interval=0)
        deadline = time.monotonic() + 5
        while map_entries(pid, "tracked") and time.monotonic() < deadline:
            time.sleep(0.2)
        left = map_entries(pid, "tracked")
    finally:
        run.stop()
        if receiver is not None:
            receiver.kill()
            receiver.wait()
    assert run.returncode == 0, run.stderr
    assert " 0 untracked" in run.stderr, run.stderr
    reported = re.search(r"(\d+) tracked skbs? never seen freed", run.stderr)
    if not delivered:
        assert left == 0 and reported is None, run.stderr
    elif left:
        assert reported is not None and 0 < int(reported.group(1)) <= left, run.stderr


def test_non_skb_funcs_bad_input() -> None:
    r = run_cli("--filter-non-skb-funcs", "no_such_function_xyz", "tcp")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "pwru: --filter-non-skb-funcs: no kernel function 'no_such_function_xyz'"
    assert "Traceback" not in r.stderr


def test_track_skb_max_bad_input() -> None:
    r = run_cli("--filter-track-skb-max", "0", "tcp")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--filter-track-skb-max" in r.stderr


def test_dnat_on_the_output_path_is_followed(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    """An iptables DNAT in A's output path; the filter names only the address before NAT. Tracepoints never see
    the skb before NAT: the netfilter observation points do (nf:OUTPUT@first), and tracking follows it from there
    to the drop in B."""
    a, _ = veth_pair
    a.exec("ip", "route", "add", "10.99.9.0/24", "dev", "a0")
    a.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.99.9.9", "-p", "udp", "--dport", "7",
           "-j", "DNAT", "--to-destination", "10.99.0.2:9")  # fmt: skip
    runs = {}
    for tracked in (True, False):
        args = ["--filter-trace-netfilter=true", "--output-json", "dst host 10.99.9.9"]
        run: PwruRun = pwru(*(["--filter-track-skb"] if tracked else []), *args)  # type: ignore[operator]
        run.start()
        udp_send(a, "10.99.9.9", 7, count=2, interval=0.1)
        time.sleep(0.5)
        run.stop()
        assert run.returncode == 0, run.stderr
        runs[tracked] = run.json_events()

    def daddr(e: dict[str, object]) -> object:
        t = e.get("tuple")
        return t.get("daddr") if isinstance(t, dict) else None

    pre = {e["skb"] for e in runs[True] if daddr(e) == "10.99.9.9"}
    assert any(e["func"] == "nf:OUTPUT@first" for e in runs[True] if daddr(e) == "10.99.9.9"), runs[True]
    post = [str(e["func"]) for e in runs[True] if daddr(e) == "10.99.0.2" and e["skb"] in pre]
    assert "nf:OUTPUT@last" in post and "tp:net_dev_queue" in post, post
    assert any(f.startswith("tp:kfree_skb") for f in post), post
    assert runs[False] and all(daddr(e) == "10.99.9.9" for e in runs[False]), runs[False]
