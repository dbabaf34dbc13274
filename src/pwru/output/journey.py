"""``--output-journey``: one block per packet instead of one line per event.

An output of the pipeline (:class:`pwru.pipeline.Output`). Every event record joins the journey of its skb; a
``struct skb_copy`` record (sent by the kernel side's copy probes when journeys are on: a tracked skb was cloned
or copied, or replaced by veth) makes the new skb a member of its parent's journey, so clones and successors
are in the same block. A journey is printed when every skb of it ended (a free hop, see
:mod:`pwru.output.verdict`), or when none of its skbs had an event for ``--output-journey-timeout`` ms, or at
the end of the run. The block shows each hop with the time since the previous one, every change of tuple,
tunnel tuple or netns at the hop where it was first seen, the copies, and each skb's verdict (delivered to a
process, sent out of a device, dropped where and why with its explanation, consumed).

Memory is bounded: at most ``--output-journey-max`` journeys are held; one more prints the one idle longest
early, marked ``cut``. A journey holds at most ``--output-journey-max-hops`` hops (the raw records: 308 bytes a
hop with their list slot and label, measured with tracemalloc); at the bound the hops so far are printed as a
part marked ``cut`` and the journey goes on in a next part. So the records held are at most max x max-hops (512
x 256 by default: 38 MiB at the worst, a few kB per journey in practice), plus per journey its live skbs, which
the kernel's tracked set (``--filter-track-skb-max``) bounds.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pwru.config import OutputConfig
from pwru.explain import explain
from pwru.output import fields, verdict
from pwru.output.names import Names, sanitize
from pwru.output.sink import Sink
from pwru.records import Batch, Record, RecordLayout, Schema

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: How a journey's block came to be printed.
FREED = "freed"  # every skb of it ended
IDLE = "idle"  # no event for the timeout
CUT = "cut"  # a bound: too many journeys (the one idle longest), or too many hops (a part; it goes on)
EXIT = "exit"  # the run ended first


class Explained(Protocol):
    """A drop's explanation (:class:`pwru.explain.Explanation`)."""

    @property
    def text(self) -> str: ...

    @property
    def check(self) -> str: ...


#: ``explain(reason, location, nf_hook)`` (:func:`pwru.explain.explain`, the default).
Explainer = Callable[[str, "str | None", "str | None"], "Explained | None"]


@dataclass
class Verdict:
    """What happened to one skb."""

    kind: str  # verdict.DROPPED, DELIVERED, SENT, CONSUMED, UNKNOWN
    hop: str = ""  # the hop that decided it
    where: str = ""  # drop location (symbol), else the hop
    reason: str = ""  # drop reason name
    process: str = ""  # delivered: the reading process
    device: str = ""  # sent: the device
    nf_hook: str = ""  # NETFILTER_DROP: the hook
    nf_family: str = ""  # and its family, when the kernel side recorded it
    nf_table: str = ""  # the table whose verdict was DROP (kprobe/fentry backends)
    nf_chain: str = ""  # nftables: its base chain
    explanation: Explained | None = None
    why_unknown: str = ""  # UNKNOWN: how the journey ended without an outcome


@dataclass
class _Skb:
    """One skb of a journey, and what its hops so far say."""

    label: int  # its number in the journey (0: the first skb)
    addr: int
    parent: int | None = None  # the label of the skb it was copied from
    parent_addr: int = 0
    ended: bool = False
    outcome: Verdict | None = None
    tuple: fields.Tuple | None = None  # the last known outer tuple (IPv4/IPv6)
    tunnel: fields.Tuple | None = None  # the last known inner tuple
    netns: int | None = None
    process: str = ""
    nf_open: str | None = None  # the netfilter hook it entered (@first) and has not left (@last)
    hops: int = 0


@dataclass
class _Journey:
    number: int
    skbs: dict[int, _Skb]  # by label
    first_ts: int
    last_ts: int
    hops: list[tuple[int, bytes]] = field(default_factory=list)  # (skb label, raw record) in order
    part: int = 1
    prev_ts: int | None = None  # the previous printed hop's time (deltas go on across parts)
    labels: int = 1  # the next skb label
    total_hops: int = 0

    def live(self) -> int:
        return sum(not s.ended for s in self.skbs.values())


def _delta(ns: int) -> str:
    if ns < 1000:
        return f"+{ns}ns"
    if ns < 1_000_000:
        return f"+{ns / 1e3:.3f}us"
    if ns < 1_000_000_000:
        return f"+{ns / 1e6:.3f}ms"
    return f"+{ns / 1e9:.3f}s"


def _known(t: fields.Tuple) -> fields.Tuple | None:
    return t if t.l3_proto in (fields.ETH_P_IP, fields.ETH_P_IPV6) else None


def tuple_json(t: fields.Tuple, with_tcp_flags: bool) -> dict[str, Any]:
    """A tuple as the JSON output's ``tuple`` object."""
    d: dict[str, Any] = {
        "saddr": fields.address(t.l3_proto, t.saddr),
        "daddr": fields.address(t.l3_proto, t.daddr),
    }
    if fields.has_ports(t):
        d.update(sport=t.sport, dport=t.dport)
    d["proto"] = t.l4_proto
    if with_tcp_flags and t.l4_proto == 6 and t.tcp_flags:
        d["flags"] = fields.tcp_flags(t.tcp_flags)
    return d


class JourneyOutput:
    """The ``--output-journey`` output: groups event records into journeys and writes one unit per journey
    (a text block, or a JSON object with ``--output-json``) to its sink."""

    def __init__(
        self,
        config: OutputConfig,
        names: Names,
        sink: Sink,
        explain: Explainer = explain,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._config = config
        self._names = names
        self.sink = sink
        self._explain = explain
        self._clock = clock  # CLOCK_MONOTONIC in ns, as bpf_ktime_get_ns in the records
        self._timeout = config.journey_timeout * 1_000_000
        self._max = config.journey_max
        self._max_hops = config.journey_max_hops
        self._journeys: OrderedDict[int, _Journey] = OrderedDict()  # by number; least recently active first
        self._by_skb: dict[int, tuple[_Journey, _Skb]] = {}  # live skbs
        self._number = 0
        self._schema: Schema | None = None
        self._event_type = -1
        self._copy_type = -1
        self._unpack_event: Callable[[bytes], tuple[Any, ...]] | None = None
        self._event_layout: RecordLayout | None = None
        self._copy_layout: RecordLayout | None = None
        self._free_type = -1
        self._unpack_header: Callable[[bytes], tuple[Any, ...]] | None = None
        self._ends: dict[tuple[int, int], bool] = {}
        self.printed = 0  # journeys (and parts) written
        self._latest = 0  # the newest record's time

    # -- the Output protocol --

    def start(self) -> None:
        """Journeys have no header."""

    def consume(self, batch: Batch) -> None:
        self._learn(batch.schema)
        assert self._schema is not None and self._unpack_event is not None
        type_of, unpack = self._schema.type_of, self._unpack_event
        for buf in batch.records:
            rtype = type_of(buf)[0]
            if rtype == self._event_type:
                ts, skb, probe, probe_kind = unpack(buf)
                self._event(buf, ts, skb, probe, probe_kind)
            elif rtype == self._copy_type:
                self._copy(buf)
            elif rtype == self._free_type:
                self._free(buf)
        # A reader behind the kernel must not take the journeys it has not caught up with for idle: while
        # records come, time is the newest record's; once the reader is idle, the clock's.
        self._expire(self._latest)

    def idle(self) -> None:
        self._expire(self._clock())
        self.sink.flush()

    def close(self) -> None:
        try:
            for j in list(self._journeys.values()):
                self._finish(j, EXIT)
        finally:
            self.sink.close()

    # -- grouping --

    def _learn(self, schema: Schema) -> None:
        if schema is self._schema:
            return
        self._schema = schema
        self._event_type = schema.type_id("event")
        self._event_layout = schema.layout("event")
        self._unpack_event = self._event_layout.unpacker("ts", "skb", "probe", "probe_kind")
        self._unpack_header = schema.header.unpacker("ts", "skb", "probe", "probe_kind")
        self._copy_type = schema.types.get("skb_copy", -1)
        self._copy_layout = schema.layout("skb_copy") if self._copy_type >= 0 else None
        self._free_type = schema.types.get("skb_free", -1)

    def _ends_skb(self, probe_kind: int, probe: int) -> bool:
        key = (probe_kind, probe)
        ends = self._ends.get(key)
        if ends is None:
            if len(self._ends) >= fields.CACHE_LIMIT:
                self._ends.clear()
            ends = self._ends[key] = verdict.role(self._names.probe_name(probe_kind, probe)).ends
        return ends

    def _new_journey(self, skb: int, ts: int) -> tuple[_Journey, _Skb]:
        if len(self._journeys) >= self._max:
            self._finish(next(iter(self._journeys.values())), CUT, f"more than {self._max} journeys in progress")
        self._number += 1
        s = _Skb(0, skb)
        j = _Journey(self._number, {0: s}, ts, ts)
        self._journeys[j.number] = j
        self._by_skb[skb] = (j, s)
        return j, s

    def _event(self, buf: bytes, ts: int, skb: int, probe: int, probe_kind: int) -> None:
        found = self._by_skb.get(skb)
        j, s = found if found is not None else self._new_journey(skb, ts)
        self._add_hop(j, s.label, buf, ts)
        if self._ends_skb(probe_kind, probe):
            s.ended = True
            del self._by_skb[skb]
            if j.live() == 0:
                self._finish(j, FREED)
                return
        if len(j.hops) >= self._max_hops:
            self._print(j, CUT, f"more than {self._max_hops} hops: continued in part {j.part + 1}", final=False)

    def _add_hop(self, j: _Journey, label: int, buf: bytes, ts: int) -> None:
        j.hops.append((label, buf))
        j.total_hops += 1
        j.last_ts = max(j.last_ts, ts)
        self._latest = max(self._latest, ts)
        self._journeys.move_to_end(j.number)

    def _copy(self, buf: bytes) -> None:
        assert self._copy_layout is not None
        rec = self._copy_layout.decode(buf)
        found = self._by_skb.get(rec.parent)
        if found is None:
            return  # its parent is in no journey (printed already): the copy's events start their own
        j, parent = found
        old = self._by_skb.pop(rec.skb, None)
        if old is not None:
            old[1].ended = True  # a stale entry: the skb at that address ended unseen
            if old[0] is not j and old[0].live() == 0:
                self._finish(old[0], FREED)
        child = _Skb(j.labels, rec.skb, parent.label, parent.addr, tuple=parent.tuple, tunnel=parent.tunnel,
                     netns=parent.netns, process=parent.process, nf_open=parent.nf_open)  # fmt: skip
        j.labels += 1
        j.skbs[child.label] = child
        self._by_skb[rec.skb] = (j, child)
        self._add_hop(j, child.label, buf, rec.ts)

    def _free(self, buf: bytes) -> None:
        """A tracking probe saw a tracked skb's end (struct skb_free): where no event shows the free."""
        assert self._unpack_header is not None
        ts, skb, _, _ = self._unpack_header(buf)
        found = self._by_skb.get(skb)
        if found is None:
            return  # its journey ended already (at an event that ends it)
        j, s = found
        self._add_hop(j, s.label, buf, ts)
        s.ended = True
        del self._by_skb[skb]
        if j.live() == 0:
            self._finish(j, FREED)

    def _expire(self, now: int) -> None:
        if not self._journeys:
            return
        deadline = now - self._timeout
        while self._journeys:
            j = next(iter(self._journeys.values()))
            if j.last_ts > deadline:
                break
            self._finish(j, IDLE, f"no event for {self._config.journey_timeout} ms")

    def _finish(self, j: _Journey, end: str, why: str = "") -> None:
        self._journeys.pop(j.number, None)
        for s in j.skbs.values():
            if not s.ended:
                found = self._by_skb.get(s.addr)
                if found is not None and found[1] is s:
                    del self._by_skb[s.addr]
        self._print(j, end, why, final=True)

    # -- rendering --

    def _print(self, j: _Journey, end: str, why: str, final: bool) -> None:
        hops = self._walk(j)
        verdicts: list[tuple[_Skb, Verdict]] = []
        for s in list(j.skbs.values()):
            if s.ended or final:
                verdicts.append((s, self._verdict(s, end, why)))
        unit = (
            self._json(j, hops, verdicts, end, why, final)
            if self._config.json
            else self._text(j, hops, verdicts, end, why, final)
        )
        self.sink.write_lines([unit])
        self.printed += 1
        j.hops = []
        j.part += 1
        for s, _ in verdicts:
            if s.ended and not final:
                del j.skbs[s.label]  # printed with its verdict; the journey goes on with the others

    def _walk(self, j: _Journey) -> list[dict[str, Any]]:
        """The hops of the part as plain data, updating each skb's state (tuples, outcome, netfilter hook)."""
        assert self._event_layout is not None
        names = self._names
        out: list[dict[str, Any]] = []
        for label, buf in j.hops:
            s = j.skbs.get(label)
            if s is None:
                continue
            rtype = self._schema.type_of(buf)[0] if self._schema is not None else -1
            if rtype == self._free_type and self._unpack_header is not None:
                ts, skb, probe, probe_kind = self._unpack_header(buf)
                hop = {"kind": "free", "label": label, "skb": skb, "ts": ts,
                       "func": sanitize(names.probe_name(probe_kind, probe))}  # fmt: skip
                self._delta(j, hop, ts)
                out.append(hop)
                continue
            if rtype == self._copy_type and self._copy_layout is not None:
                rec = self._copy_layout.decode(buf)
                hop = {"kind": "copy", "label": label, "skb": rec.skb, "ts": rec.ts,
                       "func": sanitize(names.probe_name(rec.probe_kind, rec.probe)), "parent": s.parent,
                       "parent_addr": rec.parent}  # fmt: skip
                self._delta(j, hop, rec.ts)
                out.append(hop)
                continue
            ev = self._event_layout.decode(buf)
            out.append(self._hop(j, s, ev))
        return out

    def _delta(self, j: _Journey, hop: dict[str, Any], ts: int) -> None:
        hop["delta_ns"] = 0 if j.prev_ts is None else max(0, ts - j.prev_ts)
        j.prev_ts = ts

    def _hop(self, j: _Journey, s: _Skb, ev: Record) -> dict[str, Any]:
        names = self._names
        name = sanitize(names.probe_name(ev.probe_kind, ev.probe))
        reason = (sanitize(names.reason_name(ev.reason)) or str(ev.reason)) if ev.reason >= 0 else None
        hop: dict[str, Any] = {
            "kind": "event",
            "label": s.label,
            "skb": ev.skb,
            "ts": ev.ts,
            "name": name,
            "func": fields.func_text(ev, names),
            "location": fields.location_text(ev, names),
            "iface": fields.iface_text(ev),
            "netns": ev.netns,
            "len": ev.len,
            "changes": {},
        }
        self._delta(j, hop, ev.ts)
        process = names.process(ev.pid, ev.comm)
        if process != s.process:
            hop["process"] = process
            s.process = process
        tup = _known(fields.tuple_of(ev))
        if tup is not None:
            hop["tuple"] = tup
            if s.tuple is not None and s.tuple[:6] != tup[:6]:  # TCP flags are no change of tuple
                hop["changes"]["tuple"] = s.tuple
            s.tuple = tup
        if self._config.tunnel:
            inner = _known(fields.tuple_of(ev, fields.TUNNEL_PREFIX))
            if inner is not None:
                hop["tunnel"] = inner
            if inner != s.tunnel and s.hops:
                hop["changes"]["tunnel"] = s.tunnel
            s.tunnel = inner
        if ev.netns:  # 0: the skb has no device (a socket's queue): unknown, no change
            if s.netns is not None and ev.netns != s.netns:
                hop["changes"]["netns"] = s.netns
            s.netns = ev.netns
        s.hops += 1
        point = verdict.nf_point(name)
        if point is not None:
            hook, where = point
            if where == "first":
                s.nf_open = hook
            elif s.nf_open == hook:
                s.nf_open = None
        r = verdict.role(name)
        new = verdict.outcome(r, reason)
        current = s.outcome.kind if s.outcome else None
        kind = verdict.next_outcome(current, new, r)
        if kind is None:
            s.outcome = None
        elif kind != current or (new == kind and kind != verdict.CONSUMED):
            s.outcome = self._decided(kind, hop, ev, reason, s)  # the last hop of an outcome decides it
        return hop

    def _decided(self, kind: str, hop: dict[str, Any], ev: Record, reason: str | None, s: _Skb) -> Verdict:
        v = Verdict(kind, hop=hop["name"])
        if kind == verdict.DROPPED:
            v.where = hop["location"] or hop["name"]
            v.reason = reason or ""
            if verdict.short_reason(v.reason) == verdict.NETFILTER_DROP:
                v.nf_family, v.nf_hook = self._nf_hook(ev)
                if not v.nf_hook:  # the hook entered and not left, from the journey's own netfilter points
                    v.nf_hook = s.nf_open or ""
            v.nf_table, v.nf_chain = sanitize(ev.nf_table), sanitize(ev.nf_chain)
            nf = f"{v.nf_family}/{v.nf_hook}" if v.nf_family else v.nf_hook
            v.explanation = self._explain(v.reason, hop["location"] or None, nf or None)
        elif kind == verdict.DELIVERED:
            v.process = self._names.process(ev.pid, ev.comm)
        elif kind == verdict.SENT:
            v.device = hop["iface"]
        return v

    @staticmethod
    def _nf_hook(ev: Record) -> tuple[str, str]:
        """(family, hook) the kernel side recorded for a netfilter drop (``nf_pf``, ``nf_hook``); empty when it
        did not (netfilter points not attached: no BPF netfilter links on this kernel)."""
        if not fields.nf_known(ev.nf_pf, ev.nf_hook):
            return "", ""
        return fields.nf_family_name(ev.nf_pf), fields.nf_hook_name(ev.nf_hook)

    def _verdict(self, s: _Skb, end: str, why: str) -> Verdict:
        if s.outcome is not None:
            return s.outcome
        if s.ended:
            return Verdict(verdict.UNKNOWN, why_unknown="freed without an outcome")
        how = {IDLE: why, CUT: why, EXIT: "the run ended first"}.get(end, end)
        return Verdict(verdict.UNKNOWN, why_unknown=f"no end seen ({how})")

    # -- text --

    def _tuple_text(self, t: fields.Tuple | None) -> str:
        return fields.tuple_text(t, self._config.tcp_flags) if t is not None else "-"

    def _title(self, j: _Journey) -> str:
        root = j.skbs.get(0)
        addr = root.addr if root is not None else next(iter(j.skbs.values())).addr
        return f"{addr:#x}"

    def _text(
        self,
        j: _Journey,
        hops: list[dict[str, Any]],
        verdicts: list[tuple[_Skb, Verdict]],
        end: str,
        why: str,
        final: bool,
    ) -> str:
        multi = j.labels > 1
        first = next((h for h in hops if h["kind"] == "event" and "tuple" in h), None)
        tup = self._tuple_text(first["tuple"]) if first is not None else "-"
        span = (hops[-1]["ts"] - hops[0]["ts"]) if hops else 0
        part = f" part {j.part}" if j.part > 1 or not final else ""
        ended = f"{end}: {why}" if why else end
        lines = [f"journey {j.number}{part}: skb {self._title(j)} {tup}, {len(hops)} hops in "
                 f"{_delta(span)[1:]} ({ended})"]  # fmt: skip
        for h in hops:
            label = f"[{h['label']}] " if multi else ""
            if h["kind"] == "free":
                lines.append(f"  {_delta(h['delta_ns']):>12}  {label}freed by {h['func']}")
                continue
            if h["kind"] == "copy":
                lines.append(f"  {_delta(h['delta_ns']):>12}  {label}copy of [{h['parent']}] by {h['func']} "
                             f"(skb {h['skb']:#x})")  # fmt: skip
                continue
            func = h["func"] + (f" at {h['location']}" if h["location"] else "")
            line = f"  {_delta(h['delta_ns']):>12}  {label}{func:<40} {h['iface']}"
            if "process" in h:
                line += f"  {h['process']}"
            lines.append(line)
            changes = h["changes"]
            if "tuple" in changes:
                lines.append(f"{'':16}tuple changed: {self._tuple_text(changes['tuple'])} -> "
                             f"{self._tuple_text(h['tuple'])}")  # fmt: skip
            if "tunnel" in changes:
                lines.append(f"{'':16}tunnel changed: {self._tuple_text(changes['tunnel'])} -> "
                             f"{self._tuple_text(h.get('tunnel'))}")  # fmt: skip
            if "netns" in changes:
                lines.append(f"{'':16}netns changed: {changes['netns']} -> {h['netns']}")
        for s, v in verdicts:
            who = f" [{s.label}]" if multi else ""
            head, *more = self._verdict_lines(v)
            lines += [f"  verdict{who}: {head}", *more]
        return "\n".join(lines) + "\n"

    def _verdict_lines(self, v: Verdict) -> list[str]:
        if v.kind == verdict.DROPPED:
            nf = f"{v.nf_family}/{v.nf_hook}" if v.nf_family else v.nf_hook
            rule = ", ".join(f"{k} {n}" for k, n in (("table", v.nf_table), ("chain", v.nf_chain)) if n)
            hook = f" in netfilter hook {nf}" if nf else (" in netfilter" if rule else "")
            hook += f" ({rule})" if rule else ""
            where = f"at {v.where}{hook}" if v.where != v.hop or not hook else hook.lstrip()
            lines = [f"dropped {where}: {v.reason or 'no reason'} ({v.hop})"]
            if v.explanation is not None:
                lines += [f"{'':4}{v.explanation.text}", f"{'':4}next: {v.explanation.check}"]
            return lines
        if v.kind == verdict.DELIVERED:
            return [f"delivered to {v.process} ({v.hop})"]
        if v.kind == verdict.SENT:
            return [f"sent out of {v.device} ({v.hop})"]
        if v.kind == verdict.CONSUMED:
            return [f"consumed ({v.hop})"]
        return [f"unknown: {v.why_unknown}"]

    # -- JSON --

    def _json(
        self,
        j: _Journey,
        hops: list[dict[str, Any]],
        verdicts: list[tuple[_Skb, Verdict]],
        end: str,
        why: str,
        final: bool,
    ) -> str:
        flags = self._config.tcp_flags
        out_hops: list[dict[str, Any]] = []
        for h in hops:
            d: dict[str, Any] = {"skb": f"{h['skb']:#x}", "delta_ns": h["delta_ns"], "ts": h["ts"]}
            if h["kind"] == "free":
                d["freed_by"] = h["func"]
                out_hops.append(d)
                continue
            if h["kind"] == "copy":
                d.update(copy_of=f"{h['parent_addr']:#x}", func=h["func"])
                out_hops.append(d)
                continue
            d["func"] = h["func"]
            if h["location"]:
                d["location"] = h["location"]
            d.update(iface=h["iface"], netns=h["netns"], len=h["len"])
            if "process" in h:
                d["process"] = h["process"]
            if "tuple" in h:
                d["tuple"] = tuple_json(h["tuple"], flags)
            changes = h["changes"]
            if "tuple" in changes:
                d["tuple_before"] = tuple_json(changes["tuple"], flags)
            if "tunnel" in changes:
                d["tunnel_before"] = tuple_json(changes["tunnel"], flags) if changes["tunnel"] else None
            if "netns" in changes:
                d["netns_before"] = changes["netns"]
            out_hops.append(d)
        obj: dict[str, Any] = {
            "journey": j.number,
            "part": j.part,
            "skb": self._title(j),
            "end": end,
            "hops": out_hops,
            "skbs": [
                {"skb": f"{s.addr:#x}", "copy_of": f"{s.parent_addr:#x}" if s.parent is not None else None}
                for s in j.skbs.values()
            ],
            "verdicts": [dict(skb=f"{s.addr:#x}", **self._verdict_json(v)) for s, v in verdicts],
        }
        if why:
            obj["why"] = why
        root = next((v for s, v in verdicts if s.label == 0), None)
        if root is not None:
            obj["verdict"] = self._verdict_json(root)
        return _encoder.encode(obj)

    @staticmethod
    def _verdict_json(v: Verdict) -> dict[str, Any]:
        d: dict[str, Any] = {"verdict": v.kind, "at": v.hop}
        if v.kind == verdict.DROPPED:
            d.update(location=v.where, reason=v.reason)
            if v.nf_hook:
                d["nf_hook"] = v.nf_hook
            if v.nf_family:
                d["nf_family"] = v.nf_family
            if v.nf_table:
                d["nf_table"] = v.nf_table
            if v.nf_chain:
                d["nf_chain"] = v.nf_chain
            if v.explanation is not None:
                d.update(explanation=v.explanation.text, check=v.explanation.check)
        elif v.kind == verdict.DELIVERED:
            d["process"] = v.process
        elif v.kind == verdict.SENT:
            d["iface"] = v.device
        elif v.kind == verdict.UNKNOWN:
            d["why"] = v.why_unknown
            del d["at"]
        return d
