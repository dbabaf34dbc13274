#!/usr/bin/env python3
"""The kernel-side cost of --output-skb / --output-skb-shared-info: nanoseconds per event-program run.

Same method as ``bench/tracking.py`` (whose run helper this reuses): pwru runs against a loopback UDP flood in a
namespace this script makes, with ``kernel.bpf_stats_enabled`` on, and the kernel's own run counters and run
times of pwru's programs are read after the flood. Variants alternate, ``--runs`` times each; medians printed.
The difference between a variant and the plain run is what printing the struct(s) with ``bpf_snprintf_btf`` and
sending them through the ring buffer costs per event.

    python3 bench/skb_dump.py [--backend auto] [--runs 3] [--packets 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking import FILTER, STATS, one_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=3000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/skb_dump.py: run as root")
    was = STATS.read_text().strip()
    STATS.write_text("1")
    netns = f"pwb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    base = [sys.executable, "-m", "pwru", "--backend", args.backend, "--filter-trace-netfilter=false"]
    variants = {
        "plain": base,
        "--output-skb": [*base, "--output-skb"],
        "+ --output-skb-shared-info": [*base, "--output-skb", "--output-skb-shared-info"],
    }
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.runs):
                for label, cmd in variants.items():
                    results[label].append(one_run(cmd, netns, args.packets, Path(tmp), FILTER))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        STATS.write_text(was)
    print(f"{'':<28} {'ns/run (event progs)':>21} {'ns/run (all)':>13} {'sender pkt/s':>13}")
    medians = {}
    for label, rows in results.items():
        ev, allp, pps = (statistics.median(col) for col in zip(*rows, strict=True))
        medians[label] = ev
        print(f"{label:<28} {ev:>21.0f} {allp:>13.0f} {pps:>13,.0f}")
    for label in list(variants)[1:]:
        print(f"{label}: +{medians[label] - medians['plain']:.0f} ns per event-program run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
