"""skb tracking on every backend of the kernel lab: one pwru run per backend (module-scoped) and three scenarios.

Two namespaces joined by a veth pair (a0 10.99.0.1 <-> b0 10.99.0.2):

* **DNAT**: an nftables rule in A's output path rewrites 10.99.9.9:7 to 10.99.0.2:9; the filter names only
  10.99.9.9. With --filter-track-skb the events after the rewrite (in A, then in B down to the drop) are shown
  with the skb address of the events before it.
* **a clone**: an AF_PACKET socket on a0 makes the kernel clone each outgoing skb (``dev_queue_xmit_nit``); the
  clone of a tracked skb is tracked: events of the post-NAT tuple at another skb address.
* **a non-skb function**: ``--filter-non-skb-funcs fib_table_lookup`` shows the route lookup of the received
  packet with that packet's skb.
* **veth's XDP rebuild**: where the kernel has ``veth_convert_skb_to_xdp_buff``, an XDP program on b0 makes veth
  hand XDP a new skb for each received one; the new skb inherits the old one's tracking.
* **the set empties**: datagrams to a socket in B that reads them are freed through the NAPI skb cache on 6.x;
  where kprobes or fentry exist, pwru hooks the free functions and the set is empty again.

Function backends only where the scenario needs them: the tracepoint backend sees no locally sent skb before NAT.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import R0
from pwru.ebpf.btf import Kind, Spec, kernel_btf
from pwru.ebpf.link import attach_xdp
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import ProgType

from .conftest import (
    BACKENDS,
    SLOW,
    Netns,
    in_netns,
    left_behind,
    map_entries,
    pwru_bpf_objects,
    sh,
    udp_send,
    wait_ready,
)

pytestmark = pytest.mark.root

FUNCTION_BACKENDS = {"kprobe-multi", "kprobe", "fentry"}
VIP, VPORT = "10.99.9.9", 7
REAL, RPORT = "10.99.0.2", 9
SINK_PORT = 9400
SINK_PACKETS = 300
FILTER = f"(dst host {VIP}) or (udp and dst port {SINK_PORT})"
#: Enough functions for every scenario, few enough to attach quickly under emulation.
FUNCS = (
    "ip_output|ip_finish_output2?|__?ip_local_out|ip_rcv|ip_rcv_core|ip_local_deliver(_finish)?|udp_rcv|__udp4_lib_rcv"
    "|packet_rcv|tpacket_rcv|skb_copy_datagram_iter|consume_skb|kfree_skb(_reason)?|sk_skb_reason_drop"
    "|__dev_queue_xmit|dev_hard_start_xmit|netif_rx|__netif_receive_skb_core.*|nf_hook_slow"
)


@dataclass
class TrackRun:
    backend: str
    events: list[dict[str, object]]
    stderr: str
    returncode: int
    tracked_after_sink: int
    left_in_kernel: set[str]
    veth_xdp: bool  # an XDP program on b0 made veth rebuild the skbs it received (veth_convert_skb_to_xdp_buff)


#: The function backends to run: kprobe-multi stands for kprobes where the kernel has it (the kprobe backend is
#: run on the kernels without it), which keeps the lab's time in bounds.
TRACK_BACKENDS = [b for b in BACKENDS if b in FUNCTION_BACKENDS and not (b == "kprobe" and "kprobe-multi" in BACKENDS)]


@pytest.fixture(scope="module", params=TRACK_BACKENDS or ["none"])
def track_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackRun]:
    backend = str(request.param)
    if backend == "none":
        pytest.skip("needs a function backend (kprobe-multi, kprobe, fentry)")
    tmp = tmp_path_factory.mktemp(f"track-{backend}")
    a, b = Netns(f"pwta-{os.getpid()}"), Netns(f"pwtb-{os.getpid()}")
    for ns in (a, b):
        sh("ip", "netns", "add", ns.name)
    try:
        sh("ip", "link", "add", "a0", "netns", a.name, "type", "veth", "peer", "name", "b0", "netns", b.name)
        for ns, dev, addr in ((a, "a0", "10.99.0.1/24"), (b, "b0", "10.99.0.2/24")):
            ns.exec("ip", "link", "set", "lo", "up")
            ns.exec("ip", "addr", "add", addr, "dev", dev)
            ns.exec("ip", "link", "set", dev, "up")
        a.exec("ip", "route", "add", "10.99.9.0/24", "dev", "a0")
        a.exec("nft", "add", "table", "ip", "pwt")
        a.exec("nft", "add chain ip pwt out { type nat hook output priority -100 ; }")
        a.exec("nft", f"add rule ip pwt out ip daddr {VIP} udp dport {VPORT} dnat to {REAL}:{RPORT}")
        if not veth_rebuilds_for_xdp():
            yield _run(backend, a, b, tmp, veth_xdp=False)
            return
        with Program.load(ProgType.XDP, asm.assemble([asm.mov_imm(R0, 2), asm.exit_()]), name="t_xdp_pass") as prog:
            with in_netns(b.path):
                link = attach_xdp(prog, b.ifindex("b0"))
            try:
                yield _run(backend, a, b, tmp, veth_xdp=True)
            finally:
                link.close()
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns.name, check=False)


def veth_rebuilds_for_xdp() -> bool:
    """Whether the veth module has the function that rebuilds an skb for XDP (6.2+, as a function of its own)."""
    path = Path("/sys/kernel/btf/veth")
    return path.exists() and bool(Spec.load(path, base=kernel_btf()).find("veth_convert_skb_to_xdp_buff", Kind.FUNC))


def _run(backend: str, a: Netns, b: Netns, tmp: Path, veth_xdp: bool) -> TrackRun:
    ready = tmp / "ready"
    before = pwru_bpf_objects()
    cmd = [
        sys.executable, "-m", "pwru", "--backend", backend, "--ready-file", str(ready), "--output-json",
        "--filter-track-skb", "--filter-non-skb-funcs", "fib_table_lookup", "--filter-func", FUNCS, "--debug", FILTER,
    ]  # fmt: skip
    tap = a.python_background(  # an AF_PACKET socket on a0: outgoing skbs are cloned for it
        "import socket\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
        "s.bind(('a0', 0))\n"
        "print('ready', flush=True)\n"
        "while True: s.recv(2000)\n"
    )
    sink = b.python_background(
        "import socket\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{REAL}', {SINK_PORT}))\n"
        "print('ready', flush=True)\n"
        "while True: s.recv(100)\n"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    pid = proc.pid
    try:
        wait_ready(proc, ready)
        udp_send(a, VIP, VPORT, count=2, interval=0.1)
        udp_send(a, REAL, SINK_PORT, count=SINK_PACKETS, interval=0)
        deadline = time.monotonic() + 5 * SLOW
        while map_entries(pid, "tracked") and time.monotonic() < deadline:
            time.sleep(0.2)
        tracked = map_entries(pid, "tracked")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300 * SLOW)
    finally:
        for p in (proc, tap, sink):
            if p.poll() is None:
                p.kill()
                p.communicate()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    m = re.search(r"probes keeping kernel state only: (.*)", err)
    results = os.environ.get("PWRU_VM_RESULTS")
    if results:  # which free and copy functions this kernel let pwru hook, for the closing notes
        with open(Path(results) / "tracking.jsonl", "a") as f:
            f.write(json.dumps({"kernel": os.uname().release, "backend": backend, "probes": m.group(1) if m else ""}))
            f.write("\n")
    return TrackRun(backend, events, err, proc.returncode, tracked, left_behind(before), veth_xdp)


def tuple_of(e: dict[str, object]) -> tuple[object, object]:
    t = e.get("tuple")
    return (t.get("daddr"), t.get("dport")) if isinstance(t, dict) else (None, None)


def func(e: dict[str, object]) -> str:
    return str(e.get("func", "")).split("(")[0]


def test_exits_cleanly_and_leaves_nothing(track_run: TrackRun) -> None:
    assert track_run.returncode == 0, track_run.stderr
    assert "Traceback" not in track_run.stderr and track_run.left_in_kernel == set()
    assert " 0 untracked" in track_run.stderr, track_run.stderr
    assert "skb tracking: could not attach" not in track_run.stderr, track_run.stderr


def test_the_free_and_copy_functions_are_hooked(track_run: TrackRun) -> None:
    m = re.search(r"probes keeping kernel state only: (.*)", track_run.stderr)
    assert m, track_run.stderr
    hooked = {p.split("(")[0] for p in m.group(1).split()}
    assert {"tp:kfree_skb", "tp:consume_skb", "kfree_skbmem", "skb_clone"} <= hooked, hooked


def test_dnat_is_followed_with_the_same_skb(track_run: TrackRun) -> None:
    pre = {e["skb"] for e in track_run.events if tuple_of(e) == (VIP, VPORT)}
    post = [e for e in track_run.events if tuple_of(e) == (REAL, RPORT)]
    assert pre, [func(e) for e in track_run.events][:50]
    same = [func(e) for e in post if e["skb"] in pre]
    # After the rewrite in A's output path, the same skb leaves A.
    assert "ip_output" in same or "ip_finish_output" in same, same
    # In B (nothing listens on RPORT) it is received and dropped: the same skb, or the one veth rebuilt for XDP.
    received = [func(e) for e in post if track_run.veth_xdp or e["skb"] in pre]
    assert "ip_rcv" in received, received
    assert any(f in ("kfree_skb_reason", "sk_skb_reason_drop", "kfree_skb") for f in received), received


def test_veth_xdp_rebuild_inherits_tracking(track_run: TrackRun) -> None:
    if not track_run.veth_xdp:
        pytest.skip("no veth_convert_skb_to_xdp_buff to probe on this kernel (absent, or inlined: not in BTF)")
    pre = {e["skb"] for e in track_run.events if tuple_of(e) == (VIP, VPORT)}
    rebuilt = {e["skb"] for e in track_run.events if func(e) == "ip_rcv" and tuple_of(e) == (REAL, RPORT)} - pre
    assert rebuilt, [(func(e), e["skb"]) for e in track_run.events if tuple_of(e) == (REAL, RPORT)]


def test_a_clone_of_a_tracked_skb_is_tracked(track_run: TrackRun) -> None:
    pre = {e["skb"] for e in track_run.events if tuple_of(e) == (VIP, VPORT)}
    clones = [e for e in track_run.events if tuple_of(e) == (REAL, RPORT) and e["skb"] not in pre]
    assert any(func(e) in ("packet_rcv", "tpacket_rcv") for e in clones), [func(e) for e in clones]


def test_a_non_skb_function_shows_with_its_skb(track_run: TrackRun) -> None:
    received = {e["skb"] for e in track_run.events if func(e) == "ip_rcv" and tuple_of(e) == (REAL, RPORT)}
    lookups = [e for e in track_run.events if func(e) == "fib_table_lookup"]
    assert received and any(e["skb"] in received for e in lookups), (received, [e["skb"] for e in lookups])


def test_the_tracked_set_empties_when_a_socket_reads(track_run: TrackRun) -> None:
    sunk = [e for e in track_run.events if tuple_of(e) == (REAL, SINK_PORT)]
    assert sunk, track_run.stderr
    assert track_run.tracked_after_sink == 0
    assert not re.search(r"never seen freed", track_run.stderr), track_run.stderr


# --- --output-journey with copies (function backends: the copy probes tell a clone's parent) ----------------

JOURNEY_PORT = 9500  # closed in B


@dataclass
class JourneyRun:
    backend: str
    journeys: list[dict[str, object]]
    stderr: str
    returncode: int
    tap_pid: int
    left_in_kernel: set[str]


@pytest.fixture(scope="module", params=TRACK_BACKENDS or ["none"])
def journey_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JourneyRun]:
    """A datagram from A to a closed port in B, with an AF_PACKET socket on a0 reading the clones the kernel
    makes of outgoing skbs for it: one journey holds the datagram's skb (dropped in B) and its clone (read by the
    tap), linked by the skb_clone copy record."""
    backend = str(request.param)
    if backend == "none":
        pytest.skip("needs a function backend (kprobe-multi, kprobe, fentry)")
    tmp = tmp_path_factory.mktemp(f"journey-{backend}")
    a, b = Netns(f"pwja-{os.getpid()}"), Netns(f"pwjb-{os.getpid()}")
    for ns in (a, b):
        sh("ip", "netns", "add", ns.name)
    try:
        sh("ip", "link", "add", "a0", "netns", a.name, "type", "veth", "peer", "name", "b0", "netns", b.name)
        for ns, dev, addr in ((a, "a0", "10.99.0.1/24"), (b, "b0", "10.99.0.2/24")):
            ns.exec("ip", "link", "set", "lo", "up")
            ns.exec("ip", "addr", "add", addr, "dev", dev)
            ns.exec("ip", "link", "set", dev, "up")
        yield _journey(backend, a, tmp)
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns.name, check=False)


def _journey(backend: str, a: Netns, tmp: Path) -> JourneyRun:
    ready = tmp / "ready"
    before = pwru_bpf_objects()
    cmd = [
        sys.executable, "-m", "pwru", "--backend", backend, "--ready-file", str(ready), "--output-journey",
        "--output-json", "--output-journey-timeout", "500", "--filter-func", FUNCS,
        f"udp and dst port {JOURNEY_PORT}",
    ]  # fmt: skip
    tap = a.python_background(
        "import socket\n"
        "s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
        "s.bind(('a0', 0))\n"
        "print('ready', flush=True)\n"
        "while True: s.recv(2000)\n"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        wait_ready(proc, ready)
        udp_send(a, REAL, JOURNEY_PORT)
        time.sleep(2 * SLOW)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300 * SLOW)
    finally:
        for p in (proc, tap):
            if p.poll() is None:
                p.kill()
                p.communicate()
    journeys = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return JourneyRun(backend, journeys, err, proc.returncode, tap.pid, left_behind(before))


def test_a_journey_holds_the_clone_with_its_own_verdict(journey_run: JourneyRun) -> None:
    run = journey_run
    assert run.returncode == 0 and run.left_in_kernel == set(), run.stderr
    with_copies = [j for j in run.journeys if len(j["skbs"]) > 1]  # type: ignore[arg-type]
    assert with_copies, run.journeys
    j = with_copies[0]
    skbs = j["skbs"]
    assert isinstance(skbs, list) and skbs[0]["copy_of"] is None
    assert any(s["copy_of"] == skbs[0]["skb"] for s in skbs[1:]), skbs
    hops = j["hops"]
    assert isinstance(hops, list)
    assert any(h.get("copy_of") == skbs[0]["skb"] and h["func"] == "skb_clone" for h in hops), hops
    verdicts = {v["skb"]: v for v in j["verdicts"]}  # type: ignore[attr-defined]
    root = verdicts[skbs[0]["skb"]]
    assert root["verdict"] == "dropped", root
    # dev_queue_xmit_nit's clone is shared with the tap's packet_rcv, which clones it again and consumes it: the
    # tap reads the clone's clone.
    copies = [verdicts[s["skb"]] for s in skbs[1:]]
    assert any(v["verdict"] == "delivered" and str(v["process"]).endswith(f":{run.tap_pid}") for v in copies), j
