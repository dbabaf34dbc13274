"""The formatters' piece caches never change what is printed: a formatter fed records in batches, its caches
warm, prints exactly what the same formatter prints with caches that never hold anything (every piece computed
from the decoded record)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pwru.config import Config, OutputConfig
from pwru.output import Formatter, fields, make_formatter
from pwru.records import Batch
from tests.unit.test_output_text import STACKS, FakeNames, schema, two_type_schema

CONFIGS = [
    OutputConfig(),
    OutputConfig(json=True),
    OutputConfig(meta=False, tuple=False),
    OutputConfig(tcp_flags=True, caller=True),
    OutputConfig(json=True, tcp_flags=True, caller=True, timestamp="relative"),
    OutputConfig(timestamp="relative"),
    OutputConfig(timestamp="current", meta=False),
    OutputConfig(timestamp="absolute", caller=True),
    OutputConfig(json=True, timestamp="absolute", meta=False),
    OutputConfig(stack=True),
    OutputConfig(json=True, stack=True),
    OutputConfig(tunnel=True),
    OutputConfig(json=True, tunnel=True, tcp_flags=True),
    OutputConfig(tunnel=True, caller=True, tuple=False),
]

V4 = [socket.inet_aton(a) + bytes(12) for a in ("10.0.0.1", "10.0.0.2")]
V6 = [socket.inet_pton(socket.AF_INET6, a) for a in ("fd00::1", "fd00::2")]

# Small pools, so that records repeat pieces (cache hits) and differ in one field at a time (no false hits).
record_values = st.fixed_dictionaries(
    {
        "ts": st.integers(0, 10**12),
        "probe": st.sampled_from([0x1000, 0x2000, 0x3000, 7, 0xDEAD]),
        "probe_kind": st.sampled_from([0, 1]),
        "type": st.sampled_from([1, 1, 1, 2]),
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
        "tunnel_saddr": st.sampled_from(V4 + V6),
        "tunnel_daddr": st.sampled_from(V4),
        "tunnel_sport": st.sampled_from([0, 4242]),
        "tunnel_dport": st.sampled_from([53, 7001]),
        "tunnel_l3_proto": st.sampled_from([0, 0x0800, 0x86DD]),
        "tunnel_l4_proto": st.sampled_from([1, 6, 17]),
        "tunnel_tcp_flags": st.sampled_from([0, 0x02]),
    }
)


class NoCache(dict[Any, str]):
    """A piece cache that never holds anything."""

    def __setitem__(self, key: Any, value: str) -> None:
        pass


def _formatter(config: OutputConfig) -> Formatter:
    return make_formatter(Config(output=config), FakeNames())


def _both(config: OutputConfig, records: list[Any]) -> tuple[list[str], list[str]]:
    uncached = _formatter(config)
    uncached._caches = tuple(NoCache() for _ in uncached._caches)  # type: ignore[attr-defined]
    expected = uncached.format_batch(Batch(two_type_schema(), records, dict(STACKS)))
    cached = _formatter(config)
    got: list[str] = []
    for i in range(0, len(records), 7):  # several batches: caches and column widths carry over
        got += cached.format_batch(Batch(two_type_schema(), records[i : i + 7], dict(STACKS)))
    return got, expected


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_cached_pieces_print_what_fresh_ones_print(config: OutputConfig) -> None:
    layout = schema().layout("event")

    @settings(max_examples=40, deadline=None)
    @given(st.lists(record_values, min_size=1, max_size=40), st.booleans())
    def check(values: list[dict[str, Any]], views: bool) -> None:
        records: list[Any] = [layout.encode(v) for v in values]
        if views:  # the ring buffer reader's records are bytes; views must work too
            records = [memoryview(r) for r in records]
        got, expected = _both(config, records)
        assert got == expected
        assert len(got) == sum(1 for v in values if v["type"] == 1)  # other record types print nothing

    check()


def test_caches_stay_bounded_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fields, "CACHE_LIMIT", 2)
    layout = schema().layout("event")
    records = [layout.encode({"type": 1, "skb": i, "probe": 0x1000 + i % 3 * 0x1000, "pid": i % 5, "comm": b"c",
                              "len": i, "sport": i % 4, "l3_proto": 0x0800, "l4_proto": 17})
               for i in range(50)]  # fmt: skip
    for config in (OutputConfig(caller=True), OutputConfig(json=True)):
        got, expected = _both(config, records)
        assert got == expected
        f = _formatter(config)
        f.format_batch(Batch(schema(), records))
        assert all(len(c) <= 2 for c in f._caches)  # type: ignore[attr-defined]
