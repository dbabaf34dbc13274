#!/usr/bin/env python3
"""pwru's yardstick: start-up time, sustained event rate with zero loss, loss under overload, peak RSS.

Runs pwru as users do (a process, a pcap filter, output to a file), against a loopback UDP flood inside a network
namespace this script makes and deletes. Prints one table. Every figure comes from this run; compare tools only
side by side in one run (``--compare CMD`` runs another pwru-compatible command the same way).

    python3 bench/run.py [--backend auto] [--runs 5] [--seconds 5] [--compare "/path/to/pwru"]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

FILTER = "udp and dst port 9999"

SENDER = r"""
import socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
start = time.monotonic()
end = start + seconds
burst = 50
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - start) * rate) if rate > 0 else sent + burst
    while sent < due:
        s.sendto(b"x", ("127.0.0.1", 9999))
        sent += 1
    if rate > 0:
        time.sleep(0.001)
print(sent, time.monotonic() - start)
"""


@dataclass
class Result:
    printed: int
    lost: int
    wall: float
    sent: int
    rss_kb: int  # pwru's own peak (not the sender's, not other children's)
    cpu: float  # pwru's CPU seconds from ready to the end of the drain


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def finish(proc: subprocess.Popen[bytes]) -> tuple[bytes, int]:
    """Wait for ``proc``; its standard error and its own peak RSS in KiB (``wait4``, not RUSAGE_CHILDREN,
    which is the maximum over every child this script ever waited for, the sender included)."""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return err, usage.ru_maxrss


class Bench:
    def __init__(self, cmd: list[str], netns: str, workdir: Path) -> None:
        self.cmd = cmd
        self.netns = netns
        self.workdir = workdir
        self.idle_rss = 0  # peak RSS of start-up runs (ready, no event)

    def start(self, extra: list[str]) -> tuple[subprocess.Popen[bytes], float, Path]:
        ready = self.workdir / f"ready-{uuid.uuid4().hex[:6]}"
        out = self.workdir / f"out-{uuid.uuid4().hex[:6]}"
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*self.cmd, "--ready-file", str(ready), "--output-file", str(out), *extra, FILTER],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        while not ready.exists():
            if proc.poll() is not None:
                raise SystemExit(f"pwru exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.005)
        return proc, time.monotonic() - t0, out

    def startup(self, runs: int, extra: list[str]) -> list[float]:
        times = []
        for _ in range(runs):
            proc, t, _ = self.start(extra)
            times.append(t)
            proc.send_signal(signal.SIGINT)
            _, rss = finish(proc)
            self.idle_rss = max(self.idle_rss, rss)
        return times

    def flood(self, rate: float, seconds: float, extra: list[str]) -> Result:
        proc, _, out = self.start(extra)
        t0 = time.monotonic()
        cpu0 = cpu_seconds(proc.pid)
        sender = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", SENDER, str(rate), str(seconds)],
            capture_output=True,
            text=True,
            check=True,
        )
        time.sleep(0.5)  # let the reader drain
        cpu = cpu_seconds(proc.pid) - cpu0  # the reader's CPU time for this flood, start-up excluded
        proc.send_signal(signal.SIGINT)
        err, rss = finish(proc)
        wall = time.monotonic() - t0
        files = sorted(self.workdir.glob(out.name + "*"))  # the file and its rotated backups (100 MB each)
        printed = sum(sum(1 for _ in p.open("rb")) for p in files)
        text = err.decode(errors="replace")
        m = re.search(r"(\d+) lost", text)
        lost = int(m.group(1)) if m else -1
        for p in files:
            p.unlink()
        return Result(printed, lost, wall, int(sender.stdout.split()[0]), rss, cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tolerance", type=float, default=0.001, help="lost/printed allowed in the second rate column")
    ap.add_argument("--compare", help="another pwru-compatible command to measure the same way")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/run.py: run as root")

    netns = f"pwb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    try:
        tools = {"pwru (python)": [sys.executable, "-m", "pwru", "--backend", args.backend]}
        if args.compare:
            tools["compare"] = shlex.split(args.compare)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, cmd in tools.items():
                extra = ["--filter-netns", f"/run/netns/{netns}"]
                b = Bench(cmd, netns, Path(tmp))
                starts = b.startup(args.runs, extra)
                sustained, rss = find_zero_loss_rate(b, args.seconds, extra)
                tolerant, rss2 = find_zero_loss_rate(b, args.seconds, extra, args.tolerance)
                rss = max(rss, rss2)
                over = b.flood(0, args.seconds, extra)
                rows.append(
                    (label, statistics.median(starts), sustained, tolerant, over, max(rss, over.rss_kb), b.idle_rss)
                )
        tol_label = f"<={args.tolerance:.2%} lost"
        print(
            f"{'tool':<16} {'start->ready':>12} {'events/s, 0 lost':>17} {tol_label:>13} {'overload: due':>14} "
            f"{'printed':>9} {'lost':>9} {'accounted':>9} {'us CPU/event':>12} {'RSS idle':>9} {'peak RSS':>9}"
        )
        for label, start, sustained, tolerant, over, rss, idle in rows:
            accounted = over.printed + max(over.lost, 0)
            per_event = over.cpu / over.printed * 1e6 if over.printed else float("nan")
            print(
                f"{label:<16} {start:>11.3f}s {sustained:>17,.0f} {tolerant:>13,.0f} {'sent ' + str(over.sent):>14} "
                f"{over.printed:>9,} {over.lost:>9,} {accounted:>9,} {per_event:>12.2f} "
                f"{idle / 1024:>7.1f}MB {rss / 1024:>7.1f}MB"
            )
        print("(events per datagram depend on the backend: divide 'accounted' by 'sent' for it)")
        print("(us CPU/event: pwru's CPU time from ready to drained, per event printed, in the overload run;")
        print(" RSS is pwru's own peak (wait4): 'idle' in start-up runs, 'peak' over every run)")
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    return 0


def find_zero_loss_rate(b: Bench, seconds: float, extra: list[str], tolerance: float = 0.0) -> tuple[float, int]:
    """Highest datagram rate (doubling, then bisecting) with no event lost -- or at most ``tolerance`` of
    the events printed; returns events/s written, peak RSS.

    Why a tolerance: on this 6.18 kernel a handful of ``bpf_ringbuf_reserve`` calls fail now and then while
    the ring is nearly empty (seen: 5-40 lost per 50k-200k events with at most 2 MB of the 4 MB ring
    pending), so the strict figure measures that noise as much as the reader.
    """
    best_eps, rss = 0.0, 0
    lo, hi = 0.0, None
    rate = 1000.0
    for _ in range(8):
        r = b.flood(rate, seconds, extra)
        rss = max(rss, r.rss_kb)
        if r.printed > 0 and 0 <= r.lost <= tolerance * r.printed:
            best_eps = max(best_eps, r.printed / seconds)
            lo = rate
        else:
            hi = rate
        rate = rate * 2 if hi is None else (lo + hi) / 2
        if hi is not None and hi - lo < hi * 0.1:
            break
    return best_eps, rss


if __name__ == "__main__":
    raise SystemExit(main())
