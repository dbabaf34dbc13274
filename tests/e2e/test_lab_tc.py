"""--filter-trace-tc and --filter-trace-xdp on a datapath of our own (kernels that allow fentry: the lab's).

One pwru run (module-scoped; a narrow --filter-func keeps its attach short in the emulated lab) traces the tc and
XDP programs of tests/data/bpf/datapath.c, loaded on a veth pair made here (see tests/e2e/datapath.py), while two
datagrams go from ns A to ns B:

* UDP to 10.99.0.9:7000: ``tc_entry`` (a0 egress) finds 10.99.0.9 in its hash map and tail-calls
  ``nat_rewrite``, which rewrites the destination to 10.99.0.3; B's XDP program passes it;
* UDP to 10.99.0.2:7001: ``xdp_drop`` on b0 drops it (XDP_DROP);
* the datapath is loaded again (new program ids) and its ``xdp_drop`` replaces the running one; a second
  datagram to 7001 is dropped by the new program, which pwru found while running.

With --output-bpfmap the NAT'd datagram's map operations are seen: both programs' hash lookups of the original
destination in ``nat_map``, and ``nat_rewrite``'s update and delete of its note in ``flows`` (a struct key and
value, decoded with the map's BTF).

The tests check the events of that run: the entry program's ``(tc)`` events, before (the original destination)
and at exit (the rewritten one, verdict TC_ACT_OK); ``(xdp)`` events with XDP_DROP and XDP_PASS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import SLOW, Netns, left_behind, pwru_bpf_objects, sh, udp_send, wait_ready
from .datapath import DROP_PORT, NAT_FROM, NAT_TO, Datapath, datapath

pytestmark = pytest.mark.root

FILTER = f"udp and (dst port 7000 or dst port {DROP_PORT})"
#: True for every XDP event of the scenario (b0's queue 0), through a string compare and a pointer chain.
XDP_EXPR = 'xdp->rxq->dev->name == "b0" && xdp->rxq->queue_index == 0'
XDP_METADATA = "xdp->rxq->dev->name,xdp->rxq->queue_index"


def fentry_allowed() -> bool:
    from pwru.ebpf import features

    return features.fentry("ip_rcv").available


@dataclass
class TcRun:
    events: list[dict[str, object]]
    stderr: str
    returncode: int
    left_in_kernel: set[str]

    def of(self, func: str) -> list[dict[str, object]]:
        return [e for e in self.events if e.get("func") == func]


def _tuple(e: dict[str, object]) -> dict[str, object]:
    t = e.get("tuple")
    assert isinstance(t, dict), e
    return t


@pytest.fixture(scope="module")
def lab_datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Datapath, Path]]:
    if not fentry_allowed():
        pytest.skip("this kernel refuses fentry (tests/e2e/test_tc_chain.py covers it)")
    tmp = tmp_path_factory.mktemp("lab-tc")
    tag = uuid.uuid4().hex[:6]
    a, b = Netns(f"pwtc-a-{tag}"), Netns(f"pwtc-b-{tag}")
    for ns in (a, b):
        sh("ip", "netns", "add", ns.name)
    try:
        for ns in (a, b):
            ns.exec("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "a0", "netns", a.name, "type", "veth", "peer", "name", "b0", "netns", b.name)
        for ns, dev, v4 in ((a, "a0", "10.99.0.1/24"), (b, "b0", "10.99.0.2/24")):
            ns.exec("ip", "addr", "add", v4, "dev", dev)
            ns.exec("ip", "link", "set", dev, "up")
        mac = b.exec("cat", "/sys/class/net/b0/address").stdout.strip()
        a.exec("ip", "neigh", "replace", "10.99.0.2", "lladdr", mac, "dev", "a0", "nud", "permanent")
        with datapath(a, b, tmp) as dp:
            yield dp, tmp
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns.name, check=False)


@pytest.fixture(scope="module")
def tc_run(lab_datapath: tuple[Datapath, Path]) -> TcRun:
    return _run(*lab_datapath)


@pytest.fixture(scope="module")
def fentry_map_run(lab_datapath: tuple[Datapath, Path], tc_run: TcRun) -> TcRun:
    """--output-bpfmap with the fentry backend (fexit on the lookups), the skb's call chain taken at
    __dev_queue_xmit (no --filter-trace-tc): one NAT'd datagram."""
    dp, tmp = lab_datapath
    ready = tmp / "ready-fentry"
    before = pwru_bpf_objects()
    cmd = [sys.executable, "-m", "pwru", "--ready-file", str(ready), "--output-json", "--backend", "fentry",
           "--output-bpfmap", "--filter-func", "__dev_queue_xmit", "--filter-trace-netfilter", "false",
           "udp and dst port 7000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        wait_ready(proc, ready)
        udp_send(dp.a, NAT_FROM, 7000)
        time.sleep(0.3 * SLOW)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return _result(proc.returncode, out, err, before, "fentry --output-bpfmap run")


def _result(returncode: int, out: str, err: str, before: set[str], label: str = "") -> TcRun:
    """A finished run's events and what it left in the kernel; its output also goes to the lab's results
    directory, for a failure's reading."""
    results = os.environ.get("PWRU_VM_RESULTS")
    if results:
        with open(Path(results) / "tc-run.txt", "a") as f:
            f.write(f"{os.uname().release} {label}\n{err}\n{out}\n")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return TcRun(events, err, returncode, left_behind(before))


def _run(dp: Datapath, tmp: Path) -> TcRun:
    a = dp.a
    ready = tmp / "ready"
    before = pwru_bpf_objects()
    cmd = [sys.executable, "-m", "pwru", "--ready-file", str(ready), "--output-json", "--output-meta",
           "--output-tuple", "--output-caller", "--filter-trace-tc", "--filter-trace-xdp", "--filter-func", "ip_rcv",
           "--filter-track-bpf-helpers", "--filter-xdp-expr", XDP_EXPR, "--output-xdp-metadata", XDP_METADATA,
           "--output-skb-metadata", "skb->mark",
           "--output-bpfmap", "--filter-trace-netfilter", "false", FILTER]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    err_lines: list[str] = []
    watched = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if "loaded since the start" in line:
                watched.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        wait_ready(proc, ready)
        udp_send(a, NAT_FROM, 7000)
        udp_send(a, "10.99.0.2", DROP_PORT)
        # A reload: new programs, found by the watcher within a second or so, the XDP one put in place.
        dp.reload_xdp()
        watched.wait(30 * SLOW)
        udp_send(a, "10.99.0.2", DROP_PORT)
        time.sleep(0.3 * SLOW)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        out = proc.stdout.read()  # stderr is the reader thread's
        proc.wait(timeout=300 * SLOW)
        reader.join(10)
        err = "".join(err_lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return _result(proc.returncode, out, err, before)


def test_exits_cleanly_and_leaves_nothing(tc_run: TcRun) -> None:
    assert tc_run.returncode == 0, tc_run.stderr
    assert "Traceback" not in tc_run.stderr
    assert tc_run.left_in_kernel == set()
    assert "BPF programs" in tc_run.stderr, tc_run.stderr  # the Attached line counts them


def test_tc_entry_program_before_and_after_the_rewrite(tc_run: TcRun) -> None:
    tc = tc_run.of("tc_entry(tc)")
    assert tc, [e.get("func") for e in tc_run.events]
    entries = [e for e in tc if "prog_verdict" not in e]
    exits = [e for e in tc if "prog_verdict" in e]
    assert entries and exits, tc
    # At entry the original destination; at exit (after the tail call's rewrite) the new one, with the verdict.
    assert (_tuple(entries[0])["daddr"], _tuple(entries[0])["dport"]) == (NAT_FROM, 7000)
    rewritten = [e for e in exits if _tuple(e)["dport"] == 7000]
    assert rewritten, exits
    assert _tuple(rewritten[0])["daddr"] == NAT_TO
    assert rewritten[0]["prog_verdict"] == "TC_ACT_OK"
    assert entries[0]["skb"] == rewritten[0]["skb"]
    assert str(entries[0].get("iface")).startswith("a0:"), entries[0]


def test_tail_called_program_has_no_trampoline_events(tc_run: TcRun) -> None:
    """A tail call enters nat_rewrite past its trampoline: it is attached (it is a tc program) but never fires;
    its work shows in tc_entry's exit (the test above)."""
    assert not tc_run.of("nat_rewrite(tc)")


def test_xdp_drop_and_pass(tc_run: TcRun) -> None:
    xdp = tc_run.of("xdp_drop(xdp)")
    assert xdp, [e.get("func") for e in tc_run.events]
    verdicts = {(_tuple(e)["dport"], e.get("prog_verdict")) for e in xdp}
    assert (DROP_PORT, "XDP_DROP") in verdicts, verdicts
    assert (7000, "XDP_PASS") in verdicts, verdicts
    dropped = [e for e in xdp if e.get("prog_verdict") == "XDP_DROP"]
    assert _tuple(dropped[0])["daddr"] == "10.99.0.2" and str(dropped[0].get("iface")).startswith("b0:"), dropped[0]
    # The dropped datagram never reaches ip_rcv; the passed one does, with its rewritten destination.
    rcv = [_tuple(e) for e in tc_run.of("ip_rcv")]
    assert all(t["dport"] != DROP_PORT for t in rcv), rcv
    assert any(t["dport"] == 7000 and t["daddr"] == NAT_TO for t in rcv), rcv


REWRITE_HELPERS = ("bpf_skb_store_bytes", "bpf_l3_csum_replace", "bpf_l4_csum_replace")


def test_helpers_called_by_the_tail_called_program(tc_run: TcRun) -> None:
    entry = next(e for e in tc_run.of("tc_entry(tc)") if _tuple(e)["dport"] == 7000)
    for helper in REWRITE_HELPERS:
        calls = tc_run.of(helper)
        assert calls, (helper, [e.get("func") for e in tc_run.events])
        caller = str(calls[0].get("caller_func", ""))
        assert caller.startswith("bpf_prog_") and "_nat_rewrite" in caller, calls[0]
        assert calls[0]["skb"] == entry["skb"], calls[0]
        # The caller's source line, from the program's jited line info (clang -g): the call of this helper.
        assert "(datapath.c:" in caller and f": {helper}(skb" in caller, caller
    # The store comes after both checksum fixes (the program's order) and before tc_entry's exit event.
    order = [e.get("func") for e in tc_run.events if e["skb"] == entry["skb"]]
    assert order.index("bpf_skb_store_bytes") > order.index("bpf_l3_csum_replace") > order.index("bpf_l4_csum_replace")


def test_programs_loaded_after_the_start_are_traced(tc_run: TcRun) -> None:
    assert "BPF programs loaded since the start:" in tc_run.stderr, tc_run.stderr
    assert "xdp_drop(xdp)" in tc_run.stderr.split("loaded since the start:")[1].splitlines()[0]
    drops = [e for e in tc_run.of("xdp_drop(xdp)") if e.get("prog_verdict") == "XDP_DROP"]
    # One by the first program, one by its replacement (the first no longer runs): two source ports.
    assert len({_tuple(e)["sport"] for e in drops}) == 2, drops


def test_xdp_expression_and_metadata(tc_run: TcRun) -> None:
    """--filter-xdp-expr let every XDP event of b0 through; --output-xdp-metadata's values are in the XDP
    events, --output-skb-metadata's in the others (one tail, the fields by the event's kind)."""
    xdp = tc_run.of("xdp_drop(xdp)")
    assert xdp
    for e in xdp:
        assert e.get("skb_metadata") == {"xdp->rxq->dev->name": "b0", "xdp->rxq->queue_index": 0}, e
    for e in tc_run.of("tc_entry(tc)"):
        assert e.get("skb_metadata") == {"skb->mark": 0}, e


def _hex(addr: str) -> str:
    return bytes(int(p) for p in addr.split(".")).hex()


def _le32(addr: str) -> int:
    """An IPv4 address as a map's u32 holds it in network order, read as the little-endian number it is."""
    return int.from_bytes(bytes(int(p) for p in addr.split(".")), "little")


def _map_ops(run: TcRun, skb: object) -> list[dict[str, Any]]:
    """The map operations of ``skb`` after checking the run's: only the datapath's maps are ever shown (never
    pwru's own map operations), then ``skb``'s: both programs' lookups in nat_map (tc_entry's and, after the
    tail call, nat_rewrite's), found, with the new destination as the value; nat_rewrite's update and delete
    of its note in flows, decoded with the map's BTF."""
    ops = [e for e in run.events if "bpfmap" in e]
    assert ops, [e.get("func") for e in run.events]
    assert {e["bpfmap"]["map_name"] for e in ops} <= {"nat_map", "flows"}, ops
    mine = [e for e in ops if e["skb"] == skb]  # (a later packet may get the same skb address: keys tell)
    lookups = [e for e in mine if e["bpfmap"]["map_name"] == "nat_map" and e["bpfmap"]["key"] == _hex(NAT_FROM)]
    assert len(lookups) == 2, lookups
    for e in lookups:
        m = e["bpfmap"]
        assert str(e["func"]).endswith("_lookup_elem"), e
        assert (m["op"], m["found"], m["key_size"], m["value_size"]) == ("lookup", True, 4, 4), m
        assert m["key_decoded"] == _le32(NAT_FROM), m
        assert m["value_decoded"] == _le32(NAT_TO), m
    flows = [e for e in mine if e["bpfmap"]["map_name"] == "flows"]
    assert [e["bpfmap"]["op"] for e in flows] == ["update", "delete"], flows
    key = {"daddr": _le32(NAT_FROM), "dport": int.from_bytes((7000).to_bytes(2, "big"), "little"), "proto": 17,
           "pad": 0}  # fmt: skip
    update, delete = flows[0]["bpfmap"], flows[1]["bpfmap"]
    assert update["key_decoded"] == key and update["value_decoded"] == {"packets": 1, "tag": "natted"}, update
    assert delete["key_decoded"] == key and "value" not in delete, delete
    assert str(flows[0]["func"]).endswith("_update_elem") and str(flows[1]["func"]).endswith("_delete_elem")
    assert "map function" in run.stderr, run.stderr  # the Attached line counts them
    return lookups


def test_map_operations_made_for_the_packet(tc_run: TcRun) -> None:
    entry = next(e for e in tc_run.of("tc_entry(tc)") if _tuple(e)["dport"] == 7000)
    lookups = _map_ops(tc_run, entry["skb"])
    # the datagrams to 10.99.0.2 are not NAT'd: tc_entry's lookup misses, no value
    misses = [e["bpfmap"] for e in tc_run.events if "bpfmap" in e and e["bpfmap"]["key"] == _hex("10.99.0.2")]
    assert misses and all(m["found"] is False and "value" not in m for m in misses), misses
    # kprobes: the caller of each lookup is the program that made it, the tail-called one included. Before 5.14
    # a return probe sees the kretprobe trampoline where the return address was (a known limit, README).
    callers = {str(e.get("caller_func", "")) for e in lookups}
    if tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2]) < (5, 14):
        assert callers == {"kretprobe_trampoline+0x0"}, callers
        return
    assert any("_tc_entry" in c for c in callers) and any("_nat_rewrite" in c for c in callers), callers
    # with its source line, from the program's line info
    assert any("(datapath.c:" in c and "bpf_map_lookup_elem(&nat_map" in c for c in callers), callers


def test_map_operations_with_fentry(fentry_map_run: TcRun) -> None:
    run = fentry_map_run
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.left_in_kernel == set()
    sent = [e for e in run.of("__dev_queue_xmit")
            if (_tuple(e).get("daddr"), _tuple(e).get("dport")) == (NAT_FROM, 7000)]  # fmt: skip
    assert sent, [e.get("func") for e in run.events]
    _map_ops(run, sent[0]["skb"])
