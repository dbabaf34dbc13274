"""Benchmark: parse vmlinux BTF and discover skb targets (budget: 0.3 s for parse + discovery).

Run: ``PYTHONPATH=src python3 bench/btf_parse.py [path] [--repeat N]``. Prints the median of N runs for:
cold parse (bytes already read, fresh Spec), discovery (skb functions + tracepoints + drop reasons on that
fresh Spec), and the cache hit (``kernel_btf()`` once it is loaded).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pwru import discovery
from pwru.ebpf import btf

BUDGET = 0.3


def _median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path", nargs="?", default=str(btf.KERNEL_BTF_DIR / "vmlinux"))
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    t = time.perf_counter()
    data = Path(args.path).read_bytes()
    read = time.perf_counter() - t

    parse = _median(lambda: btf.Spec.from_bytes(data), args.repeat)

    counts: dict[str, int] = {}

    def discover() -> None:
        spec = btf.Spec.from_bytes(data)
        counts["functions"] = len(discovery.skb_functions(spec))
        counts["tracepoints"] = len(discovery.skb_tracepoints(spec))
        counts["reasons"] = len(discovery.drop_reasons(spec))

    both = _median(discover, args.repeat)
    btf.kernel_btf()
    hit = _median(btf.kernel_btf, args.repeat)
    spec = btf.Spec.from_bytes(data)

    rows = [
        ("read file", read),
        ("cold parse", parse),
        ("discovery", both - parse),
        ("parse + discovery", both),
        ("cache hit (kernel_btf)", hit),
    ]
    print(f"{args.path}: {len(data) / 1e6:.1f} MB, {len(spec)} types, {counts}")
    print(f"{'step':<24}{'median s':>10}")
    for name, secs in rows:
        print(f"{name:<24}{secs:>10.4f}")
    verdict = "ok" if both <= BUDGET else "OVER BUDGET"
    print(f"budget {BUDGET:.2f} s for parse + discovery: {verdict}")
    return 0 if both <= BUDGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
