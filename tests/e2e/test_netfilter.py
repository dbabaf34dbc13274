"""Netfilter-hook observation points end to end: real packets between namespaces made here, pwru as a process.

The points (``nf:HOOK@first|last``) exist only where the kernel has BPF netfilter links (>= 6.4); elsewhere
``--filter-trace-netfilter=true`` must refuse in one line, and these tests are skipped.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path

import pytest

from pwru.ebpf import features

from .conftest import Netns, PwruRun, run_cli, sh, udp_send

pytestmark = pytest.mark.root

Event = dict[str, object]
#: The runs that watch every namespace filter on a port of their own: other tests may flood port 9999 in their
#: namespaces meanwhile, and a run would drain their events rather than ours after its stop.
PORT = random.randrange(20000, 60000)


@pytest.fixture(autouse=True)
def _tracepoint_backend_with_netfilter_links(backend: str) -> None:
    if backend not in ("auto", "tracepoint"):
        pytest.skip("netfilter points are on by default with the tracepoint backend only")
    nf = features.netfilter_link()
    if not nf.available:
        pytest.skip(nf.reason)


def funcs(events: list[Event], netns: Netns | None = None) -> list[str]:
    return [str(e["func"]) for e in events if netns is None or e.get("netns") == netns.inode]


def dports(events: list[Event]) -> set[object]:
    return {e["tuple"].get("dport") for e in events if isinstance(e.get("tuple"), dict)} - {None}  # type: ignore[attr-defined]


def attached_hooks(stderr: str, ignored: int | None = 0) -> int:
    """The netfilter hooks the Attached line counts; ``ignored`` None: any number ignored (a run over every
    namespace may find one gone by the time it enters it, when other tests run at the same time)."""
    m = re.search(r"Attached \d+ tracepoints and (\d+) netfilter hooks \(ignored (\d+)\)", stderr)
    assert m, stderr
    assert ignored is None or int(m.group(2)) == ignored, stderr
    return int(m.group(1))


def netfilter_links_of(run: PwruRun) -> dict[int, int]:
    """The netfilter links pwru's process holds (link id -> program id), from its descriptors' fdinfo: only
    this run's, though other tests may run pwru at the same time."""
    assert run.proc is not None
    links: dict[int, int] = {}
    fdinfo = Path(f"/proc/{run.proc.pid}/fdinfo")
    for f in fdinfo.iterdir():
        try:
            info = dict(line.split(":", 1) for line in f.read_text().splitlines() if ":" in line)
        except OSError:  # a descriptor closed meanwhile
            continue
        if info.get("link_type", "").strip() == "netfilter":
            links[int(info["link_id"])] = int(info["prog_id"])
    return links


def still_in_kernel(links: dict[int, int], timeout: float = 10) -> set[str]:
    """Which of these links and their programs bpftool still lists after ``timeout`` seconds (the kernel frees
    a program whose last reference went a little later)."""
    deadline = time.monotonic() + timeout
    while True:
        link_ids = {ln["id"] for ln in json.loads(sh("bpftool", "-j", "link", "show").stdout or "[]")}
        prog_ids = {p["id"] for p in json.loads(sh("bpftool", "-j", "prog", "show").stdout or "[]")}
        left = {f"link:{i}" for i in links if i in link_ids} | {f"prog:{i}" for i in links.values() if i in prog_ids}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_udp_across_a_veth_pair_passes_both_ends_hooks(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, b = veth_pair
    run: PwruRun = pwru("--output-json", f"udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    udp_send(a, "10.99.0.2", PORT - 1)  # not matching the filter: seen nowhere
    udp_send(a, "10.99.0.2", PORT)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert attached_hooks(run.stderr, ignored=None) >= 60  # 20 in each namespace: a, b and pwru's own at least
    events = [e for e in run.json_events() if e.get("netns") in (a.inode, b.inode)]  # not other tests' packets
    assert dports(events) == {PORT}, (run.stderr, run.stdout[-3000:])
    sent, received = funcs(events, a), funcs(events, b)
    # The sender: every rule of OUTPUT and POSTROUTING lies between these two, before the device queue.
    for name in ("nf:OUTPUT@first", "nf:OUTPUT@last", "nf:POSTROUTING@first", "nf:POSTROUTING@last"):
        assert name in sent, sent
    assert sent.index("nf:OUTPUT@first") < sent.index("nf:POSTROUTING@last") < sent.index("tp:net_dev_queue")
    # The receiver: after the device, before the socket lookup that drops it (no socket): all hooks let it pass.
    for name in ("nf:PREROUTING@first", "nf:PREROUTING@last", "nf:INPUT@first", "nf:INPUT@last"):
        assert name in received, received
    drop = next(i for i, f in enumerate(received) if "SKB_DROP_REASON_NO_SOCKET" in f)
    assert received.index("tp:netif_receive_skb") < received.index("nf:PREROUTING@first")
    assert received.index("nf:PREROUTING@first") < received.index("nf:INPUT@last") < drop
    assert not [f for f in sent if f.startswith(("nf:PREROUTING", "nf:INPUT", "nf:FORWARD"))], sent
    assert not [f for f in received if f.startswith(("nf:OUTPUT", "nf:POSTROUTING", "nf:FORWARD"))], received
    nf = [e for e in events if str(e["func"]).startswith("nf:")]
    assert {e["proto"] for e in nf} == {0x0800}, nf[:2]
    # pid and comm (from the current task: netfilter programs have no pid/comm helpers) are the sender's, as
    # the tracepoint in the same process context shows them.
    process = {str(e["func"]): e["process"] for e in events if e.get("netns") == a.inode}
    assert process["nf:OUTPUT@first"] == process["tp:net_dev_queue"] and "ython" in str(process["tp:net_dev_queue"])


def test_a_filter_that_does_not_match_shows_no_hook(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, _b = veth_pair
    run: PwruRun = pwru("--output-json", f"udp and dst port {PORT + 1}")  # type: ignore[operator]
    run.start()
    udp_send(a, "10.99.0.2", PORT, count=3)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert attached_hooks(run.stderr, ignored=None) >= 60
    assert [e for e in run.json_events() if e.get("netns") in (a.inode, _b.inode)] == [], run.stdout


def test_a_router_namespace_shows_forward(pwru: object, netns_factory: object) -> None:
    a, r, c = (netns_factory() for _ in range(3))  # type: ignore[operator]
    sh("ip", "link", "add", "a0", "netns", a.name, "type", "veth", "peer", "name", "r1", "netns", r.name)
    sh("ip", "link", "add", "c0", "netns", c.name, "type", "veth", "peer", "name", "r2", "netns", r.name)
    for ns, dev, addr in ((a, "a0", "10.98.1.1/24"), (r, "r1", "10.98.1.2/24"), (r, "r2", "10.98.2.1/24"),
                          (c, "c0", "10.98.2.2/24")):  # fmt: skip
        ns.exec("ip", "addr", "add", addr, "dev", dev)
        ns.exec("ip", "link", "set", dev, "up")
    a.exec("ip", "route", "add", "default", "via", "10.98.1.2")
    c.exec("ip", "route", "add", "default", "via", "10.98.2.1")
    r.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
    run: PwruRun = pwru("--output-json", "--filter-netns", r.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    udp_send(a, "10.98.2.2", 9999)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert attached_hooks(run.stderr) == 20  # --filter-netns: that namespace's points only
    events = run.json_events()
    assert {e["netns"] for e in events} == {r.inode}, events
    hooks = [f for f in funcs(events) if f.startswith("nf:")]
    assert hooks == ["nf:PREROUTING@first", "nf:PREROUTING@last", "nf:FORWARD@first", "nf:FORWARD@last",
                     "nf:POSTROUTING@first", "nf:POSTROUTING@last"], hooks  # fmt: skip


def test_ipv6_uses_the_same_point_names(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, _b = veth_pair
    run: PwruRun = pwru("--output-json", "--filter-netns", a.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    udp_send(a, "fd99::2", 9999)
    run.stop()
    assert run.returncode == 0, run.stderr
    nf = [e for e in run.json_events() if str(e["func"]).startswith("nf:")]
    assert [e["func"] for e in nf] == ["nf:OUTPUT@first", "nf:OUTPUT@last", "nf:POSTROUTING@first",
                                       "nf:POSTROUTING@last"], nf  # fmt: skip
    assert {e["proto"] for e in nf} == {0x86DD}
    assert {(e["tuple"]["saddr"], e["tuple"]["daddr"]) for e in nf} == {("[fd99::1]", "[fd99::2]")}  # type: ignore[index]


def test_filter_netns_attaches_in_that_namespace_only(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, b = veth_pair
    run: PwruRun = pwru("--output-json", "--filter-netns", b.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    assert len(netfilter_links_of(run)) == 20  # 5 hooks x first/last x IPv4/IPv6, in b
    udp_send(a, "10.99.0.2", 9999)
    run.stop()
    assert attached_hooks(run.stderr) == 20
    events = run.json_events()
    assert {e["netns"] for e in events} == {b.inode}
    assert "nf:INPUT@last" in funcs(events)


def test_a_rule_that_drops_in_output_is_between_first_and_last(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, _b = veth_pair
    a.exec("nft", "add", "table", "inet", "pwt")
    a.exec("nft", "add chain inet pwt out { type filter hook output priority 0 ; }")
    a.exec("nft", "add rule inet pwt out udp dport 9999 drop")
    run: PwruRun = pwru("--output-json", "--filter-netns", a.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    sent = a.python(  # the drop on output reaches the sender as EPERM
        "import socket\ntry:\n    socket.socket(2, 2).sendto(b'x', ('10.99.0.2', 9999))\n"
        "except PermissionError:\n    print('EPERM')\n"
    )
    run.stop()
    assert sent.stdout.strip() == "EPERM"
    assert run.returncode == 0, run.stderr
    seen = funcs(run.json_events())
    assert "nf:OUTPUT@first" in seen, seen
    assert "nf:OUTPUT@last" not in seen and "nf:POSTROUTING@first" not in seen, seen
    assert any("SKB_DROP_REASON_NETFILTER_DROP" in f for f in seen), seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_netfilter_link_is_left_after_exit(pwru: object, veth_pair: tuple[Netns, Netns], sig: int) -> None:
    run: PwruRun = pwru(f"udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    links = netfilter_links_of(run)
    assert len(links) >= 60  # a, b and pwru's own namespace at least
    assert still_in_kernel(links, timeout=0) == {f"link:{i}" for i in links} | {f"prog:{i}" for i in links.values()}
    run.stop(sig)
    assert run.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL), run.stderr
    assert still_in_kernel(links) == set()


def test_off_and_on_by_flag(pwru: object, netns: Netns) -> None:
    off: PwruRun = pwru("--filter-trace-netfilter=false", "--filter-netns", netns.path, "udp")  # type: ignore[operator]
    off.start()
    udp_send(netns, "127.0.0.1", 9999)
    off.stop()
    assert re.search(r"Attached \d+ tracepoints \(ignored 0\)", off.stderr), off.stderr
    assert "nf:" not in off.stdout and "tp:kfree_skb" in off.stdout
    on: PwruRun = pwru("--filter-trace-netfilter", "true", "--filter-netns", netns.path, "udp")  # type: ignore[operator]
    on.start()
    udp_send(netns, "127.0.0.1", 9999)
    on.stop()
    assert attached_hooks(on.stderr) == 20
    assert "nf:OUTPUT@first" in on.stdout


def test_bad_value_one_line_exit_2() -> None:
    r = run_cli("--filter-trace-netfilter", "maybe")
    assert r.returncode == 2, r
    assert r.stderr.strip().splitlines() == [
        "pwru: --filter-trace-netfilter: invalid value 'maybe' (choose from auto, true, false)"
    ]
