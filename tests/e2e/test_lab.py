"""One pwru run per backend that exercises the scenarios every backend must get right.

Attaching ~1,500 kprobes takes tens of seconds in the kernel lab's emulated VMs, so instead of one pwru run per
check, each backend gets one run (module-scoped) that sees three kinds of traffic in a namespace made here:

* UDP to a closed port (9999): dropped with ``NO_SOCKET``;
* TCP to port 8080, dropped by an nftables rule on output: ``NETFILTER_DROP`` after ``nf_hook_slow``;
* TCP to port 8081, dropped by an iptables (legacy: x_tables) rule on output: with the function backends both
  drops name the table (and nftables' chain) whose verdict was DROP;
* UDP to port 9998: must not appear, the pcap filter (probe-read mode, on real skbs) rejects it.

The run also has the tunnel filters and --output-tunnel on (so every lab kernel's verifier sees that code): none
of this traffic is encapsulated, so they let it all through and no event has an inner tuple. The struct dumps
(--output-skb, --output-skb-shared-info, bpf_snprintf_btf) and --output-skb-cb are on for the same reason, and a
--filter-skb-expr that every skb of the scenario passes, and --output-skb-metadata.

The tests below then check the output of that run. Timings land in ``$PWRU_VM_RESULTS/timings.jsonl`` when
running inside the lab, for the closing notes of the kernel matrix.
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

from .conftest import BACKENDS, SLOW, Netns, left_behind, pwru_bpf_objects, sh, tcp_connect, udp_send, wait_ready

pytestmark = pytest.mark.root

FILTER = "(udp and dst port 9999) or (tcp and dst port 8080) or (tcp and dst port 8081)"
FUNCTION_BACKENDS = {"kprobe-multi", "kprobe", "fentry"}
#: True for every skb of the scenario, but through each kind of code the C-expression compiler emits (a dynamic
#: index, a bitfield-free signed char compare, a string compare through a pointer that may be NULL).
SKB_EXPR = 'skb->len != 0xffffffff && skb->cb[skb->len & 7] < 256 && skb->dev->name != "pwru-none"'


@dataclass
class LabRun:
    backend: str  # as resolved by pwru (never "auto")
    events: list[dict[str, object]]
    stderr: str
    returncode: int
    ready_seconds: float
    left_in_kernel: set[str]

    def funcs(self) -> list[str]:
        return [str(e.get("func", "")) for e in self.events]

    def summary(self) -> re.Match[str]:
        m = re.search(
            r"(\d+) events? printed, (\d+) lost; attached (\d+) in ([\d.]+) s, detached in ([\d.]+) s", self.stderr
        )
        assert m, self.stderr
        return m


@pytest.fixture(scope="module", params=BACKENDS)
def lab_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"lab-{backend}")
    ns = Netns(f"pwl-{os.getpid()}-{backend}")
    sh("ip", "netns", "add", ns.name)
    try:
        ns.exec("ip", "link", "set", "lo", "up")
        ns.exec("nft", "add", "table", "inet", "pwl")
        ns.exec("nft", "add chain inet pwl out { type filter hook output priority 0 ; }")
        ns.exec("nft", "add rule inet pwl out tcp dport 8080 drop")
        ns.exec("iptables-legacy", "-A", "OUTPUT", "-p", "tcp", "--dport", "8081", "-j", "DROP")
        yield _run_scenario(backend, ns, tmp)
    finally:
        sh("ip", "netns", "del", ns.name, check=False)


def _run_scenario(backend: str, ns: Netns, tmp: Path) -> LabRun:
    ready = tmp / "ready"
    before = pwru_bpf_objects()
    cmd = [
        sys.executable,
        "-m",
        "pwru",
        "--backend",
        backend,
        "--ready-file",
        str(ready),
        "--output-json",
        "--output-stack",
        "--output-caller",
        "--output-tunnel",
        "--output-skb",
        "--output-skb-shared-info",
        "--output-skb-cb",
        "--filter-tunnel-pcap-l2",
        "ip or ip6",
        "--filter-tunnel-pcap-l3",
        "udp or tcp",
        "--filter-skb-expr",
        SKB_EXPR,
        "--output-skb-metadata",
        "skb->len,skb->dev->name,skb->pkt_type",
        "--filter-netns",
        ns.path,
        FILTER,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        ready_seconds = wait_ready(proc, ready)
        udp_send(ns, "127.0.0.1", 9998)
        udp_send(ns, "127.0.0.1", 9999)
        tcp_connect(ns, "127.0.0.1", 8080, timeout=0.3)
        tcp_connect(ns, "127.0.0.1", 8081, timeout=0.3)
        time.sleep(1 * SLOW)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    left = left_behind(before)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    m = re.search(r"Attaching \d+ [\w ]+? \(([\w-]+)\)", err)  # "Attaching 30 tracepoints and 40 ... (tracepoint)"
    run = LabRun(m.group(1) if m else backend, events, err, proc.returncode, ready_seconds, left)
    results = os.environ.get("PWRU_VM_RESULTS")
    if results:
        s = run.summary()
        with open(Path(results) / "timings.jsonl", "a") as f:
            f.write(
                json.dumps(
                    {
                        "kernel": os.uname().release,
                        "backend": run.backend,
                        "ready_s": round(ready_seconds, 2),
                        "attached": int(s.group(3)),
                        "attach_s": float(s.group(4)),
                        "detach_s": float(s.group(5)),
                        "ignored": int(m2.group(1)) if (m2 := re.search(r"ignored (\d+)", err)) else None,
                        "events": len(events),
                    }
                )
                + "\n"
            )
    return run


def test_exits_cleanly_and_leaves_nothing(lab_run: LabRun) -> None:
    assert lab_run.returncode == 0, lab_run.stderr
    assert "Traceback" not in lab_run.stderr
    assert lab_run.left_in_kernel == set()
    s = lab_run.summary()
    assert int(s.group(1)) == len(lab_run.events)
    assert int(s.group(2)) == 0


def kernel_has_drop_reasons() -> bool:
    """Drop reasons came with 5.17; before, a drop is just ``kfree_skb`` (as cilium/pwru shows it there too)."""
    from pwru.ebpf.btf import kernel_btf

    return bool(kernel_btf().find("skb_drop_reason"))


def drop_events(run: LabRun, dport: int, reason: str) -> list[dict[str, object]]:
    """Events of the skb sent to ``dport`` at the point it was dropped: named by ``reason`` where the kernel has
    drop reasons, else at ``kfree_skb`` (function or tracepoint)."""
    found = []
    for e in run.events:
        t, func = e.get("tuple"), str(e.get("func", ""))
        if not isinstance(t, dict) or t.get("dport") != dport:
            continue
        if reason in func if kernel_has_drop_reasons() else func.split("(")[0] in ("kfree_skb", "tp:kfree_skb"):
            found.append(e)
    return found


def test_udp_closed_port_no_socket(lab_run: LabRun) -> None:
    drops = drop_events(lab_run, 9999, "SKB_DROP_REASON_NO_SOCKET")
    assert drops, lab_run.funcs()
    t = drops[0]["tuple"]
    assert isinstance(t, dict)
    assert (t["saddr"], t["daddr"], t["proto"]) == ("127.0.0.1", "127.0.0.1", 17)


def test_pcap_filter_rejects_other_port(lab_run: LabRun) -> None:
    ports = {e["tuple"].get("dport") for e in lab_run.events if isinstance(e.get("tuple"), dict)}  # type: ignore[attr-defined]
    assert 9999 in ports and 8080 in ports, ports
    assert 9998 not in ports


def test_firewall_drop_path(lab_run: LabRun) -> None:
    drops = drop_events(lab_run, 8080, "SKB_DROP_REASON_NETFILTER_DROP")
    tcp = [e for e in lab_run.events if isinstance(e.get("tuple"), dict) and e["tuple"].get("dport") == 8080]  # type: ignore[attr-defined]
    funcs = [str(e["func"]) for e in tcp]
    assert drops, funcs
    t = drops[0]["tuple"]
    assert isinstance(t, dict) and t["proto"] == 6 and t["saddr"] == "127.0.0.1"
    if lab_run.backend in FUNCTION_BACKENDS:
        drop = str(drops[0]["func"])
        if kernel_has_drop_reasons():
            assert re.match(r"(kfree_skb_reason|sk_skb_reason_drop)\(", drop), drop
        path = [f.split("(")[0] for f in funcs]
        for fn in ("ip_local_out", "__ip_local_out", "nf_hook_slow"):
            assert fn in path, path
        assert path.index("nf_hook_slow") < path.index(drop.split("(")[0])


def test_netfilter_drops_name_their_table_and_chain(lab_run: LabRun) -> None:
    """nft_do_chain's and ipt_do_table's DROP verdicts, on the drop events (kprobe and fentry backends)."""
    if lab_run.backend not in FUNCTION_BACKENDS:
        pytest.skip("the table walks are functions: kprobes or fentry")
    if not all(Path(f"/sys/kernel/btf/{m}").exists() for m in ("nf_tables", "ip_tables")):
        pytest.skip("no module BTF (Debian's 5.10): the walks' prototypes and structs are unknown")
    reason = "SKB_DROP_REASON_NETFILTER_DROP"
    nft, ipt = drop_events(lab_run, 8080, reason), drop_events(lab_run, 8081, reason)
    assert nft and ipt, lab_run.funcs()
    assert [(e.get("nf_table"), e.get("nf_chain")) for e in nft][:1] == [("pwl", "out")], nft
    assert [(e.get("nf_table"), e.get("nf_chain")) for e in ipt][:1] == [("filter", None)], ipt
    # Only the drops carry them.
    assert not [e for e in lab_run.events if "nf_table" in e and e not in nft + ipt]


def test_tunnel_filters_pass_packets_that_were_never_encapsulated(lab_run: LabRun) -> None:
    assert lab_run.events, lab_run.stderr
    assert not [e for e in lab_run.events if e.get("tunnel_tuple")], lab_run.events  # {}: no inner packet


def test_stack_and_caller(lab_run: LabRun) -> None:
    drops = drop_events(lab_run, 9999, "SKB_DROP_REASON_NO_SOCKET")
    assert drops, lab_run.funcs()
    stack = drops[0].get("stack")
    assert isinstance(stack, str) and "udp" in stack, stack
    # Netfilter programs may call no stack helper: their events have neither caller nor stack.
    nf = [e for e in lab_run.events if str(e.get("func", "")).startswith("nf:")]
    assert all("caller_func" not in e and not e.get("stack") for e in nf), nf[:2]  # empty: left out, as pwru
    callers = [str(e.get("caller_func", "")) for e in lab_run.events if e not in nf]
    assert callers and all(c and not c.startswith("0x") for c in callers), callers[:5]


def test_struct_dumps_on_every_event_but_netfilters(lab_run: LabRun) -> None:
    events = [e for e in lab_run.events if not str(e.get("func", "")).startswith("nf:")]
    assert events, lab_run.stderr
    for e in events:
        skb = str(e.get("sk_buff", ""))
        assert skb.startswith("(struct sk_buff){"), e
        assert f"\n .len = (unsigned int){e.get('len')},\n" in skb, (e.get("len"), skb[:400])  # its own member
        assert str(e.get("skb_shared_info", "")).startswith("(struct skb_shared_info){"), e
        assert isinstance(e.get("cb"), list) and len(e["cb"]) == 5, e  # type: ignore[arg-type]


def test_kprobe_multi_attaches_over_a_thousand(lab_run: LabRun) -> None:
    if lab_run.backend != "kprobe-multi":
        pytest.skip("kprobe-multi only")
    assert int(lab_run.summary().group(3)) > 1000


def test_skb_expressions_load_and_run_on_every_backend(lab_run: LabRun) -> None:
    """The compiled --filter-skb-expr let every event through (the ports test sees both flows) and each event
    carries its metadata: skb->len as the LEN field, the device name where there is a device."""
    assert lab_run.events, lab_run.stderr
    for e in lab_run.events:
        md = e.get("skb_metadata")
        assert isinstance(md, dict) and set(md) == {"skb->len", "skb->dev->name", "skb->pkt_type"}, e
        assert md["skb->len"] == e["len"], e
    assert {"lo"} <= {md["skb->dev->name"] for e in lab_run.events if isinstance(md := e["skb_metadata"], dict)}
