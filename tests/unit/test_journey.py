"""--output-journey without a kernel: synthetic records (the real object's layouts) through JourneyOutput.

Grouping by skb, the end of a journey (free, idle timeout, run end), the bounds (journeys held, hops per
journey), copies in their parent's block, tuple changes at their hop, and the verdict rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from pwru import tracking
from pwru.config import Config, OutputConfig
from pwru.flags import constants, parse_config
from pwru.output import verdict
from pwru.output.journey import JourneyOutput
from pwru.records import Batch
from tests.unit.test_output_text import make_event, schema, v4

INDEX = 1
#: Probe ids (INDEX records) -> names, as the run's probe table would have them.
PROBES = ["nf:OUTPUT@first", "nf:OUTPUT@last", "tp:net_dev_xmit", "tp:netif_receive_skb", "nf:PREROUTING@first",
          "nf:PREROUTING@last", "nf:INPUT@first", "nf:INPUT@last", "tp:kfree_skb", "tp:consume_skb",
          "tp:skb_copy_datagram_iovec", "ip_rcv", "skb_clone", "kfree_skbmem"]  # fmt: skip
P = {name: i for i, name in enumerate(PROBES)}
NO_SOCKET, NETFILTER_DROP = 2, 6
A, B, C = 0xFFFF0000A000, 0xFFFF0000B000, 0xFFFF0000C000


class Names:
    reasons = {2: "SKB_DROP_REASON_NO_SOCKET", 6: "SKB_DROP_REASON_NETFILTER_DROP", 0: "SKB_CONSUMED"}

    def probe_name(self, probe_kind: int, probe: int) -> str:
        return PROBES[probe] if probe_kind == INDEX else f"{probe:#x}"

    def reason_name(self, reason: int) -> str:
        return self.reasons.get(reason, "")

    def symbol(self, addr: int) -> str:
        return {0x5000: "__udp4_lib_rcv+0x5b1", 0x6000: "nf_hook_slow+0x40"}.get(addr, f"{addr:#x}")

    def process(self, pid: int, comm: bytes) -> str:
        return f"{comm.decode()}:{pid}"


class ListSink:
    def __init__(self) -> None:
        self.units: list[str] = []
        self.closed = False
        self.flushes = 0

    def write_lines(self, lines: list[str]) -> None:
        self.units += lines

    def write(self, data: bytes) -> None:
        raise AssertionError("journeys are lines")

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Explanation:
    text: str
    check: str


class Explainer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []

    def __call__(self, reason: str, location: str | None = None, nf_hook: str | None = None) -> Explanation:
        self.calls.append((reason, location, nf_hook))
        return Explanation(f"because {reason}", "look")


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def ev(name: str, skb: int = A, ts: int = 0, **kw: Any) -> bytes:
    values = make_event(probe=P[name], probe_kind=INDEX, skb=skb, ts=ts, **kw)
    return schema().layout("event").encode(values)


def copy(parent: int, child: int, ts: int, name: str = "skb_clone") -> bytes:
    layout = schema().layout("skb_copy")
    return layout.encode(dict(type=schema().type_id("skb_copy"), size=layout.size, ts=ts, skb=child,
                              probe=P[name], probe_kind=INDEX, parent=parent))  # fmt: skip


def freed(skb: int, ts: int, name: str = "kfree_skbmem") -> bytes:
    layout = schema().layout("skb_free")
    return layout.encode(dict(type=schema().type_id("skb_free"), size=layout.size, ts=ts, skb=skb,
                              probe=P[name], probe_kind=INDEX))  # fmt: skip


def journey_output(clock: Clock | None = None, **cfg: Any) -> tuple[JourneyOutput, ListSink, Explainer]:
    sink, explain = ListSink(), Explainer()
    out = JourneyOutput(OutputConfig(journey=True, **cfg), Names(), sink, explain, clock or Clock())  # type: ignore[arg-type]
    return out, sink, explain


def feed(out: JourneyOutput, *records: bytes) -> None:
    out.consume(Batch(schema(), list(records)))


def hop_lines(block: str) -> list[str]:
    return [ln for ln in block.splitlines() if ln.lstrip().startswith("+")]


def test_a_journey_is_printed_at_its_free_with_its_hops_in_order_and_the_drop_explained() -> None:
    out, sink, explain = journey_output()
    feed(out, ev("nf:OUTPUT@first", ts=1000, ifindex=0), ev("tp:net_dev_xmit", ts=3500, ifindex=2, ifname=b"a0"),
         ev("tp:netif_receive_skb", ts=5000, ifindex=2, ifname=b"b0"))  # fmt: skip
    assert sink.units == []  # not freed yet
    feed(out, ev("tp:kfree_skb", ts=6000, reason=NO_SOCKET, location=0x5000, ifindex=2, ifname=b"b0"))
    (block,) = sink.units
    hops = hop_lines(block)
    assert [h.split()[1] for h in hops] == ["nf:OUTPUT@first", "tp:net_dev_xmit", "tp:netif_receive_skb",
                                             "tp:kfree_skb(SKB_DROP_REASON_NO_SOCKET)"]  # fmt: skip
    assert [h.split()[0] for h in hops] == ["+0ns", "+2.500us", "+1.500us", "+1.000us"]
    assert block.startswith("journey 1: skb 0xffff0000a000 10.99.0.1:55378->10.99.0.2:8080(tcp), 4 hops in 5.000us")
    assert "(freed)" in block.splitlines()[0]
    assert "  verdict: dropped at __udp4_lib_rcv+0x5b1: SKB_DROP_REASON_NO_SOCKET (tp:kfree_skb)" in block
    assert "because SKB_DROP_REASON_NO_SOCKET" in block and "next: look" in block
    assert explain.calls == [("SKB_DROP_REASON_NO_SOCKET", "__udp4_lib_rcv+0x5b1", None)]
    out.close()
    assert sink.closed and len(sink.units) == 1


def test_interleaved_skbs_are_separate_journeys() -> None:
    out, sink, _ = journey_output()
    feed(out, ev("ip_rcv", A, 1), ev("ip_rcv", B, 2), ev("nf:INPUT@first", A, 3), ev("tp:consume_skb", B, 4))
    assert (
        len(sink.units) == 1 and "skb 0xffff0000b000" in sink.units[0] and "consumed (tp:consume_skb)" in sink.units[0]
    )
    feed(out, ev("tp:kfree_skb", A, 5, reason=NO_SOCKET))
    assert len(sink.units) == 2 and len(hop_lines(sink.units[1])) == 3
    # The address is free again: a new skb there is a new journey.
    feed(out, ev("ip_rcv", A, 9))
    out.close()
    assert sink.units[2].startswith("journey 3") and "(exit)" in sink.units[2]
    assert "verdict: unknown: no end seen (the run ended first)" in sink.units[2]


def test_a_tuple_change_is_marked_at_its_hop_and_tcp_flags_are_no_change() -> None:
    out, sink, _ = journey_output()
    feed(
        out,
        ev("nf:PREROUTING@first", ts=1, tcp_flags=0x02),
        ev("nf:PREROUTING@last", ts=2, dport=9090, tcp_flags=0x02),
        ev("nf:INPUT@first", ts=3, dport=9090, tcp_flags=0x12),
        ev("tp:kfree_skb", ts=4, dport=9090, reason=NETFILTER_DROP),
    )
    lines = sink.units[0].splitlines()
    changed = [i for i, ln in enumerate(lines) if "tuple changed" in ln]
    assert len(changed) == 1
    assert "nf:PREROUTING@last" in lines[changed[0] - 1]
    assert (
        lines[changed[0]].strip()
        == "tuple changed: 10.99.0.1:55378->10.99.0.2:8080(tcp) -> 10.99.0.1:55378->10.99.0.2:9090(tcp)"
    )


def test_a_netfilter_drop_names_the_hook_it_entered_and_did_not_leave() -> None:
    out, sink, explain = journey_output(json=True)
    feed(out, ev("nf:PREROUTING@first", ts=1), ev("nf:PREROUTING@last", ts=2), ev("nf:INPUT@first", ts=3),
         ev("tp:kfree_skb", ts=4, reason=NETFILTER_DROP, location=0x6000))  # fmt: skip
    obj = json.loads(sink.units[0])
    assert obj["verdict"] == {"verdict": "dropped", "at": "tp:kfree_skb", "location": "nf_hook_slow+0x40",
                              "reason": "SKB_DROP_REASON_NETFILTER_DROP", "nf_hook": "INPUT",
                              "explanation": "because SKB_DROP_REASON_NETFILTER_DROP", "check": "look"}  # fmt: skip
    assert explain.calls == [("SKB_DROP_REASON_NETFILTER_DROP", "nf_hook_slow+0x40", "INPUT")]
    assert verdict.open_hook(["nf:INPUT@first", "nf:INPUT@last", "nf:OUTPUT@first"]) == "OUTPUT"
    assert verdict.open_hook(["nf:INPUT@first", "nf:INPUT@last"]) is None


def test_json_is_one_object_per_journey_with_the_change_before_and_after() -> None:
    out, sink, _ = journey_output(json=True)
    feed(out, ev("nf:PREROUTING@first", ts=10), ev("nf:PREROUTING@last", ts=25, daddr=v4("10.99.0.3")),
         ev("tp:kfree_skb", ts=40, reason=NO_SOCKET, daddr=v4("10.99.0.3")))  # fmt: skip
    (unit,) = sink.units
    assert "\n" not in unit
    obj = json.loads(unit)
    assert obj["journey"] == 1 and obj["end"] == "freed" and obj["skb"] == "0xffff0000a000"
    assert [h["delta_ns"] for h in obj["hops"]] == [0, 15, 15]
    assert obj["hops"][1]["tuple_before"]["daddr"] == "10.99.0.2" and obj["hops"][1]["tuple"]["daddr"] == "10.99.0.3"
    assert "tuple_before" not in obj["hops"][0] and "tuple_before" not in obj["hops"][2]
    assert obj["verdicts"] == [{"skb": "0xffff0000a000", **obj["verdict"]}]


def test_idle_journeys_are_printed_after_the_timeout_only() -> None:
    clock = Clock()
    out, sink, _ = journey_output(clock, journey_timeout=100)
    feed(out, ev("ip_rcv", A, ts=1_000_000), ev("tp:skb_copy_datagram_iovec", A, ts=2_000_000, pid=77, comm=b"nc"))
    clock.now = 2_000_000 + 100_000_000 - 1
    out.idle()
    assert sink.units == [] and sink.flushes == 1
    clock.now += 2
    out.idle()
    (block,) = sink.units
    assert "(idle: no event for 100 ms)" in block.splitlines()[0]
    assert "verdict: delivered to nc:77 (tp:skb_copy_datagram_iovec)" in block
    # consume() expires too (a busy reader may never be idle), by the newest record's time: a reader behind the
    # kernel does not cut the journeys it has not caught up with.
    feed(out, ev("ip_rcv", B, ts=clock.now))
    clock.now += 200_000_000
    feed(out)
    assert len(sink.units) == 1
    feed(out, ev("ip_rcv", C, ts=clock.now))
    assert len(sink.units) == 2 and "skb 0xffff0000b000" in sink.units[1]


def test_more_journeys_than_the_bound_print_the_one_idle_longest_as_cut() -> None:
    out, sink, _ = journey_output(journey_max=2)
    feed(out, ev("ip_rcv", A, 1), ev("ip_rcv", B, 2), ev("nf:INPUT@first", A, 3))
    assert sink.units == []
    feed(out, ev("ip_rcv", C, 4))  # a third: B was idle longest
    (block,) = sink.units
    assert "skb 0xffff0000b000" in block and "(cut: more than 2 journeys in progress)" in block
    assert "verdict: unknown: no end seen (more than 2 journeys in progress)" in block
    assert len(out._journeys) == 2 and set(out._by_skb) == {A, C}
    feed(out, ev("tp:consume_skb", B, 5))  # B goes on: a new journey of its own, which cuts A's
    assert sink.units[1].startswith("journey 1: skb 0xffff0000a000") and "(cut: " in sink.units[1]
    assert sink.units[2].startswith("journey 4: skb 0xffff0000b000") and "(freed)" in sink.units[2]
    assert set(out._by_skb) == {C}


def test_more_hops_than_the_bound_print_parts_and_the_journey_goes_on() -> None:
    out, sink, _ = journey_output(journey_max_hops=3)
    feed(out, *[ev("ip_rcv", A, ts) for ts in range(1, 8)])
    assert len(sink.units) == 2
    assert all(len(hop_lines(u)) == 3 for u in sink.units)
    assert (
        sink.units[0].startswith("journey 1 part 1: ") and "cut: more than 3 hops: continued in part 2" in sink.units[0]
    )
    assert sink.units[1].startswith("journey 1 part 2: ")
    assert "verdict" not in sink.units[0]
    assert len(out._journeys[1].hops) == 1  # never more than the bound held
    feed(out, ev("tp:kfree_skb", A, 8, reason=NO_SOCKET))
    assert sink.units[2].startswith("journey 1 part 3: ") and "dropped" in sink.units[2]
    assert hop_lines(sink.units[2])[0].split()[0] == "+1ns"  # deltas go on across parts


def test_a_copy_joins_its_parents_journey_which_ends_when_both_ended() -> None:
    out, sink, _ = journey_output()
    feed(out, ev("ip_rcv", A, 10), copy(A, B, 20), ev("tp:net_dev_xmit", B, 30, ifindex=3, ifname=b"eth0"),
         copy(C, 0xDEAD, 31),  # a parent in no journey: ignored
         ev("tp:kfree_skb", A, 40, reason=NO_SOCKET))  # fmt: skip
    assert sink.units == []  # the copy is alive
    feed(out, ev("tp:consume_skb", B, 50, ifindex=3, ifname=b"eth0"))
    (block,) = sink.units
    lines = block.splitlines()
    assert "  [1] copy of [0] by skb_clone (skb 0xffff0000b000)" in " ".join(lines)
    assert [ln.split()[1] for ln in hop_lines(block)] == ["[0]", "[1]", "[1]", "[0]", "[1]"]
    assert "  verdict [0]: dropped at tp:kfree_skb: SKB_DROP_REASON_NO_SOCKET (tp:kfree_skb)" in lines
    assert "  verdict [1]: sent out of eth0:3 (tp:net_dev_xmit)" in lines
    assert 0xDEAD not in out._by_skb and not out._journeys


def test_copy_records_in_json() -> None:
    out, sink, _ = journey_output(json=True)
    feed(out, ev("ip_rcv", A, 10), copy(A, B, 20), ev("kfree_skbmem", A, 30), ev("kfree_skbmem", B, 40))
    obj = json.loads(sink.units[0])
    assert obj["hops"][1] == {"skb": "0xffff0000b000", "delta_ns": 10, "ts": 20, "copy_of": "0xffff0000a000",
                              "func": "skb_clone"}  # fmt: skip
    assert obj["skbs"] == [
        {"skb": "0xffff0000a000", "copy_of": None},
        {"skb": "0xffff0000b000", "copy_of": "0xffff0000a000"},
    ]
    assert [v["verdict"] for v in obj["verdicts"]] == ["unknown", "unknown"]  # freed without an outcome


@pytest.mark.parametrize(
    ("hops", "expected"),
    [
        (["tp:net_dev_xmit", "tp:consume_skb"], "sent"),  # consumed after the driver sent it
        (["tp:net_dev_xmit", "tp:netif_receive_skb", "tp:consume_skb"], "consumed"),  # came back in (loopback)
        (["tp:skb_copy_datagram_iovec", "tp:consume_skb"], "delivered"),
        (["ip_rcv", "tp:consume_skb"], "consumed"),
        (["ip_rcv", "kfree_skbmem"], "unknown"),
    ],
)
def test_verdict_rules(hops: list[str], expected: str) -> None:
    out, sink, _ = journey_output(json=True)
    feed(out, *[ev(name, A, ts) for ts, name in enumerate(hops, 1)])
    assert json.loads(sink.units[0])["verdict"]["verdict"] == expected


def test_consumed_reason_is_no_drop_and_roles() -> None:
    assert verdict.outcome(verdict.role("tp:kfree_skb"), "SKB_CONSUMED") == verdict.CONSUMED
    assert verdict.outcome(verdict.role("tp:kfree_skb"), "") == verdict.DROPPED
    assert verdict.role("tp:kfree_skb").ends and verdict.role("kfree_skbmem").ends
    assert not verdict.role("kfree_skb").ends  # the function: kfree_skbmem comes after it
    assert not verdict.role("nf:INPUT@first").ends
    assert verdict.role("veth_xmit[veth]") == verdict.Role()
    assert verdict.outcome(verdict.role("kfree_skb"), None) == verdict.DROPPED  # 5.10: no reason


def test_end_functions_are_trackings_free_functions() -> None:
    assert frozenset(tracking.FREE_FUNCTIONS) == verdict.END_FUNCTIONS


def test_journey_flags_imply_tracking_and_the_fields_it_shows() -> None:
    config = parse_config(["--output-journey", "--no-output-meta", "--no-output-tuple"])
    assert config.tracking.skb and config.output.journey
    consts = constants(config)
    assert consts["cfg_output_journey"] == 1 and consts["cfg_track_skb"] == 1
    assert consts["cfg_output_meta"] == 1 and consts["cfg_output_tuple"] == 1
    plain = constants(parse_config(["--no-output-meta"]))
    assert plain["cfg_output_journey"] == 0 and plain["cfg_output_meta"] == 0 and plain["cfg_track_skb"] == 0
    assert Config().output.journey_timeout == 1000
    o = parse_config(["--output-journey-timeout=50", "--output-journey-max=3", "--output-journey-max-hops=9"]).output
    assert (o.journey_timeout, o.journey_max, o.journey_max_hops) == (50, 3, 9)


def test_a_free_record_ends_the_journey_where_no_event_shows_the_free() -> None:
    out, sink, _ = journey_output()
    feed(out, freed(A, 1))  # an skb in no journey: nothing
    feed(out, ev("ip_rcv", A, 10), ev("tp:skb_copy_datagram_iovec", A, 20))
    assert sink.units == []
    feed(out, freed(A, 35))
    (block,) = sink.units
    assert "(freed)" in block.splitlines()[0] and "       +15ns  freed by kfree_skbmem" in block
    assert "verdict: delivered to curl:621" in block
    out2, sink2, _ = journey_output(json=True)
    feed(out2, ev("ip_rcv", B, 10), freed(B, 12))
    hops = json.loads(sink2.units[0])["hops"]
    assert hops[1] == {"skb": "0xffff0000b000", "delta_ns": 2, "ts": 12, "freed_by": "kfree_skbmem"}
