"""pwru end to end: real packets in namespaces made here, real drops, pwru as a process."""

from __future__ import annotations

import gzip
import re
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import Netns, PwruRun, left_behind, pwru_bpf_objects, tcp_connect, udp_send

pytestmark = pytest.mark.root


def drop_events(events: list[dict[str, object]], reason: str) -> list[dict[str, object]]:
    return [e for e in events if reason in str(e.get("func", ""))]


def tuple_of(e: dict[str, object]) -> dict[str, object]:
    t = e.get("tuple")
    assert isinstance(t, dict), e
    return t


def test_udp_to_closed_port_is_dropped_with_no_socket(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-json", "--filter-netns", netns.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=2)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    drops = drop_events(events, "SKB_DROP_REASON_NO_SOCKET")
    assert drops, run.stdout + run.stderr
    t = tuple_of(drops[0])
    assert t["saddr"] == "127.0.0.1" and t["daddr"] == "127.0.0.1"
    assert t["dport"] == 9999
    assert t["proto"] == 17
    assert "kfree_skb" in str(drops[0]["func"]) or "skb_reason_drop" in str(drops[0]["func"])
    assert all(e.get("netns") == netns.inode for e in events)


def test_firewall_drop_shows_netfilter_reason(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, _b = veth_pair
    a.exec("nft", "add", "table", "inet", "pwt")
    a.exec("nft", "add chain inet pwt out { type filter hook output priority 0 ; }")
    a.exec("nft", "add rule inet pwt out tcp dport 8080 drop")
    run: PwruRun = pwru("--filter-netns", a.path, "tcp and dst port 8080")  # type: ignore[operator]
    run.start()
    tcp_connect(a, "10.99.0.2", 8080, timeout=0.5)
    run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:5] == ["SKB", "CPU", "PROCESS", "NETNS", "MARK/x"], lines[0]
    drops = [ln for ln in lines if "SKB_DROP_REASON_NETFILTER_DROP" in ln]
    assert drops, run.stdout + run.stderr
    assert re.search(r"10\.99\.0\.1:\d+->10\.99\.0\.2:8080\(tcp\)", drops[0]), drops[0]


def test_pcap_filter_runs_on_real_skbs(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-json", "--filter-netns", netns.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9998, count=3)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert run.json_events() == [], run.stdout

    run2: PwruRun = pwru("--output-json", "--filter-netns", netns.path, "udp and dst port 9999")  # type: ignore[operator]
    run2.start()
    udp_send(netns, "127.0.0.1", 9998, count=3)
    udp_send(netns, "127.0.0.1", 9999, count=1)
    run2.stop()
    events = run2.json_events()
    assert events, run2.stderr
    assert {tuple_of(e)["dport"] for e in events} == {9999}


def test_filter_ifname_and_netns_select_one_side(pwru: object, veth_pair: tuple[Netns, Netns]) -> None:
    a, b = veth_pair
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--filter-netns", b.path, "--filter-ifname", "b0", "udp and port 9999"
    )
    run.start()
    udp_send(a, "10.99.0.2", 9999, count=2)
    run.stop()
    events = run.json_events()
    assert events, run.stderr
    b0 = b.ifindex("b0")
    for e in events:
        assert e.get("netns") == b.inode
        assert str(e.get("iface", "")).endswith(f":{b0}") or str(e.get("iface")) == str(b0), e
    assert drop_events(events, "NO_SOCKET")


def test_filter_mark_set_by_firewall(pwru: object, netns: Netns) -> None:
    netns.exec("nft", "add", "table", "inet", "pwt")
    netns.exec("nft", "add chain inet pwt out { type filter hook output priority -150 ; }")
    netns.exec("nft", "add rule inet pwt out udp dport 9999 meta mark set 0x42")
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--filter-netns", netns.path, "--filter-mark", "0x42/0xff", "udp"
    )
    run.start()
    udp_send(netns, "127.0.0.1", 9998, count=2)  # unmarked
    udp_send(netns, "127.0.0.1", 9999, count=2)  # marked
    run.stop()
    events = run.json_events()
    assert events, run.stderr
    assert all(tuple_of(e)["dport"] == 9999 for e in events)
    assert all(int(str(e.get("mark", 0)), 0) == 0x42 for e in events)


def test_output_limit_lines_ends_the_run(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--output-limit-lines", "3", "--filter-netns", netns.path, "udp"
    )
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=5)
    run.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    assert len(run.json_events()) == 3


def test_output_file_rotates(pwru: object, netns: Netns, tmp_path: Path) -> None:
    out = tmp_path / "events.log"
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-file",
        str(out),
        "--output-file-max-size",
        "1",
        "--output-file-max-backups",
        "2",
        "--output-file-compress",
        "--filter-netns",
        netns.path,
        "udp",
    )
    # 1 MB per file: send enough events to rotate at least once (each line is ~150 bytes).
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1500, payload=b"x", interval=0.001)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert out.exists()
    rotated = sorted(p for p in tmp_path.iterdir() if p.name.startswith("events") and p != out)
    assert rotated, list(tmp_path.iterdir())
    assert len(rotated) <= 2
    total = 0
    for p in [out, *rotated]:
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        assert p.stat().st_size <= 1024 * 1024 + 4096
        total += data.count(b"\n")
    assert total > 1000


def test_ready_file_and_stack(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--output-stack", "--filter-netns", netns.path, "udp and dst port 9999"
    )
    run.start()
    assert run.ready_file.exists()
    udp_send(netns, "127.0.0.1", 9999)
    run.stop()
    drops = drop_events(run.json_events(), "NO_SOCKET")
    assert drops, run.stderr
    stack = drops[0].get("stack")
    assert isinstance(stack, str) and stack.startswith("\n"), drops[0]  # pwru's: a frame after each newline
    assert "udp" in stack, stack  # the UDP receive path is on the stack


def test_sigint_and_sigterm_leave_nothing_in_kernel(pwru: object, netns: Netns) -> None:
    before = pwru_bpf_objects()
    for sig in (signal.SIGINT, signal.SIGTERM):
        run: PwruRun = pwru("--filter-netns", netns.path, "udp")  # type: ignore[operator]
        run.start()
        assert pwru_bpf_objects() - before, "pwru attached nothing?"
        run.stop(sig)
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert left_behind(before) == set()


def test_summary_line_counts_events(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--filter-netns", netns.path, "udp and dst port 9999")  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999)
    run.stop()
    printed = len(run.stdout.splitlines()) - 1  # minus the header
    m = re.search(r"(\d+) events? printed, (\d+) lost", run.stderr)
    assert m, run.stderr
    assert int(m.group(1)) == printed
    assert int(m.group(2)) == 0


def test_listing_and_version() -> None:
    from .conftest import run_cli

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("pwru ")
    r = run_cli("--list-backends")
    assert r.returncode == 0
    assert {"kprobe-multi", "kprobe", "fentry", "tracepoint"} <= {
        ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["tcp port"], "invalid pcap filter"),
        (["--backend", "nope"], "--backend"),
        (["--filter-netns", "/proc/999999999/ns/net"], "--filter-netns"),
        (["--filter-ifname", "nosuchif0"], "--filter-ifname"),
        (["--filter-mark", "zz"], "--filter-mark"),
        (["--timestamp", "sometimes"], "--timestamp"),
    ],
)
def test_bad_input_one_line_exit_2(args: list[str], needle: str) -> None:
    r = subprocess.run([__import__("sys").executable, "-m", "pwru", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pwru: ") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
