"""Fuzz the pcap translator: hypothesis-generated pcap-filter(7) expressions (tests/filter_grammar.py), each
compiled by libpcap for Ethernet and raw IP, translated in both emission modes, run on generated packets by
the test eBPF machine (tests/ebpf_vm.py); every verdict must equal libpcap's ``pcap_offline_filter`` (the
return value, not only its truth). tests/kernel/test_filter_fuzz.py runs a slice of the same in the kernel.

A disagreement found here is kept: add the expression to tests/data/filter/regressions.txt, which
:func:`test_regressions_agree_with_libpcap` (and the kernel corpus test) replay on every packet.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pwru.filter import CompiledFilter, FilterError, compile_filter
from pwru.filter.pcap import PcapProgram
from tests.ebpf_vm import Program, run_on_packet
from tests.filter_grammar import expressions
from tests.filter_packets import PacketGen
from tests.filter_reference import uninitialized_scratch_read

REGRESSIONS = Path(__file__).resolve().parents[1] / "data" / "filter" / "regressions.txt"
#: Hypothesis examples per run; about 87 % compile, which makes the 10,000 compared expressions.
EXAMPLES = int(os.environ.get("PWRU_FILTER_FUZZ_EXAMPLES", "12500"))
MIN_COMPARED = min(10_000, EXAMPLES * 8 // 10)
PER_EXAMPLE = 8  # packets of each link type an expression is run on

_gen = PacketGen(20250101)
POOL_L2, POOL_L3 = _gen.packets(400)
JUNK = [_gen.junk() for _ in range(60)]


def regressions() -> list[str]:
    lines = REGRESSIONS.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def disagreements(f: CompiledFilter, packets: dict[str, list[bytes]], stats: Counter[str] | None = None) -> list[str]:
    """Every (link, mode, packet) on which the translation and libpcap differ (the translation still runs,
    and must not fault, where libpcap's verdict is undefined: see :func:`uninitialized_scratch_read`)."""
    found = []
    for link in ("l2", "l3"):
        prog = f.classic(link)  # type: ignore[arg-type]
        if prog is None:
            continue
        comparable = uninitialized_scratch_read(prog) is None
        if stats is not None and not comparable:
            stats["undefined in libpcap"] += 1
        ref = PcapProgram(prog)
        want = [ref.run(p) for p in packets[link]]
        for mode in ("direct", "probe"):
            vm = Program(f.to_ebpf(link, mode))  # type: ignore[arg-type]
            for pkt, exp in zip(packets[link], want, strict=True):
                got = run_on_packet(vm, pkt)
                if got != exp and comparable:
                    found.append(f"{f.expr!r} {link} {mode}: packet {pkt.hex()} pcap={exp} ebpf={got}")
    return found


def test_fuzz_translator_agrees_with_libpcap() -> None:
    stats: Counter[str] = Counter()
    failures: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(expr=expressions, seed=st.integers(0, 2**32 - 1))
    def one(expr: str, seed: int) -> None:
        stats["generated"] += 1
        try:
            f = compile_filter(expr)
        except FilterError:
            stats["refused by libpcap"] += 1
            return
        assert f is not None
        stats["compared"] += 1
        r = random.Random(seed)
        packets = {
            "l2": r.sample(POOL_L2, PER_EXAMPLE) + r.sample(JUNK, 2),
            "l3": r.sample(POOL_L3, PER_EXAMPLE) + r.sample(JUNK, 2),
        }
        found = disagreements(f, packets, stats)
        stats["runs"] += sum(len(p) for p in packets.values()) * 2
        if found:
            failures.extend(found)
        assert not found, "\n".join(found[:5]) + f"\n(keep {expr!r} in {REGRESSIONS})"

    start = time.monotonic()
    one()
    elapsed = time.monotonic() - start
    print(
        f"\nfilter fuzz: {stats['generated']} expressions generated, {stats['compared']} compared "
        f"({stats['refused by libpcap']} refused by libpcap; {stats['undefined in libpcap']} programs read "
        f"uninitialized scratch memory in libpcap), about {stats['runs']} eBPF runs, "
        f"{len(failures)} disagreements, {elapsed:.1f} s"
    )
    assert stats["compared"] >= MIN_COMPARED, stats


def test_regressions_agree_with_libpcap() -> None:
    exprs = regressions()
    assert exprs
    packets = {"l2": POOL_L2 + JUNK, "l3": POOL_L3 + JUNK}
    found: list[str] = []
    for expr in exprs:
        f = compile_filter(expr)
        assert f is not None
        found += disagreements(f, packets)
    assert not found, "\n".join(found[:10])
