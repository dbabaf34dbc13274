"""Tunnels and IPv6 extension headers end to end: VXLAN between two namespaces, --filter-tunnel-pcap-l2/l3 and
--output-tunnel on its inner packets, and tuples of IPv6 packets behind extension headers.

What the kernel shows (seen on 6.18 with the tracepoint backend, and asserted below): encapsulation sets the
skb's inner header offsets, so the encapsulated skb carries its inner packet from the sender's veth
(net_dev_queue, net_dev_start_xmit) through the receiver's veth (netif_rx, netif_receive_skb) up to the vxlan
decapsulation; veth hands the same skb over without resetting them. A packet that was never encapsulated
(the plain UDP below, the inner packet before encapsulation) has none: TUNNEL ``-``, no ``tunnel_tuple``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from .conftest import Netns, PwruRun, run_cli, udp_send

pytestmark = pytest.mark.root

VNI = "42"
VXLAN_PORT = "4789"
INNER = {"a": ("192.168.99.1", "02:00:00:00:99:01"), "b": ("192.168.99.2", "02:00:00:00:99:02")}
WANTED, OTHER, PLAIN = 7001, 7002, 7003  # inner UDP ports (WANTED, OTHER) and an unencapsulated one (PLAIN)


@pytest.fixture
def vxlan_pair(veth_pair: tuple[Netns, Netns]) -> tuple[Netns, Netns]:
    """``veth_pair`` plus a vxlan device ``vx0`` in each namespace over the veth (10.99.0.1 <-> 10.99.0.2),
    inner addresses 192.168.99.1/24 and .2/24; fixed MACs and permanent neighbours, so no ARP and no IPv6
    chatter crosses the tunnel, and no packet waits for address resolution while pwru runs."""
    a, b = veth_pair
    permanent_neighbours(a, b)
    for ns, me, peer, dev, local, remote in (
        (a, "a", "b", "a0", "10.99.0.1", "10.99.0.2"),
        (b, "b", "a", "b0", "10.99.0.2", "10.99.0.1"),
    ):
        addr, mac = INNER[me]
        ns.exec("ip", "link", "add", "vx0", "address", mac, "type", "vxlan", "id", VNI, "local", local,
                "remote", remote, "dstport", VXLAN_PORT, "dev", dev)  # fmt: skip
        ns.exec("ip", "link", "set", "vx0", "addrgenmode", "none")
        ns.exec("ip", "addr", "add", f"{addr}/24", "dev", "vx0")
        ns.exec("ip", "link", "set", "vx0", "up")
        ns.exec("ip", "neigh", "add", INNER[peer][0], "lladdr", INNER[peer][1], "dev", "vx0", "nud", "permanent")
    return a, b


def permanent_neighbours(a: Netns, b: Netns) -> None:
    """The veth pair's peers as permanent neighbours (IPv4 and IPv6) on both sides: packets leave at once."""
    for ns, dev, peer, peer_dev, addrs in ((a, "a0", b, "b0", ("10.99.0.2", "fd99::2")),
                                           (b, "b0", a, "a0", ("10.99.0.1", "fd99::1"))):  # fmt: skip
        mac = peer.exec("cat", f"/sys/class/net/{peer_dev}/address").stdout.strip()
        for addr in addrs:
            ns.exec("ip", "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent")


def send_inner_flows(a: Netns) -> None:
    """Two inner UDP flows from a to b through the tunnel, to ports WANTED and OTHER."""
    for port in (WANTED, OTHER):
        udp_send(a, INNER["b"][0], port, count=2)


def events_in(run: PwruRun, ns: Netns) -> list[dict[str, object]]:
    return [e for e in run.json_events() if e.get("netns") == ns.inode]


def tunnel_of(e: dict[str, object]) -> dict[str, object]:
    t = e.get("tunnel_tuple")
    assert isinstance(t, dict), e
    return t


def test_filter_tunnel_pcap_l3_selects_one_inner_flow(
    pwru: Callable[..., PwruRun], vxlan_pair: tuple[Netns, Netns]
) -> None:
    a, b = vxlan_pair
    args = ["--output-json", "--output-tunnel", f"udp port {VXLAN_PORT}"]
    everything = pwru(*args).start()  # without the tunnel filter: both inner flows
    send_inner_flows(a)
    everything.stop()
    assert everything.returncode == 0, everything.stderr
    seen = {tunnel_of(e).get("dport") for e in everything.json_events()}
    assert {WANTED, OTHER} <= seen, everything.stdout

    run = pwru("--filter-tunnel-pcap-l3", f"udp dst port {WANTED}", *args).start()
    send_inner_flows(a)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    assert events, run.stderr
    for e in events:
        outer, inner = e.get("tuple"), tunnel_of(e)
        assert isinstance(outer, dict) and outer["dport"] == int(VXLAN_PORT) and outer["proto"] == 17, e
        assert inner["saddr"] == INNER["a"][0] and inner["daddr"] == INNER["b"][0], e
        assert inner["dport"] == WANTED and inner["proto"] == 17, e
    # The encapsulated skb carries its inner packet on both sides of the veth, before decapsulation.
    assert events_in(run, a) and events_in(run, b), run.stdout
    if all(str(e["func"]).startswith("tp:") for e in events):  # the tracepoint backend: which ones see it
        funcs = {(e["netns"], e["func"]) for e in events}
        assert {(a.inode, "tp:net_dev_queue"), (b.inode, "tp:netif_receive_skb")} <= funcs, funcs


def test_filter_tunnel_pcap_l2_reads_the_inner_ethernet_header(
    pwru: Callable[..., PwruRun], vxlan_pair: tuple[Netns, Netns]
) -> None:
    a, _b = vxlan_pair
    wrong = pwru("--output-json", "--filter-tunnel-pcap-l2", "ether dst 02:00:00:00:99:77",
                 f"udp port {VXLAN_PORT}").start()  # fmt: skip
    send_inner_flows(a)
    wrong.stop()
    assert wrong.returncode == 0, wrong.stderr
    assert wrong.json_events() == [], wrong.stdout
    right = pwru("--output-json", "--output-tunnel", "--filter-tunnel-pcap-l2",
                 f"ether dst {INNER['b'][1]} and udp dst port {OTHER}", f"udp port {VXLAN_PORT}").start()  # fmt: skip
    send_inner_flows(a)
    right.stop()
    events = right.json_events()
    assert events, right.stderr
    assert {tunnel_of(e)["dport"] for e in events} == {OTHER}


def test_output_tunnel_text_column(pwru: Callable[..., PwruRun], vxlan_pair: tuple[Netns, Netns]) -> None:
    a, _b = vxlan_pair
    run = pwru("--output-tunnel", "--filter-netns", a.path, "udp").start()
    udp_send(a, INNER["b"][0], WANTED, count=2)
    udp_send(a, "10.99.0.2", PLAIN, count=2)
    run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[-3:] == ["TUPLE", "FUNC", "TUNNEL"], lines[0]  # padded columns
    inner = rf"192\.168\.99\.1:\d+->192\.168\.99\.2:{WANTED}\(udp\)"
    encapsulated = [ln for ln in lines if re.search(rf"10\.99\.0\.1:\d+->10\.99\.0\.2:{VXLAN_PORT}\(udp\) ", ln)]
    assert encapsulated and all(re.search(rf" {inner}$", ln) for ln in encapsulated), run.stdout
    # the inner packet before encapsulation, and a packet that never was encapsulated: no inner packet
    before = [ln for ln in lines if re.search(rf" {inner} ", ln)]
    plain = [ln for ln in lines if re.search(rf"->10\.99\.0\.2:{PLAIN}\(udp\) ", ln)]
    assert before and plain, run.stdout
    assert all(ln.endswith(" -") for ln in before + plain), run.stdout


# IPv6 extension headers, as the sockets API adds them: each 8 bytes, one PadN option of 4 bytes.
PADN_8 = "bytes([0, 0, 1, 4, 0, 0, 0, 0])"
IPV6_HOPOPTS, IPV6_DSTOPTS = 54, 59  # <linux/in6.h>


def udp6_with_options(ns: Netns, port: int, *options: int) -> None:
    code = "import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    code += "".join(f"s.setsockopt(socket.IPPROTO_IPV6, {opt}, {PADN_8})\n" for opt in options)
    code += f"s.sendto(b'pwru', ('::1', {port}))\n"
    ns.python(code)


def test_ipv6_extension_headers_do_not_hide_the_ports(pwru: Callable[..., PwruRun], netns: Netns) -> None:
    cases = {7101: (IPV6_DSTOPTS,), 7102: (IPV6_HOPOPTS,), 7103: (IPV6_HOPOPTS, IPV6_DSTOPTS)}
    # libpcap's "udp" does not look past extension headers: select by what is not ICMPv6 instead
    run = pwru("--output-json", "--filter-netns", netns.path, "ip6 and not icmp6").start()
    for port, options in cases.items():
        udp6_with_options(netns, port, *options)
    run.stop()
    assert run.returncode == 0, run.stderr
    tuples = [e["tuple"] for e in run.json_events()]
    assert all(isinstance(t, dict) and t["proto"] == 17 for t in tuples), tuples  # never 0 (hop-by-hop) or 60
    for port in cases:
        mine = [t for t in tuples if isinstance(t, dict) and t.get("dport") == port]
        assert mine, (port, tuples)
    drops = [e for e in run.json_events() if "NO_SOCKET" in str(e["func"])]
    assert {e["tuple"]["dport"] for e in drops} == set(cases)  # type: ignore[index]


def test_ipv6_fragments_keep_the_protocol_and_only_the_first_has_ports(
    pwru: Callable[..., PwruRun], veth_pair: tuple[Netns, Netns]
) -> None:
    a, b = veth_pair
    permanent_neighbours(a, b)
    port = 7104
    run = pwru("--output-json", "--filter-netns", b.path, "ip6 and not icmp6").start()
    udp_send(a, "fd99::2", port, payload=b"x" * 3000)  # over a 1500-byte veth: three fragments
    run.stop()
    assert run.returncode == 0, run.stderr
    tuples = [t for e in run.json_events() if isinstance(t := e.get("tuple"), dict) and t.get("saddr") == "[fd99::1]"]
    assert tuples and all(t["proto"] == 17 for t in tuples), tuples  # never 44, the fragment header
    ports = {(t.get("sport", 0), t.get("dport", 0)) for t in tuples}
    assert (0, 0) in ports, ports  # a fragment other than the first (no ports: left out, as pwru)
    assert any(dport == port for _sport, dport in ports), ports  # the first fragment, and the reassembled packet


@pytest.mark.parametrize("flag", ["--filter-tunnel-pcap-l3", "--filter-tunnel-pcap-l2"])
def test_bad_tunnel_expression_is_one_line_exit_2(flag: str) -> None:
    p = run_cli(flag, "bogus (")
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.startswith(f'pwru: {flag}: invalid pcap filter "bogus ("'), p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
