"""pcap filters that read skb metadata (Linux ancillary loads): ``inbound``, ``outbound``, ``ifindex N``, on real
skbs. libpcap's offline filter cannot say what they mean, so the truth here is where the packets really were:
UDP sent from namespace A over a veth pair to namespace B is outbound in A (on its way to A's device) and
inbound in B (received by B's device)."""

from __future__ import annotations

import pytest

from .conftest import Netns, PwruRun, sh, udp_send

pytestmark = pytest.mark.root

PORT = 7431
A_IFINDEX, B_IFINDEX = 4301, 4302  # fixed and different, so "ifindex N" names one device only


@pytest.fixture
def pair(netns_factory: object) -> tuple[Netns, Netns]:
    a: Netns = netns_factory()  # type: ignore[operator]
    b: Netns = netns_factory()  # type: ignore[operator]
    sh("ip", "link", "add", "fa0", "index", str(A_IFINDEX), "netns", a.name, "type", "veth",
       "peer", "name", "fb0", "index", str(B_IFINDEX), "netns", b.name)  # fmt: skip
    for ns, dev, v4 in ((a, "fa0", "10.98.0.1/24"), (b, "fb0", "10.98.0.2/24")):
        ns.exec("ip", "addr", "add", v4, "dev", dev)
        ns.exec("ip", "link", "set", dev, "up")
    # Resolve the neighbour first, so that the measured packets are the UDP ones only.
    a.exec("ping", "-c", "1", "-W", "2", "10.98.0.2", check=False)
    return a, b


def traced(pwru: object, a: Netns, expr: str) -> list[dict[str, object]]:
    run: PwruRun = pwru("--output-json", "--output-meta", f"({expr}) and udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    udp_send(a, "10.98.0.2", PORT, count=3)
    run.stop()
    assert run.returncode == 0, run.stderr
    return run.json_events()


def test_inbound_and_outbound_split_the_path_at_the_device(pwru: object, pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    out = traced(pwru, a, "outbound")
    inb = traced(pwru, a, "inbound")
    every = traced(pwru, a, "inbound or outbound")
    assert out and inb, (out, inb)
    assert {e["netns"] for e in out} == {a.inode}, out
    assert {e["netns"] for e in inb} == {b.inode}, inb
    funcs_out = {str(e["func"]) for e in out}
    funcs_in = {str(e["func"]) for e in inb}
    assert any("net_dev_queue" in f or "net_dev_start_xmit" in f for f in funcs_out), funcs_out
    assert any("netif_r" in f for f in funcs_in), funcs_in  # netif_rx / netif_receive_skb
    # The two are complements: together they see the packets every event of an unfiltered run sees.
    assert {str(e["func"]) for e in every} == funcs_out | funcs_in


def test_ifindex_selects_the_device(pwru: object, pair: tuple[Netns, Netns]) -> None:
    a, _b = pair
    on_a = traced(pwru, a, f"ifindex {A_IFINDEX}")
    on_b = traced(pwru, a, f"ifindex {B_IFINDEX}")
    assert on_a and on_b
    assert {str(e["iface"]) for e in on_a} == {f"fa0:{A_IFINDEX}"}, on_a
    assert {str(e["iface"]) for e in on_b} == {f"fb0:{B_IFINDEX}"}, on_b
    assert not traced(pwru, a, "ifindex 4399")
