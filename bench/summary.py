#!/usr/bin/env python3
"""The cost per packet of --summary alone against per-event output.

Runs pwru in three ways, alternating (``--runs`` times each), against the same loopback UDP flood (to a closed
port: every datagram is dropped with NO_SOCKET) in a namespace this script makes: ``--summary`` alone (the
kernel counts, writes no event), the per-event text output (to a file), and ``--summary-events`` (both). With
run-time statistics on (``BPF_ENABLE_STATS``), the kernel times every run of every BPF program (``run_cnt``,
``run_time_ns``); this script sums them over the programs pwru holds, after the flood, and divides by the
datagrams sent: the kernel's cost per packet, all probes included (programs on the free tracepoints run for
every skb the machine frees, so other traffic meanwhile adds to it). ``--summary`` with
``--filter-trace-netfilter=false`` shows what the netfilter points (hook attribution) cost. Each datagram to
the closed port also makes an ICMP error the kernel sends back, whose skb passes the same probes. It also
reports pwru's own CPU time per packet (user + system, from /proc, until its output stopped growing), the
events it printed per second, and the sender's datagrams per second.

    python3 bench/summary.py [--backend auto] [--runs 3] [--packets 50000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pwru.ebpf import syscall
from pwru.ebpf.fdinfo import held_ids

PORT = 9997
FILTER = f"udp and dst port {PORT}"
SENDER = rf"""
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
for _ in range(n):
    s.sendto(b"x", ("127.0.0.1", {PORT}))
print(n / (time.monotonic() - t))
"""
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    bpf_ns_per_packet: float
    runs_per_packet: float  # BPF program runs per datagram (every probe the datagram's skbs pass, and others')
    pwru_cpu_us_per_packet: float
    events_per_s: float
    sender_pps: float
    counted: int  # drops the summary counted (0 without one)


class _EnableStatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]  # BPF_STATS_RUN_TIME = 0


def enable_stats() -> int:
    """BPF_ENABLE_STATS: run-time statistics on while the returned descriptor is open (unlike the sysctl, another
    process turning the sysctl off meanwhile cannot turn them off under us)."""
    return syscall.bpf(syscall.Cmd.ENABLE_STATS, _EnableStatsAttr(0))


def prog_info(prog_id: int) -> dict[str, int]:
    show = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True, text=True)
    return json.loads(show.stdout) if show.returncode == 0 else {}  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def settle(out: Path, quiet: float = 1.0, limit: float = 120.0) -> None:
    """Until ``out`` (and its rotations) stopped growing for ``quiet`` seconds."""
    size, still, deadline = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        now = sum(p.stat().st_size for p in out.parent.glob(out.name + "*"))
        if now != size:
            size, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet:
            return
        time.sleep(0.1)


def one_run(cmd: list[str], netns: str, packets: int, tmp: Path) -> Result:
    ready = tmp / f"ready-{uuid.uuid4().hex[:6]}"
    out = tmp / f"out-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [*cmd, "--ready-file", str(ready), "--output-file", str(out), "--filter-netns", f"/run/netns/{netns}", FILTER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise SystemExit(f"pwru exited early: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.01)
        time.sleep(0.3)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        sender = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, str(packets)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        settle(out)
        elapsed = time.monotonic() - t0 - 1.0  # less the quiet second settle waited
        cpu = cpu_seconds(proc.pid) - cpu0
        progs = [prog_info(i) for i in held_ids(proc.pid, "prog_id")]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
    text = "".join(p.read_text(errors="replace") for p in sorted(tmp.glob(out.name + "*")))
    for p in tmp.glob(out.name + "*"):
        p.unlink()
    m = re.search(r"pwru: (\d+) events? printed", err)
    printed = int(m.group(1)) if m else 0
    counted = re.findall(r"^\s+(\d+)\s+dropped\s+NO_SOCKET", text + err, re.M)
    ns = sum(p.get("run_time_ns", 0) for p in progs)
    runs = sum(p.get("run_cnt", 0) for p in progs)
    return Result(ns / packets, runs / packets, cpu * 1e6 / packets, printed / max(elapsed, 1e-3), float(sender.stdout),
                  int(counted[-1]) if counted else 0)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=50_000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/summary.py: run as root")
    stats_fd = enable_stats()
    netns = f"pwb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    base = [sys.executable, "-m", "pwru", "--backend", args.backend]
    variants = {"--summary alone": [*base, "--summary"],
                "  without nf hooks": [*base, "--summary", "--filter-trace-netfilter=false"],
                "per-event output": base, "--summary-events": [*base, "--summary-events"]}  # fmt: skip
    results: dict[str, list[Result]] = {k: [] for k in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.runs):
                for label, cmd in variants.items():
                    results[label].append(one_run(cmd, netns, args.packets, Path(tmp)))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        os.close(stats_fd)
    print(f"{args.packets} datagrams per run, {args.runs} alternating runs, medians")
    print(f"{'':<18} {'BPF ns/pkt':>11} {'runs/pkt':>9} {'pwru CPU us/pkt':>16} {'events/s':>10} "
          f"{'sender pkt/s':>13} {'counted':>8}")
    for label, rows in results.items():
        med = [statistics.median(getattr(r, f) for r in rows) for f in Result.__dataclass_fields__]
        bpf, runs, cpu, eps, pps, counted = med
        print(f"{label:<18} {bpf:>11.0f} {runs:>9.1f} {cpu:>16.2f} {eps:>10,.0f} {pps:>13,.0f} {counted:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
