"""--summary without a kernel: the counting probes, reading the count map, the table and where it goes."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from pwru import flags, summary
from pwru.bpf import object_path
from pwru.config import Config, OutputConfig
from pwru.ebpf.btf import kernel_btf
from pwru.ebpf.elf import ObjectSpec
from pwru.errors import UserError
from pwru.probes import Attach, Probe
from pwru.records import RecordLayout, Schema

from .test_output_text import schema

VERDICTS = {"dropped": 1, "consumed": 2}
REASONS = {3: "SKB_DROP_REASON_NO_SOCKET", 7: "SKB_DROP_REASON_NETFILTER_DROP", 1: "SKB_CONSUMED"}


def key_layout() -> RecordLayout:
    schema()  # builds the object
    obj = ObjectSpec.load(object_path())
    assert obj.btf is not None
    return RecordLayout(obj.btf, summary.KEY_STRUCT)


class FakeMap:
    """A per-CPU hash's items (a list of per-CPU values each), or a per-CPU array's sums."""

    def __init__(self, items: dict[bytes, list[bytes]] | None = None, sums: dict[int, int] | None = None) -> None:
        self._items = items or {}
        self._sums = sums or {}

    def items(self) -> Any:
        return iter(self._items.items())

    def lookup_u64(self, key: int) -> int | None:
        return self._sums.get(key)


def _key(layout: RecordLayout, **kw: int) -> bytes:
    return layout.encode({"location": 0, "reason": 0, "verdict": 1, "nf_pf": 0, "nf_hook": -1, **kw})


def _cpus(*counts: int) -> list[bytes]:
    return [n.to_bytes(8, "little") for n in counts]


def _reader(items: dict[bytes, list[bytes]], full: dict[int, int] | None = None) -> summary.Reader:
    symbols = {0xA000: "__udp4_lib_rcv", 0xA010: "__udp4_lib_rcv", 0xB000: "tcp_v4_rcv"}
    return summary.Reader(FakeMap(items), FakeMap(sums=full), key_layout(), VERDICTS, REASONS,  # type: ignore[arg-type]
                          lambda a: symbols.get(a, hex(a)))  # fmt: skip


def test_the_key_layout_comes_from_pwru_h() -> None:
    layout = key_layout()
    assert {f.name for f in layout.fields} == {"location", "reason", "verdict", "nf_pf", "nf_hook"}
    assert layout.size == 16
    obj = ObjectSpec.load(object_path())
    assert obj.btf is not None and Schema(obj.btf).verdicts == VERDICTS
    assert obj.maps[summary.COUNTS_MAP].max_entries == summary.MAP_ENTRIES


def test_reader_sums_cpus_groups_by_function_and_names_hooks() -> None:
    k = key_layout()
    counts = _reader({
        _key(k, reason=3, location=0xA000): _cpus(5, 7),
        _key(k, reason=3, location=0xA010): _cpus(1, 0),  # another offset in the same function: one row
        _key(k, reason=7, nf_pf=2, nf_hook=1): _cpus(0, 4),
        _key(k, reason=0xFFFFFFFF, location=0xB000): _cpus(2, 0),  # a kernel without drop reasons
        _key(k, verdict=2): _cpus(10, 20),
        _key(k, reason=1, location=0xB000): _cpus(1, 0),  # SKB_CONSUMED through kfree_skb
    }, full={1: 3}).read()  # fmt: skip
    assert counts.totals == {"dropped": 13 + 4 + 2 + 3, "consumed": 31}
    assert [(r.verdict, r.reason, r.where, r.count) for r in counts.rows] == [
        ("dropped", "NO_SOCKET", "__udp4_lib_rcv", 13),
        ("dropped", "NETFILTER_DROP", "nf:ipv4/INPUT", 4),
        ("dropped", "-", "tcp_v4_rcv", 2),
        ("consumed", "-", "-", 31),
    ]
    assert counts.not_broken_down == {"dropped": 3}
    no_socket, nf, unknown, consumed = counts.rows
    assert no_socket.explanation is not None and "UDP" in no_socket.explanation.text
    assert nf.explanation is not None and "INPUT chain" in nf.explanation.text
    assert unknown.explanation is None and consumed.explanation is None


def test_table_and_json() -> None:
    k = key_layout()
    reader = _reader({_key(k, reason=3, location=0xA000): _cpus(3), _key(k, verdict=2): _cpus(1)}, full={1: 2})
    first = reader.read()
    lines = summary.table(first, 2.0)
    assert lines[0] == "pwru summary after 2.0 s: 5 dropped, 1 consumed (skb ends the filters selected)"
    assert lines[1].split() == ["COUNT", "VERDICT", "REASON", "WHERE"]
    assert lines[2].split() == ["3", "dropped", "NO_SOCKET", "__udp4_lib_rcv"]
    assert lines[3].startswith(" " * 14 + "no socket wanted it") and "; check: " in lines[3]
    assert lines[-1].split()[:2] == ["2", "dropped"] and "4096 rows were full" in lines[-1]
    again = summary.table(first, 4.0, previous=first)
    assert again[0].endswith("; since the last: +0 dropped, +0 consumed")
    d = json.loads(summary.as_json(first, 2.0))["summary"]
    assert d["totals"] == {"dropped": 5, "consumed": 1} and d["not_broken_down"] == {"dropped": 2}
    assert d["rows"][0] == {"verdict": "dropped", "count": 3, "reason": "NO_SOCKET", "where": "__udp4_lib_rcv",
                            "explanation": d["rows"][0]["explanation"]}  # fmt: skip
    assert d["rows"][1] == {"verdict": "consumed", "count": 1}


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_lines(self, lines: list[str]) -> None:
        self.lines += lines

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("events", [False, True])
def test_reporter_writes_to_the_sink_alone_else_to_stderr(events: bool) -> None:
    k = key_layout()
    now = [100.0]
    sink, err = ListSink(), io.StringIO()
    config = Config(output=OutputConfig(summary=True, summary_interval=5, summary_events=events))
    rep = summary.Reporter(_reader({_key(k, verdict=2): _cpus(1)}), config, sink, err, lambda: now[0])  # type: ignore[arg-type]
    rep.tick()
    assert sink.lines == [] and err.getvalue() == ""  # not yet
    now[0] = 105.0
    rep.tick()
    rep.tick()  # the next one is 5 s later
    rep.final()
    out = sink.lines if not events else err.getvalue().splitlines()
    assert sum(line.startswith("pwru summary after ") for line in out) == 2
    assert (sink.lines == []) is events


def test_counting_probes_on_the_free_tracepoints_not_traced() -> None:
    spec = kernel_btf()
    alone = Config(output=OutputConfig(summary=True))
    added = summary.probes(alone, spec, [])
    assert sorted(p.name for p in added) == ["consume_skb", "kfree_skb"]
    assert all(p.program == "tp_skb" and p.constants["cfg_emit"] == 0 and p.shows for p in added)
    traced = [Probe("tracepoint", "kfree_skb", "tp_skb", Attach.TP_BTF)]
    with_events = Config(output=OutputConfig(summary=True, summary_events=True))
    extra = summary.probes(with_events, spec, traced)
    assert [p.name for p in extra] == ["consume_skb"] and not extra[0].shows
    assert summary.probes(Config(), spec, []) == []
    marked = summary.mark_ends(traced + extra, VERDICTS)
    assert [p.constants["cfg_tp_verdict"] for p in marked] == [1, 2]


def test_flags() -> None:
    c = flags.parse_config(["--summary"]).output
    assert c.summarises and not c.events
    assert flags.parse_config(["--summary-interval", "10"]).output.summarises  # implies --summary
    e = flags.parse_config(["--summary-events"]).output
    assert e.summarises and e.events
    assert not flags.parse_config([]).output.summarises and flags.parse_config([]).output.events
    assert flags.constants(flags.parse_config(["--summary"]))["cfg_emit"] == 0
    assert flags.constants(flags.parse_config([]))["cfg_emit"] == 1
    assert flags.constants(flags.parse_config(["--summary-events"]))["cfg_summary"] == 1
    assert flags.parse_config(["--output-ring-size", "64"]).output.ring_size == 64
    for bad in (["--summary-interval", "0"], ["--output-ring-size", "3"], ["--summary", "--output-limit-lines=2"]):
        with pytest.raises(UserError):
            flags.parse_config(bad)
