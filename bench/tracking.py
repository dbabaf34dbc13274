#!/usr/bin/env python3
"""The kernel-side cost of skb tracking: nanoseconds per program run with and without --filter-track-skb.

Runs pwru twice, side by side in one invocation (alternating, ``--runs`` times each), against the same loopback
UDP flood in a namespace this script makes. With ``kernel.bpf_stats_enabled`` on, the kernel counts every run
of every BPF program and the time it took (``run_cnt``, ``run_time_ns``); this script reads them for the
programs pwru holds (through its link descriptors) after the flood. Prints the median ns per run of pwru's
event programs (the skb probes) and of all its programs, and the sender's datagrams per second.

    python3 bench/tracking.py [--backend auto] [--runs 3] [--packets 50000] [--miss]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pwru.ebpf.fdinfo import held_ids

FILTER = "udp and dst port 9999"
MISS = "udp and dst port 9998"  # --miss: a filter no datagram of the flood matches
SENDER = r"""
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
for _ in range(n):
    s.sendto(b"x", ("127.0.0.1", 9999))
print(n / (time.monotonic() - t))
"""
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_info(prog_id: int) -> dict[str, int]:
    show = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True, text=True)
    return json.loads(show.stdout) if show.returncode == 0 else {}  # type: ignore[no-any-return]


def one_run(cmd: list[str], netns: str, packets: int, tmp: Path, filt: str) -> tuple[float, float, float]:
    """(ns per event-program run, ns per run over all programs, sender datagrams/s)."""
    ready = tmp / f"ready-{uuid.uuid4().hex[:6]}"
    out = tmp / f"out-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [*cmd, "--ready-file", str(ready), "--output-file", str(out), "--filter-netns", f"/run/netns/{netns}", filt],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise SystemExit(f"pwru exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.01)
        sender = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, str(packets)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        time.sleep(0.5)
        progs = [prog_info(i) for i in held_ids(proc.pid, "prog_id")]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        for p in tmp.glob(out.name + "*"):
            p.unlink()

    def per_run(ps: list[dict[str, int]]) -> float:
        cnt = sum(p.get("run_cnt", 0) for p in ps)
        return sum(p.get("run_time_ns", 0) for p in ps) / cnt if cnt else float("nan")

    events = [p for p in progs if str(p.get("name", "")).startswith(("tp_skb", "kprobe_skb_", "fentry_skb_"))]
    events = [p for p in events if not str(p.get("name", "")).endswith("_free")]
    return per_run(events), per_run(progs), float(sender.stdout)


@contextmanager
def flood_netns() -> Iterator[tuple[str, Path]]:
    """As root: BPF run statistics on, and a namespace with loopback up (its name) and a scratch folder, for the
    duration; everything put back afterwards."""
    if os.geteuid() != 0:
        raise SystemExit(f"{sys.argv[0]}: run as root")
    was = STATS.read_text().strip()
    STATS.write_text("1")
    netns = f"pwb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory() as tmp:
            yield netns, Path(tmp)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        STATS.write_text(was)


def alternate(
    variants: dict[str, list[str]], runs: int, packets: int, filt: str
) -> dict[str, list[tuple[float, float, float]]]:
    """:func:`one_run` of each variant (a pwru command line), alternating, ``runs`` times each."""
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
    with flood_netns() as (netns, tmp):
        for _ in range(runs):
            for label, cmd in variants.items():
                results[label].append(one_run(cmd, netns, packets, tmp, filt))
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=50_000)
    ap.add_argument("--miss", action="store_true", help="a filter that matches nothing: the cost on unmatched skbs")
    args = ap.parse_args()
    base = [sys.executable, "-m", "pwru", "--backend", args.backend]
    variants = {"without tracking": base, "--filter-track-skb": [*base, "--filter-track-skb"]}
    results = alternate(variants, args.runs, args.packets, MISS if args.miss else FILTER)
    print(f"{'':<20} {'ns/run (event progs)':>21} {'ns/run (all)':>13} {'sender pkt/s':>13}")
    medians = {}
    for label, rows in results.items():
        ev, allp, pps = (statistics.median(col) for col in zip(*rows, strict=True))
        medians[label] = ev
        print(f"{label:<20} {ev:>21.0f} {allp:>13.0f} {pps:>13,.0f}")
    ratio = medians["--filter-track-skb"] / medians["without tracking"]
    print(f"tracking / without: {ratio:.2f}x per event-program run ({args.runs} alternating runs, medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
