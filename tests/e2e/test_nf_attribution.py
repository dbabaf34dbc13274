"""Netfilter drop attribution end to end: real rules (iptables, ip6tables, nftables) in namespaces made here drop
real packets, and the drop event names the hook and family that dropped them (``nf_hook``/``nf_family`` in JSON,
``nf=ipv4/INPUT`` in text)."""

from __future__ import annotations

import random

import pytest

from pwru.ebpf import features

from .conftest import Netns, PwruRun, neighbours_known, udp_send

pytestmark = pytest.mark.root

PORT = random.randrange(20000, 60000)
DROP = "SKB_DROP_REASON_NETFILTER_DROP"


@pytest.fixture(autouse=True)
def _netfilter_links() -> None:
    nf = features.netfilter_link()
    if not nf.available:
        pytest.skip(nf.reason)


def _send(ns: Netns, host: str) -> None:
    """One datagram; a drop on output reaches the sender as EPERM, which is fine here."""
    family = 10 if ":" in host else 2
    ns.python(
        "import socket\ntry:\n"
        f"    socket.socket({family}, 2).sendto(b'x', ({host!r}, {PORT}))\n"
        "except PermissionError:\n    pass\n"
    )


def _drops(run: PwruRun) -> list[dict[str, object]]:
    return [e for e in run.json_events() if e.get("reason") == DROP]


@pytest.mark.parametrize(
    ("where", "rule", "dst", "family", "hook"),
    [
        ("b", ["iptables", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP"], "10.99.0.2", "ipv4",
         "INPUT"),
        ("a", ["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP"], "10.99.0.2", "ipv4",
         "OUTPUT"),
        ("a", ["ip6tables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP"], "fd99::2", "ipv6",
         "OUTPUT"),
        ("b", ["nft", f"add table inet pwa; add chain inet pwa in {{ type filter hook input priority 0 ; }}; "
               f"add rule inet pwa in udp dport {PORT} drop"], "fd99::2", "ipv6", "INPUT"),
    ],
)  # fmt: skip
def test_the_drop_names_its_hook_and_family(
    pwru: object, veth_pair: tuple[Netns, Netns], where: str, rule: list[str], dst: str, family: str, hook: str
) -> None:
    a, b = veth_pair
    neighbours_known(a, b)
    ns = a if where == "a" else b
    ns.exec(*rule)
    run: PwruRun = pwru("--output-json", "--filter-netns", ns.path, f"udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    _send(a, dst)
    run.stop()
    assert run.returncode == 0, run.stderr
    drops = _drops(run)
    assert drops, run.stdout
    assert {(d.get("nf_family"), d.get("nf_hook")) for d in drops} == {(family, hook)}, drops


def test_text_suffix_and_points_kept_without_showing_them(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    """--filter-func leaves the netfilter points out of the output: they are attached all the same, keeping the
    attribution state only, and the drop line names the hook after its location."""
    a, b = veth_pair
    b.exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP")
    drops = "tp:kfree_skb|kfree_skb_reason|sk_skb_reason_drop"  # the drop, whatever the backend
    run: PwruRun = pwru("--filter-func", drops, "--filter-netns", b.path, f"udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    udp_send(a, "10.99.0.2", PORT)
    run.stop()
    assert run.returncode == 0, run.stderr
    attached = next(ln for ln in run.stderr.splitlines() if ln.startswith("Attached "))
    assert "netfilter" not in attached, attached  # the points are not counted: they show nothing
    lines = [ln for ln in run.stdout.splitlines() if DROP in ln]
    assert lines and all(ln.rstrip().endswith(" nf=ipv4/INPUT") for ln in lines), run.stdout
    assert " nf:" not in run.stdout


def test_some_points_shown_the_others_kept(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    """One program load serves a priority at every hook: --filter-func showing some hooks' first points keeps
    the others (and every last point) attached for attribution only, and the shown ones keep their own names."""
    a, b = veth_pair
    b.exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP")
    drops = "tp:kfree_skb|kfree_skb_reason|sk_skb_reason_drop"
    run: PwruRun = pwru("--filter-func", f"nf:(PREROUTING|INPUT)@first|{drops}", "--filter-netns", b.path,  # type: ignore[operator]
                        f"udp and dst port {PORT}")  # fmt: skip
    run.start()
    udp_send(a, "10.99.0.2", PORT)
    run.stop()
    assert run.returncode == 0, run.stderr
    shown = [w for ln in run.stdout.splitlines() for w in ln.split() if w.startswith("nf:")]
    assert shown == ["nf:PREROUTING@first", "nf:INPUT@first"], run.stdout
    lines = [ln for ln in run.stdout.splitlines() if DROP in ln]
    assert lines and all(ln.rstrip().endswith(" nf=ipv4/INPUT") for ln in lines), run.stdout


def test_off_means_no_attribution(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, b = veth_pair
    b.exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-j", "DROP")
    run: PwruRun = pwru("--output-json", "--filter-trace-netfilter=false", "--filter-netns", b.path,  # type: ignore[operator]
                        f"udp and dst port {PORT}")  # fmt: skip
    run.start()
    udp_send(a, "10.99.0.2", PORT)
    run.stop()
    drops = _drops(run)
    assert drops and not any("nf_hook" in d for d in drops), drops
