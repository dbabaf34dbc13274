"""The formatters' fast path (raw records, cached pieces) prints exactly what format(decode(record)) prints."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pwru.bpf import build, object_path
from pwru.config import Config
from pwru.event import KIND_FUNC, KIND_TRACEPOINT, EventDecoder, object_btf
from pwru.output import fields, make_formatter
from tests.unit.test_event import pack
from tests.unit.test_output_text import FakeNames

CONFIGS = [
    Config(),
    Config(output_json=True),
    Config(output_meta=False, output_tuple=False),
    Config(output_tcp_flags=True, output_caller=True),
    Config(output_json=True, output_tcp_flags=True, output_caller=True, timestamp="relative"),
    Config(timestamp="relative"),
    Config(timestamp="current", output_meta=False),
    Config(timestamp="absolute", output_caller=True),
    Config(output_json=True, timestamp="absolute", output_meta=False),
    Config(output_stack=True),
    Config(output_json=True, output_stack=True),
]

V4 = [socket.inet_aton(a) + bytes(12) for a in ("10.0.0.1", "10.0.0.2")]
V6 = [socket.inet_pton(socket.AF_INET6, a) for a in ("fd00::1", "fd00::2")]

# Small pools, so that records repeat pieces (cache hits) and differ in one field at a time (no false hits).
record_values = st.fixed_dictionaries(
    {
        "ts": st.integers(0, 10**12),
        "addr": st.sampled_from([0x1000, 0x2000, 0x3000, 7, 0xDEAD]),
        "kind": st.sampled_from([KIND_FUNC, KIND_TRACEPOINT]),
        "skb": st.sampled_from([0xFF4804DB4078A4E8, 0xFF4804DB4078A500, 1]),
        "caller": st.sampled_from([0, 0xB000, 0xC000]),
        "location": st.sampled_from([0, 0xA000]),
        "stack_id": st.sampled_from([-1, 5]),
        "reason": st.sampled_from([-1, 2, 6, 99]),
        "pid": st.sampled_from([0, 621, 4242]),
        "cpu": st.integers(0, 3),
        "comm": st.sampled_from([b"curl", b"ping", b"x\x1b[31m", b""]),
        "netns": st.sampled_from([4026531840, 1]),
        "mark": st.sampled_from([0, 0xA00]),
        "ifindex": st.sampled_from([0, 1, 12345]),
        "len": st.sampled_from([60, 1500]),
        "mtu": st.sampled_from([1500, 65536]),
        "protocol": st.sampled_from([0, 0x0800, 0x86DD]),
        "ifname": st.sampled_from([b"", b"lo", b"verylongname123", b"e\xffth"]),
        "saddr": st.sampled_from(V4 + V6),
        "daddr": st.sampled_from(V4 + V6),
        "sport": st.sampled_from([0, 55378]),
        "dport": st.sampled_from([80, 8080]),
        "l3_proto": st.sampled_from([0, 0x0800, 0x86DD]),
        "l4_proto": st.sampled_from([1, 6, 17, 58, 200]),
        "tcp_flags": st.sampled_from([0, 0x12, 0xFF]),
    }
)


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    build.build()
    return EventDecoder(object_btf(object_path()))


def _both(config: Config, decoder: EventDecoder, records: list[Any]) -> tuple[list[str], list[str]]:
    slow = make_formatter(config, FakeNames())
    fast = make_formatter(config, FakeNames())
    expected = [slow.format(decoder.decode(r)) for r in records]
    got: list[str] = []
    for i in range(0, len(records), 7):  # several batches: caches and column widths carry over
        got += fast.format_records(records[i : i + 7], decoder)
    return got, expected


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_fast_path_prints_what_format_prints(config: Config, decoder: EventDecoder) -> None:
    spec = object_btf(object_path())

    @settings(max_examples=40, deadline=None)
    @given(st.lists(record_values, min_size=1, max_size=40), st.booleans())
    def check(values: list[dict[str, Any]], views: bool) -> None:
        records: list[Any] = [pack(spec, v) for v in values]
        if views:  # the ring buffer reader's records are bytes; views must work too
            records = [memoryview(r) for r in records]
        got, expected = _both(config, decoder, records)
        assert got == expected

    check()


def test_caches_stay_bounded_and_right(decoder: EventDecoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fields, "CACHE_LIMIT", 2)
    spec = object_btf(object_path())
    records = [pack(spec, {"skb": i, "addr": 0x1000 + i % 3 * 0x1000, "pid": i % 5, "comm": b"c",
                           "len": i, "sport": i % 4, "l3_proto": 0x0800, "l4_proto": 17})
               for i in range(50)]  # fmt: skip
    for config in (Config(output_caller=True), Config(output_json=True)):
        f = make_formatter(config, FakeNames())
        got, expected = _both(config, decoder, records)
        assert got == expected
        f.format_records(records, decoder)
        assert all(len(c) <= 2 for c in f._caches)  # type: ignore[attr-defined]


def test_span_and_unpacker(decoder: EventDecoder) -> None:
    spec = object_btf(object_path())
    rec = pack(spec, {"pid": 7, "cpu": 3, "comm": b"abc", "skb": 0x55, "ts": 9})
    a, b = decoder.span("pid", "comm")
    assert a == decoder.offset("pid") and b == decoder.offset("comm") + 16
    assert decoder.unpacker("skb", "ts", "cpu")(rec) == (0x55, 9, 3)
    assert decoder.unpacker("ts", "skb")(rec) == (9, 0x55)
    assert decoder.unpacker("cpu")(rec) == (3,)
    with pytest.raises(KeyError):
        decoder.span("nope")
