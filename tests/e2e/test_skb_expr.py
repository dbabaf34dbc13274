"""--filter-skb-expr and --output-skb-metadata on real skbs: the compiled C expressions run in the kernel, on
traffic in namespaces made here (loopback, a veth pair), against marks set by a firewall rule."""

from __future__ import annotations

import re

import pytest

from .conftest import Netns, PwruRun, left_behind, pwru_bpf_objects, udp_send

pytestmark = pytest.mark.root


def test_ifindex_1_selects_loopback_as_pwrus_own_ci_case(pwru: object, netns: Netns) -> None:
    """A ping to 127.0.0.1 crosses lo, ifindex 1 in every namespace: every event is on lo; ifindex 2 (no such
    device in a new namespace) selects none."""
    before = pwru_bpf_objects()
    run: PwruRun = pwru("--output-json", "--filter-netns", netns.path,  # type: ignore[operator]
                        "--filter-skb-expr", "skb->dev->ifindex == 1", "icmp")  # fmt: skip
    run.start()
    netns.exec("ping", "-c", "2", "-i", "0.2", "127.0.0.1")
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    assert len(events) >= 4, run.stderr
    assert {e["iface"] for e in events} == {"lo:1"}, events[:3]
    other: PwruRun = pwru("--output-json", "--filter-netns", netns.path,  # type: ignore[operator]
                          "--filter-skb-expr", "skb->dev->ifindex == 2", "icmp")  # fmt: skip
    other.start()
    netns.exec("ping", "-c", "2", "-i", "0.2", "127.0.0.1")
    other.stop()
    assert other.returncode == 0, other.stderr
    assert other.json_events() == [], other.stdout
    assert left_behind(before) == set()


def _flows(a: Netns) -> None:
    """Flow A: 3 datagrams of 40 bytes over lo to port 9101; flow B: 3 of 400 bytes over the veth to 9102."""
    udp_send(a, "127.0.0.1", 9101, count=3, payload=b"a" * 40)
    udp_send(a, "10.99.0.2", 9102, count=3, payload=b"b" * 400)


def _ports(run: PwruRun) -> set[int]:
    return {e["tuple"]["dport"] for e in run.json_events()}  # type: ignore[index]


@pytest.mark.parametrize(
    ("expr", "ports"),
    [
        ("skb->len > 200 && skb->dev->ifindex != 1", {9102}),
        ("(skb->len < 200 || skb->dev->ifindex == 1) && skb->protocol == 0x0008", {9101}),
        ("!(skb->dev->ifindex == 1) && skb->len >= 400 + 8 + 20", {9102}),
        ('skb->dev->name == "a0"', {9102}),
        ('skb->dev->name != "a0" && skb->dev->name == "lo"', {9101}),
        ("skb->len > 0", {9101, 9102}),
    ],
)
def test_compound_expressions_select_one_of_two_flows(
    pwru: object, veth_pair: tuple[Netns, Netns], expr: str, ports: set[int]
) -> None:
    a, _b = veth_pair
    run: PwruRun = pwru("--output-json", "--filter-netns", a.path, "--filter-skb-expr", expr,  # type: ignore[operator]
                        "udp and (dst port 9101 or dst port 9102)")  # fmt: skip
    run.start()
    _flows(a)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert _ports(run) == ports, (expr, run.stdout[:2000])


def test_metadata_shows_a_mark_a_firewall_rule_set(pwru: object, netns: Netns) -> None:
    """iptables marks the datagrams in the namespace's OUTPUT chain; events after the mangle hook show it
    (text ` mark=42`, JSON under skb_metadata), earlier ones show 0; a char array shows as a string."""
    netns.exec("iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "--dport", "9103", "-j", "MARK",
               "--set-mark", "42")  # fmt: skip
    run: PwruRun = pwru("--filter-netns", netns.path, "--output-skb-metadata", "skb->mark",  # type: ignore[operator]
                        "--output-skb-metadata", "skb->dev->name,skb->len", "udp and dst port 9103")  # fmt: skip
    run.start()
    udp_send(netns, "127.0.0.1", 9103, count=2)
    run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()[1:]
    marked = [ln for ln in lines if re.search(r' mark=42 name="lo" len=\d+$', ln)]
    assert marked, run.stdout
    assert any(" mark=0 " in ln for ln in lines), "events before the mangle hook show the mark unset"
    for ln in marked:  # the LEN column and the len metadata read the same skb->len
        assert ln.split()[8] == ln.rsplit("len=", 1)[1], ln

    js: PwruRun = pwru("--output-json", "--filter-netns", netns.path,  # type: ignore[operator]
                       "--output-skb-metadata", "skb->mark", "udp and dst port 9103")  # fmt: skip
    js.start()
    udp_send(netns, "127.0.0.1", 9103, count=1)
    js.stop()
    events = js.json_events()
    assert {e["skb_metadata"]["skb->mark"] for e in events} >= {42}, events  # type: ignore[index]
    assert all(set(e["skb_metadata"]) == {"skb->mark"} for e in events)  # type: ignore[arg-type]
