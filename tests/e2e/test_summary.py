"""--summary end to end: floods of real datagrams in namespaces made here, counted in the kernel. The counts
equal what was sent, by reason and by hook, whatever the ring buffer loses."""

from __future__ import annotations

import json
import random
import re

import pytest

from pwru import discovery
from pwru.ebpf import features
from pwru.ebpf.btf import kernel_btf

from .conftest import Netns, PwruRun

pytestmark = pytest.mark.root

PORT = random.randrange(20000, 60000)
N_CLOSED, M_FIREWALLED = 3000, 2000
ROW = re.compile(r"^\s+(\d+)  (\w+)\s+(\S+)\s+(.+)$")


@pytest.fixture(autouse=True, scope="module")
def _drop_reasons() -> None:
    if "SKB_DROP_REASON_NETFILTER_DROP" not in discovery.drop_reasons(kernel_btf()).values():
        pytest.skip("this kernel reports no drop reasons NO_SOCKET and NETFILTER_DROP (before 5.17)")


def _floods(ns: Netns) -> None:
    """N datagrams to a port nothing listens on, M to one a rule drops in INPUT, all at once."""
    ns.exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(PORT + 1), "-j", "DROP")
    ns.python(
        "import socket\ns = socket.socket(2, 2)\n"
        f"for _ in range({N_CLOSED}):\n    s.sendto(b'x', ('127.0.0.1', {PORT}))\n"
        f"for _ in range({M_FIREWALLED}):\n    s.sendto(b'x', ('127.0.0.1', {PORT + 1}))\n"
    )


def _filter() -> str:
    return f"udp and (dst port {PORT} or dst port {PORT + 1})"


def _expected_hook() -> str:
    return "nf:ipv4/INPUT" if features.netfilter_link().available else "-"


def _last_table(text: str) -> dict[tuple[str, str, str], int]:
    """The rows of the last text table in ``text``: (verdict, reason, where) -> count."""
    tables = text.split("pwru summary after ")
    assert len(tables) > 1, text
    rows = {}
    for line in tables[-1].splitlines()[2:]:
        m = ROW.match(line)
        if m:
            rows[m.group(2), m.group(3), m.group(4).strip()] = int(m.group(1))
    return rows


def _lost(stderr: str) -> int:
    m = re.search(r"pwru: (\d+) events? printed, (\d+) lost", stderr)
    assert m, stderr
    return int(m.group(2))


def test_summary_alone_counts_exactly_and_writes_no_event(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--summary", "--output-json", "--filter-netns", netns.path, _filter())  # type: ignore[operator]
    run.start()
    _floods(netns)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert "pwru: 0 events printed, 0 lost" in run.stderr  # nothing went through the ring buffer
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout  # the summary is the output: one JSON object at exit
    s = json.loads(lines[0])["summary"]
    assert s["totals"]["dropped"] == N_CLOSED + M_FIREWALLED, s
    drops = {(r["reason"], r["where"]): r["count"] for r in s["rows"] if r["verdict"] == "dropped"}
    hook = _expected_hook()
    assert drops == {("NO_SOCKET", "__udp4_lib_rcv"): N_CLOSED, ("NETFILTER_DROP", hook): M_FIREWALLED}, drops
    explained = {r["reason"]: r["explanation"]["text"] for r in s["rows"] if "explanation" in r}
    assert "UDP port" in explained["NO_SOCKET"], explained
    assert s["not_broken_down"] == {}


def test_exact_next_to_events_with_a_tiny_ring(pwru: object, netns: Netns) -> None:
    """The ring buffer holds about 19 events: most events of the flood are lost, none of the counts."""
    run: PwruRun = pwru("--summary-events", "--output-ring-size", "4", "--filter-netns", netns.path,  # type: ignore[operator]
                        _filter())  # fmt: skip
    run.start()
    _floods(netns)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert _lost(run.stderr) > 0, run.stderr
    assert "pwru summary after" not in run.stdout  # with events, the table goes to stderr
    rows = _last_table(run.stderr)
    hook = _expected_hook()
    assert rows[("dropped", "NO_SOCKET", "__udp4_lib_rcv")] == N_CLOSED, rows
    assert rows[("dropped", "NETFILTER_DROP", hook)] == M_FIREWALLED, rows
    assert sum(n for (verdict, _, _), n in rows.items() if verdict == "dropped") == N_CLOSED + M_FIREWALLED


def test_interval_tables_and_text_to_stdout(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--summary-interval", "1", "--filter-netns", netns.path, _filter())  # type: ignore[operator]
    run.start()
    _floods(netns)
    import time

    time.sleep(2.5)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("pwru summary after ") >= 3, run.stdout  # two intervals and the exit
    rows = _last_table(run.stdout)
    assert rows[("dropped", "NO_SOCKET", "__udp4_lib_rcv")] == N_CLOSED, rows
    assert "nothing listens on that UDP port" in run.stdout
    assert "SKB " not in run.stdout  # no event header either
