"""--output-journey on real traffic between two namespaces the test makes (a veth pair): one block per packet
with its verdict. A UDP datagram to a closed port is dropped with NO_SOCKET; a TCP SYN DNAT'd in PREROUTING
and dropped by an INPUT rule shows the tuple before and after the NAT at the hop where it changed and the
NETFILTER_DROP at its hook; a datagram read by a process is delivered to that process.
"""

from __future__ import annotations

import json
import random
import re
import time

import pytest

from pwru.explain import explain
from tests.e2e.conftest import Netns, PwruRun, tcp_connect, udp_send

pytestmark = pytest.mark.root

#: The idle timeout the runs use (ms): a delivered datagram's skb is freed without any tracepoint on this
#: host's kernel, so its journey is printed after it.
TIMEOUT_MS = 300
BLOCK = re.compile(r"^journey \d+", re.M)


def port() -> int:
    """A port of the test's own: other tests on this machine send to the same addresses in their namespaces."""
    return random.randrange(20000, 60000)


def resolved(a: Netns, b: Netns) -> None:
    """Permanent neighbour entries both ways: no ARP resolution, whose probe sends a clone of the first packet
    (neigh_probe: skb_clone, then consume_skb), which the tracepoint backend cannot tie to its packet."""
    for ns, dev, peer_ns, peer_dev, peer_ip in ((a, "a0", b, "b0", "10.99.0.2"), (b, "b0", a, "a0", "10.99.0.1")):
        mac = peer_ns.exec("cat", f"/sys/class/net/{peer_dev}/address").stdout.strip()
        ns.exec("ip", "neigh", "replace", peer_ip, "lladdr", mac, "dev", dev, "nud", "permanent")


def journeys(run: PwruRun) -> list[dict[str, object]]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def traced(pwru: object, *args: str) -> PwruRun:
    run: PwruRun = pwru("--output-journey", f"--output-journey-timeout={TIMEOUT_MS}", *args)  # type: ignore[operator]
    return run.start()


def finish(run: PwruRun) -> PwruRun:
    time.sleep(2 * TIMEOUT_MS / 1000 + 0.3)
    run.stop()
    assert run.returncode == 0, run.stderr
    return run


def test_datagram_to_a_closed_port_is_one_block_ending_in_no_socket(
    pwru: object, veth_pair: tuple[Netns, Netns]
) -> None:
    a, b = veth_pair
    resolved(a, b)
    p = port()
    run = traced(pwru, f"udp and dst port {p}")
    udp_send(a, "10.99.0.2", p)
    finish(run)
    blocks = BLOCK.findall(run.stdout)
    assert len(blocks) == 1, run.stdout
    lines = run.stdout.rstrip("\n").splitlines()
    verdict = [i for i, line in enumerate(lines) if line.startswith("  verdict: ")]
    assert len(verdict) == 1, run.stdout
    pattern = r"  verdict: dropped at (__udp[46]_lib_rcv\+0x[0-9a-f]+): SKB_DROP_REASON_NO_SOCKET "
    drop = re.match(pattern, lines[verdict[0]])
    assert drop, lines[verdict[0]]
    explained = explain("SKB_DROP_REASON_NO_SOCKET", drop.group(1))
    assert explained is not None and "listens" in explained.text
    assert lines[verdict[0] + 1] == f"    {explained.text}" and lines[verdict[0] + 2] == f"    next: {explained.check}"
    assert "10.99.0.1:" in lines[0] and f"->10.99.0.2:{p}(udp)" in lines[0], lines[0]
    # Both ends' devices are hops, in order, each with the time since the previous one.
    hops = [line for line in lines[1 : verdict[0]] if re.match(r"\s+\+\d", line)]
    assert any("a0:" in h for h in hops) and any("b0:" in h for h in hops), run.stdout
    assert next(i for i, h in enumerate(hops) if "a0:" in h) < next(i for i, h in enumerate(hops) if "b0:" in h)
    assert "journeys printed" in run.stderr


def test_dnat_then_firewall_drop_shows_the_nat_change_and_the_hook(
    pwru: object, veth_pair: tuple[Netns, Netns]
) -> None:
    a, b = veth_pair
    resolved(a, b)
    before, after = port(), port()
    b.exec("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", str(before),
           "-j", "DNAT", "--to-destination", f"10.99.0.2:{after}")  # fmt: skip
    b.exec("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(after), "-j", "DROP")
    run = traced(pwru, "--output-json", "--filter-trace-netfilter=true", f"tcp and dst port {before}")
    tcp_connect(a, "10.99.0.2", before, timeout=0.5)  # one SYN: the first retransmission is due after 1 s
    finish(run)
    found = journeys(run)
    assert found, run.stdout + run.stderr
    j = found[0]
    changed = [h for h in j["hops"] if "tuple_before" in h]  # type: ignore[union-attr]
    assert len(changed) == 1, j
    hop = changed[0]
    assert hop["tuple_before"]["dport"] == before and hop["tuple"]["dport"] == after, hop
    # DNAT runs in PREROUTING (nat, priority -100): between the hook's first and last points.
    assert hop["func"] == "nf:PREROUTING@last", hop
    assert hop["iface"].startswith("b0:"), hop
    v = j["verdict"]
    assert v["verdict"] == "dropped" and v["reason"] == "SKB_DROP_REASON_NETFILTER_DROP", v  # type: ignore[index]
    assert v["nf_hook"] == "INPUT", v  # type: ignore[index]
    assert v["explanation"] and v["check"], v  # type: ignore[index]
    assert j["end"] == "freed", j


def test_datagram_read_by_a_process_is_delivered_to_it(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, b = veth_pair
    resolved(a, b)
    # A datagram larger than one page's worth of linear data: the kernel copies a paged skb to the reader with
    # skb_copy_datagram_iter, which has a tracepoint (a small linear one is copied without any). A large MTU
    # keeps it one skb (fragments would be reassembled into a new skb, copied with its checksum computed: no
    # tracepoint either).
    for ns, dev in ((a, "a0"), (b, "b0")):
        ns.exec("ip", "link", "set", dev, "mtu", "65535")
    reader = b.python_background(
        "import socket\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('10.99.0.2', {(p := port())}))\n"
        "print('ready', flush=True)\n"
        "s.recv(65536)\n"
    )
    try:
        run = traced(pwru, "--output-json", f"udp and dst port {p}")
        udp_send(a, "10.99.0.2", p, payload=b"x" * 30000)
        assert reader.wait(timeout=10) == 0
        finish(run)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    found = journeys(run)
    # The reader's socket may be freed later by a worker (after the journey's idle timeout): its skb's free then
    # comes as a journey of its own, of that one hop. Anything else would be a journey split wrongly.
    assert found, run.stdout
    for late in found[1:]:
        assert late["skb"] == found[0]["skb"] and late["end"] == "freed", run.stdout
        assert [h["func"] for h in late["hops"]] == ["tp:consume_skb"], run.stdout  # type: ignore[union-attr]
    v = found[0]["verdict"]
    assert v["verdict"] == "delivered", found[0]  # type: ignore[index]
    assert str(v["process"]).endswith(f":{reader.pid}") or f":{reader.pid}" in str(v["process"]), v  # type: ignore[index]
