#!/usr/bin/env python3
"""The kernel-side cost of a pwru flag: nanoseconds per program run, side by side with a plain run.

The method of ``bench/tracking.py`` (whose run helper this reuses): pwru runs against a loopback UDP flood in a
namespace this script makes, with ``kernel.bpf_stats_enabled`` on, and the kernel's own run counts and run
times of pwru's programs are read after the flood. The variants alternate, ``--runs`` times each; medians are
printed, and each variant's difference from the first: what the flag costs per event-program run.

    python3 bench/probe_cost.py --preset skb-expr [--backend auto] [--runs 3] [--packets 3000]
    python3 bench/probe_cost.py --variant plain= --variant 'mark=--output-skb-metadata skb->mark'
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking import FILTER, alternate

PRESETS = {
    "skb-expr": {
        "plain": [],
        "--filter-skb-expr ifindex": ["--filter-skb-expr", "skb->dev->ifindex == 1"],
        "--filter-skb-expr compound": [
            "--filter-skb-expr", '(skb->len > 20 || skb->mark == 7) && skb->dev->name == "lo" && skb->pkt_type < 8'],
        "--output-skb-metadata x3": ["--output-skb-metadata", "skb->mark,skb->dev->name,skb->len - skb->data_len"],
    },
}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=3000)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=ARGS", help="pwru flags (shell words)")
    args = ap.parse_args()
    variants = dict(PRESETS[args.preset]) if args.preset else {}
    for v in args.variant:
        label, _, words = v.partition("=")
        variants[label] = shlex.split(words)
    if len(variants) < 2:
        raise SystemExit("bench/probe_cost.py: give a --preset, or at least two --variant")
    base = [sys.executable, "-m", "pwru", "--backend", args.backend, "--filter-trace-netfilter=false"]
    results = alternate({label: [*base, *extra] for label, extra in variants.items()}, args.runs, args.packets, FILTER)
    width = max(len(label) for label in variants) + 2
    print(f"{'':<{width}} {'ns/run (event progs)':>21} {'ns/run (all)':>13} {'sender pkt/s':>13}")
    medians = {}
    for label, rows in results.items():
        ev, allp, pps = (statistics.median(col) for col in zip(*rows, strict=True))
        medians[label] = ev
        print(f"{label:<{width}} {ev:>21.0f} {allp:>13.0f} {pps:>13,.0f}")
    first = next(iter(variants))
    for label in list(variants)[1:]:
        print(f"{label}: {medians[label] - medians[first]:+.0f} ns per event-program run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
