"""--summary: how the selected skbs ended, counted in the kernel, printed as a table.

The free tracepoints are where an skb's last reference goes: ``kfree_skb`` (dropped, with the drop reason and
location) and ``consume_skb`` (consumed: freed after use: read from a socket, sent, merged). Every ``tp_skb``
load on one of them is told its verdict (``cfg_tp_verdict``, a member of ``enum pwru_verdict``) so the program
knows it ends the skb: it forgets the skb's netfilter attribution there, and with ``--summary`` (``cfg_summary``)
counts the end of a selected skb (the same tracking and filters as every event) in the per-CPU hash ``summary``
keyed by ``struct summary_key`` (pwru.h). Those tracepoints are attached for the counts whatever
``--filter-func`` says; without ``--summary-events`` nothing else is (no skb probe, no event: ``cfg_emit`` 0),
besides the netfilter points (attribution) and the tracking probes.

The counts are exact at any rate: they are updated in the kernel, not carried by the ring buffer. What they
count are skb ends: a clone is an skb of its own, and skbs the kernel frees without either tracepoint (the NAPI
cache, see :mod:`pwru.tracking`) are not counted. A drop whose key finds the map full is counted by verdict in
``summary_full``, so the totals stay exact and the table says how many are not broken down.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from pwru import discovery
from pwru.config import Config
from pwru.ebpf.btf import Spec
from pwru.ebpf.maps import Map
from pwru.explain import Explanation, explain
from pwru.output import fields
from pwru.output.names import sanitize
from pwru.output.sink import Sink
from pwru.probes import Attach, Probe
from pwru.records import RecordLayout

#: The free tracepoints and the verdict (``enum pwru_verdict`` member, lower-cased) each one gives.
END_TRACEPOINTS: dict[str, str] = {"kfree_skb": "dropped", "consume_skb": "consumed"}
#: The program that traces skb tracepoints.
TP_PROGRAM = "tp_skb"
#: Rows the kernel's count map holds (distinct verdict, reason, location, hook).
MAP_ENTRIES = 4096
#: ``struct summary_key``'s reason when the kernel reports none (``kfree_skb`` before 5.17).
NO_REASON = 0xFFFFFFFF
KEY_STRUCT = "summary_key"
COUNTS_MAP, FULL_MAP = "summary", "summary_full"


def mark_ends(probes: Sequence[Probe], verdicts: Mapping[str, int]) -> list[Probe]:
    """``probes`` with ``cfg_tp_verdict`` set on the ``tp_skb`` loads of the free tracepoints (``verdicts``: the
    object's ``enum pwru_verdict``, lower-cased names without the prefix -> values)."""
    out = []
    for p in probes:
        verdict = END_TRACEPOINTS.get(p.name) if p.kind == "tracepoint" and p.module is None else None
        if verdict is not None and p.program == TP_PROGRAM:
            p = dataclasses.replace(p, constants={**p.constants, "cfg_tp_verdict": verdicts[verdict]})
        out.append(p)
    return out


def probes(config: Config, spec: Spec, traced: Sequence[Probe]) -> list[Probe]:
    """The counting probes a summary adds: ``tp_skb`` on each free tracepoint ``traced`` lacks, writing no event;
    shown (in the Attached line) when the run prints no events, as they are then all it attaches."""
    if not config.output.summarises:
        return []
    have = {p.name for p in traced if p.kind == "tracepoint" and p.module is None and p.program == TP_PROGRAM}
    out = []
    for t in discovery.skb_tracepoints(spec):
        if t.name not in END_TRACEPOINTS or t.name in have or t.module is not None:
            continue
        constants = {"cfg_tp_skb_pos": t.skb_pos, "cfg_tp_reason_pos": t.reason_pos or 0,
                     "cfg_tp_location_pos": t.location_pos or 0, "cfg_emit": 0}  # fmt: skip
        out.append(Probe("tracepoint", t.name, TP_PROGRAM, Attach.TP_BTF, None, t.btf_id, t.skb_pos, t.reason_pos,
                         t.location_pos, constants=constants, shows=not config.output.events))  # fmt: skip
    return out


@dataclass(frozen=True)
class Row:
    """One line of the table: ``count`` ends with this verdict, reason and place."""

    verdict: str
    reason: str  # without SKB_DROP_REASON_; "-" for none
    where: str  # the drop location's function, ``nf:ipv4/INPUT`` for a netfilter drop, "-" for none
    count: int
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Counts:
    """The summary at one moment: totals by verdict, and the rows (drops broken down)."""

    totals: dict[str, int]
    rows: list[Row]
    not_broken_down: dict[str, int]  # ends counted while the map was full, by verdict


class Reader:
    """Reads the kernel's counts into :class:`Counts`: per-CPU values summed, keys decoded from the object's
    ``struct summary_key``, locations by function (offsets within one function are one row)."""

    def __init__(
        self,
        counts: Map,
        full: Map,
        key: RecordLayout,
        verdicts: Mapping[str, int],
        reasons: Mapping[int, str],
        function_of: Callable[[int], str],
    ) -> None:
        self._counts, self._full, self._key = counts, full, key
        self._verdict_names = {v: name for name, v in verdicts.items()}
        self._reasons = reasons
        self._function_of = function_of

    def _reason(self, value: int) -> str:
        if value == NO_REASON:
            return "-"
        return self._reasons.get(value, str(value)).removeprefix("SKB_DROP_REASON_")

    def read(self) -> Counts:
        grouped: dict[tuple[str, str, str], int] = {}
        for raw_key, values in self._counts.items():
            k = self._key.decode(raw_key)
            n = sum(int.from_bytes(v[:8], "little") for v in values) if isinstance(values, list) else 0
            verdict = self._verdict_names.get(k.verdict, str(k.verdict))
            reason = self._reason(k.reason) if verdict == "dropped" else "-"
            if reason == "SKB_CONSUMED":  # a kernel that reports consumption through kfree_skb
                verdict, reason = "consumed", "-"
            if verdict != "dropped":
                where = "-"
            elif fields.nf_known(k.nf_pf, k.nf_hook):
                where = "nf:" + fields.nf_text(k.nf_pf, k.nf_hook)
            else:
                where = sanitize(self._function_of(k.location)) if k.location else "-"
            grouped[verdict, reason, where] = grouped.get((verdict, reason, where), 0) + n
        full = {name: self._full.lookup_u64(v) or 0 for v, name in self._verdict_names.items()}
        names = [*END_TRACEPOINTS.values(), *sorted({v for v, _, _ in grouped} - set(END_TRACEPOINTS.values()))]
        totals = {name: sum(n for (verdict, _, _), n in grouped.items() if verdict == name) + full.get(name, 0)
                  for name in names}  # fmt: skip
        rows = [
            Row(verdict, reason, where, n, _explain(reason, where) if verdict == "dropped" else None)
            for (verdict, reason, where), n in sorted(grouped.items(), key=lambda kv: (kv[0][0] != "dropped", -kv[1]))
        ]
        return Counts(totals, rows, {v: n for v, n in full.items() if n})


def _explain(reason: str, where: str) -> Explanation | None:
    if reason == "-":
        return None
    if where.startswith("nf:"):
        return explain(reason, None, where.removeprefix("nf:"))
    return explain(reason, where if where != "-" else None)


def _totals_text(totals: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {verdict}" for verdict, n in totals.items())


def table(counts: Counts, elapsed: float, previous: Counts | None = None) -> list[str]:
    """The text table: a title line with the totals (and what changed since ``previous``), then one line per row
    with its explanation under each drop."""
    title = f"pwru summary after {elapsed:.1f} s: {_totals_text(counts.totals)} (skb ends the filters selected)"
    if previous is not None:
        delta = {v: n - previous.totals.get(v, 0) for v, n in counts.totals.items()}
        title += f"; since the last: {', '.join(f'+{n} {v}' for v, n in delta.items())}"
    lines = [title, f"{'COUNT':>12}  {'VERDICT':<9} {'REASON':<24} WHERE"]
    for r in counts.rows:
        lines.append(f"{r.count:>12}  {r.verdict:<9} {r.reason:<24} {r.where}")
        if r.explanation is not None:
            lines.append(f"{'':>14}{r.explanation.text}; check: {r.explanation.check}")
    for verdict, n in counts.not_broken_down.items():
        lines.append(f"{n:>12}  {verdict:<9} {'?':<24} ? (not broken down: the summary map's {MAP_ENTRIES} rows "
                     "were full)")  # fmt: skip
    return lines


def as_json(counts: Counts, elapsed: float) -> str:
    """The summary as one JSON object (``--output-json`` when the summary is the output)."""
    rows = []
    for r in counts.rows:
        d: dict[str, object] = {"verdict": r.verdict, "count": r.count}
        if r.verdict == "dropped":
            d.update(reason=r.reason, where=r.where)
        if r.explanation is not None:
            d["explanation"] = {"text": r.explanation.text, "check": r.explanation.check}
        rows.append(d)
    body = {"elapsed": round(elapsed, 3), "totals": counts.totals, "rows": rows,
            "not_broken_down": counts.not_broken_down}  # fmt: skip
    return json.dumps({"summary": body}, ensure_ascii=False, separators=(",", ":"))


class Reporter:
    """Prints the summary every ``interval`` seconds (0: never) and at the end. Where: into ``sink`` when the
    run prints no events (the summary is its output: stdout or --output-file), else to ``stderr`` (the event
    stream stays clean for whatever reads it)."""

    def __init__(
        self, reader: Reader, config: Config, sink: Sink, stderr: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._reader = reader
        self._interval = config.output.summary_interval
        self._json = config.output.json and not config.output.events
        self._sink = None if config.output.events else sink
        self._stderr = stderr
        self._clock = clock
        self._start = clock()
        self._next = self._start + self._interval if self._interval else float("inf")
        self._last: Counts | None = None

    def _print(self, counts: Counts) -> None:
        elapsed = self._clock() - self._start
        lines = [as_json(counts, elapsed)] if self._json else table(counts, elapsed, self._last)
        self._last = counts
        if self._sink is not None:
            self._sink.write_lines(lines)
            self._sink.flush()
        else:
            out = self._stderr or sys.stderr
            out.write("\n".join(lines) + "\n")
            out.flush()

    def tick(self) -> None:
        """Called by the read loop each turn: the table when an interval has passed."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval
        self._print(self._reader.read())

    def final(self) -> None:
        """The table at exit (after the probes are detached: no end is counted after it)."""
        self._print(self._reader.read())
