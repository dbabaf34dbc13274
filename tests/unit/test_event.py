"""EventDecoder: the layout comes from the object's BTF; records pack and decode round-trip."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pwru.bpf import build, object_path
from pwru.ebpf import btf
from pwru.event import EVENT_FIELDS, Event, EventDecoder, LayoutError, object_btf


@pytest.fixture(scope="module")
def spec() -> btf.Spec:
    build.build()
    return object_btf(object_path())


@pytest.fixture(scope="module")
def decoder(spec: btf.Spec) -> EventDecoder:
    return EventDecoder(spec)


def _path(name: str) -> str:
    if name in {"netns", "mark", "ifindex", "len", "mtu", "protocol", "ifname"}:
        return f"meta.{name}"
    if name in {"saddr", "daddr", "sport", "dport", "l3_proto", "l4_proto", "tcp_flags"}:
        return f"tuple.{name}"
    return name


def pack(spec: btf.Spec, values: dict[str, int | bytes]) -> bytes:
    """A record written field by field at the offsets the object's BTF gives (independent of the decoder)."""
    sid = spec.find_one("event", btf.Kind.STRUCT)
    buf = bytearray(spec.size_of(sid))
    for name, value in values.items():
        m = spec.member(sid, _path(name))
        off, size = m.bit_offset // 8, spec.size_of(m.type)
        if isinstance(value, bytes):
            buf[off : off + len(value)] = value
        else:
            t = spec.resolve_type(m.type)
            signed = isinstance(t, btf.Int) and t.signed
            buf[off : off + size] = value.to_bytes(size, "little", signed=signed)
    return bytes(buf)


def _sizes(spec: btf.Spec) -> dict[str, tuple[int, bool]]:
    sid = spec.find_one("event", btf.Kind.STRUCT)
    out = {}
    for name in EVENT_FIELDS:
        m = spec.member(sid, _path(name))
        t = spec.resolve_type(m.type)
        out[name] = (spec.size_of(m.type), isinstance(t, btf.Int) and t.signed)
    return out


def test_layout_matches_btf(spec: btf.Spec, decoder: EventDecoder) -> None:
    sid = spec.find_one("event", btf.Kind.STRUCT)
    assert decoder.size == spec.size_of(sid)
    assert [f.name for f in decoder.layout] == list(EVENT_FIELDS)
    for f in decoder.layout:
        assert f.offset == spec.member_offset(sid, _path(f.name))


@st.composite
def events(draw: st.DrawFn, sizes: dict[str, tuple[int, bool]]) -> dict[str, int | bytes]:
    values: dict[str, int | bytes] = {}
    for name, (size, signed) in sizes.items():
        if name in ("comm", "ifname"):
            values[name] = draw(
                st.binary(min_size=0, max_size=size - 1).map(lambda b: b.replace(b"\0", b"x"))
            )
        elif name in ("saddr", "daddr"):
            values[name] = draw(st.binary(min_size=size, max_size=size))
        elif signed:
            values[name] = draw(st.integers(-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1))
        else:
            values[name] = draw(st.integers(0, (1 << (8 * size)) - 1))
    return values


def test_round_trip(spec: btf.Spec, decoder: EventDecoder) -> None:
    sizes = _sizes(spec)

    @settings(max_examples=200, deadline=None)
    @given(events(sizes))
    def check(values: dict[str, int | bytes]) -> None:
        record = pack(spec, values)
        ev = decoder.decode(record)
        assert ev == Event(**values)  # type: ignore[arg-type]
        assert decoder.decode_many([record, memoryview(record)]) == [ev, ev]

    check()


def test_known_record(spec: btf.Spec, decoder: EventDecoder) -> None:
    record = pack(
        spec,
        {"skb": 0xFFFF888012345600, "reason": 3, "stack_id": -1, "comm": b"ping", "ifname": b"lo",
         "ifindex": 1, "saddr": bytes([127, 0, 0, 1]) + bytes(12), "dport": 9, "l4_proto": 17},
    )  # fmt: skip
    ev = decoder.decode(memoryview(record))
    assert (ev.skb, ev.reason, ev.stack_id, ev.comm, ev.ifname) == (0xFFFF888012345600, 3, -1, b"ping", b"lo")
    assert (ev.ifindex, ev.saddr[:4], ev.dport, ev.l4_proto, ev.ts) == (1, b"\x7f\0\0\x01", 9, 17, 0)


def test_short_record_is_an_error(decoder: EventDecoder) -> None:
    with pytest.raises(struct.error):
        decoder.decode(bytes(decoder.size - 8))


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_mismatched_struct_is_refused(tmp_path: Path) -> None:
    """An object whose struct event lacks a field the Python side expects is refused with both sides named."""
    src = tmp_path / "other.c"
    src.write_text(
        "struct skb_meta { unsigned int netns; };\n"
        "struct event { unsigned long long ts; unsigned int extra; struct skb_meta meta; };\n"
        "struct event *keep;\n"
    )
    out = tmp_path / "other.o"
    subprocess.run(["clang", "-target", "bpf", "-g", "-O2", "-c", str(src), "-o", str(out)], check=True)
    with pytest.raises(LayoutError, match=r"only in C \['extra'\].*only in Python \[.*'addr'"):
        EventDecoder.from_object(out)
    with pytest.raises(LayoutError, match=r"struct event is not in the object"):
        EventDecoder(btf.Spec.from_bytes(_empty_btf()))


def _empty_btf() -> bytes:
    # header only: magic, version 1, flags 0, hdr_len 24, empty type and string sections (string "\0")
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 1) + b"\0"
