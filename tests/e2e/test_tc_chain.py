"""Kernels that refuse fentry (this machine's): --filter-trace-tc says what is missing; --filter-trace-tc-chain
shows a tc program's rewrite as the tuple before -> after, with tcx links first and last on each device.

The datapath is the tests' own (tests/data/bpf/datapath.c, see tests/e2e/datapath.py): ``tc_entry`` is attached
here with a tcx link on a0's egress and tail-calls ``nat_rewrite``, which rewrites 10.99.0.9 to 10.99.0.3.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pwru.ebpf import features, link, prog

from .conftest import SLOW, Netns, in_netns, left_behind, pwru_bpf_objects, udp_send, wait_ready
from .datapath import NAT_FROM, NAT_TO, datapath

pytestmark = pytest.mark.root


def test_trace_tc_without_fentry_is_one_line_naming_what_is_missing() -> None:
    if features.fentry("ip_rcv").available:
        pytest.skip("this kernel allows fentry (tests/e2e/test_lab_tc.py traces tc programs there)")
    before = pwru_bpf_objects()
    r = subprocess.run([sys.executable, "-m", "pwru", "--filter-trace-tc", "udp"], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--filter-trace-tc needs fentry/fexit" in lines[0] and "--filter-trace-tc-chain" in lines[0], lines[0]
    assert "EPERM" in lines[0], lines[0]
    assert left_behind(before) == set()


def test_tc_chain_shows_the_rewrite_before_and_after(veth_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    if not features.tcx().available:
        pytest.skip("no tcx links on this kernel")
    a, b = veth_pair
    with datapath(a, b, tmp_path, tc=False, xdp=False) as dp:
        entry = prog.Program.from_id(dp.prog_ids()["tc_entry"])
        try:
            with in_netns(a.path):
                tcx = link.attach_tcx(entry, a.ifindex("a0"), ingress=False)
        finally:
            entry.close()
        try:
            out, err, left = _run(a, tmp_path)
        finally:
            tcx.close()
    assert left == set()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    funcs = [e["func"] for e in events]
    assert "tcx:egress@first" in funcs, (funcs, err)
    first = next(e for e in events if e["func"] == "tcx:egress@first" and e["tuple"]["dport"] == 7000)
    assert str(first["iface"]).startswith("a0:"), first
    assert first["tuple"]["daddr"] == NAT_FROM, first
    # tc_entry's chain ends with TC_ACT_OK (not TCX_NEXT), so the skb's next event is past the tc layer: it
    # carries the note, before -> after.
    later = [e for e in events if e["skb"] == first["skb"] and e is not first]
    assert later and later[0]["tuple"]["daddr"] == NAT_TO, later
    note = later[0].get("tc_rewrite")
    assert note == f"10.99.0.1:{first['tuple']['sport']}->{NAT_FROM}:7000(udp) -> " \
                   f"10.99.0.1:{first['tuple']['sport']}->{NAT_TO}:7000(udp)", later[0]  # fmt: skip
    # The peer's ingress (b0, in B's netns, not watched) is not attached; a0's ingress saw nothing of this flow.
    assert all(str(e["iface"]).startswith("a0:") for e in events if str(e["func"]).startswith("tcx:")), events


def _run(a: Netns, tmp: Path) -> tuple[str, str, set[str]]:
    ready = tmp / "ready"
    before = pwru_bpf_objects()
    cmd = [sys.executable, "-m", "pwru", "--ready-file", str(ready), "--output-json", "--output-meta",
           "--output-tuple", "--filter-trace-tc-chain", "--filter-trace-netfilter", "false", "--filter-netns", a.path,
           "udp and port 7000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        wait_ready(proc, ready)
        udp_send(a, NAT_FROM, 7000)
        time.sleep(0.5 * SLOW)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "tc hooks" in err, err
    return out, err, left_behind(before)


def test_source_line_of_an_address_in_a_jit_compiled_program(veth_pair: tuple[Netns, Netns], tmp_path: Path) -> None:
    """The caller column's source line (pwru.bpf_lines): an address inside nat_rewrite's JIT code, on its
    bpf_skb_store_bytes call, maps to that line of datapath.c, named through the kallsyms symbol."""
    from pwru.bpf_lines import BpfLines
    from pwru.ebpf.kallsyms import Kallsyms

    a, b = veth_pair
    with datapath(a, b, tmp_path, tc=False, xdp=False) as dp:
        with prog.Program.from_id(dp.prog_ids()["nat_rewrite"]) as p:
            lines = p.jited_lines()
        assert lines, "no jited line info"
        store = next(ln for ln in lines if "bpf_skb_store_bytes(" in ln.text)
        src = Path(__file__).resolve().parent.parent / "data" / "bpf" / "datapath.c"
        assert src.read_text().splitlines()[store.line - 1].strip() == store.text.strip()
        sym = Kallsyms.load().lookup(store.address + 2)
        assert sym is not None and sym.module == "bpf" and sym.name.endswith("_nat_rewrite"), sym
        line = BpfLines().line(sym.name, store.address + 2)
        assert line.startswith(f"datapath.c:{store.line}: bpf_skb_store_bytes(skb, IP_DST_OFF"), line
