"""Records: types, layouts and field names come from the object's BTF; records encode and decode round-trip.

Also "how to add a record type": an object declaring a second, variable-sized record type is decoded with no
Python change (``test_a_new_record_type_needs_no_python``).
"""

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
from pwru.ebpf.elf import ObjectSpec
from pwru.records import Batch, LayoutError, RecordLayout, Schema


@pytest.fixture(scope="module")
def spec() -> btf.Spec:
    build.build()
    obj = ObjectSpec.load(object_path())
    assert obj.btf is not None
    return obj.btf


@pytest.fixture(scope="module")
def schema(spec: btf.Spec) -> Schema:
    return Schema(spec)


def _member_path(spec: btf.Spec, sid: int, name: str) -> str:
    """The C path of a flattened field (``netns`` -> ``meta.netns``, ``tunnel_saddr`` -> ``tunnel.saddr``: the
    first struct member holding a name keeps it bare), found by walking BTF independently."""
    for m in spec.members(sid):
        if m.name == name:
            return name
        t = spec.resolve_type(m.type)
        if not isinstance(t, btf.Struct):
            continue
        inner = {x.name for x in spec.members(spec.resolve(m.type))}
        if name in inner:
            return f"{m.name}.{name}"
        if name.startswith(f"{m.name}_") and name.removeprefix(f"{m.name}_") in inner:
            return f"{m.name}.{name.removeprefix(f'{m.name}_')}"
    raise KeyError(name)


def pack(spec: btf.Spec, values: dict[str, int | bytes]) -> bytes:
    """An event record written field by field at the offsets BTF gives (independent of the decoder)."""
    sid = spec.find_one("event", btf.Kind.STRUCT)
    buf = bytearray(spec.size_of(sid))
    for name, value in values.items():
        m = spec.member(sid, _member_path(spec, sid, name))
        off, size = spec.member_offset(sid, _member_path(spec, sid, name)), spec.size_of(m.type)
        if isinstance(value, bytes):
            buf[off : off + len(value)] = value
        else:
            t = spec.resolve_type(m.type)
            signed = isinstance(t, btf.Int) and t.signed
            buf[off : off + size] = value.to_bytes(size, "little", signed=signed)
    return bytes(buf)


def test_types_and_header_come_from_btf(schema: Schema) -> None:
    assert schema.types == {"event": 1, "skb_dump": 2, "packet": 3, "skb_copy": 4, "skb_free": 5, "bpfmap_op": 6}
    assert schema.probe_kinds == {"addr": 0, "index": 1}
    assert [f.name for f in schema.header.fields] == ["ts", "skb", "probe", "type", "size", "probe_kind"]
    layout = schema.layout("event")
    assert layout.fields[:6] == schema.header.fields
    with pytest.raises(LayoutError, match="no record type 'pcap'"):
        schema.type_id("pcap")


def test_packet_record_has_the_header_and_a_data_tail(schema: Schema) -> None:
    layout = schema.layout("packet")
    assert layout.fields[:6] == schema.header.fields
    assert layout.tail is not None and layout.tail.name == "data" and layout.tail.offset == layout.size
    assert {"netns", "ifindex", "ifname", "orig_len", "linktype"} <= set(layout.by_name)
    rec = layout.encode({"type": schema.types["packet"], "size": layout.size + 3, "linktype": 228, "data": b"abc"})
    decoded = schema.decode(rec + b"zz")  # bytes past the header's size are not the tail's
    assert (decoded.linktype, decoded.data) == (228, b"abc")


def test_layout_matches_btf(spec: btf.Spec, schema: Schema) -> None:
    sid = spec.find_one("event", btf.Kind.STRUCT)
    layout = schema.layout("event")
    assert layout.size == spec.size_of(sid)
    for f in layout.fields:
        assert f.offset == spec.member_offset(sid, _member_path(spec, sid, f.name)), f.name
    assert {"netns", "ifname", "saddr", "tcp_flags", "comm", "stack_id"} <= set(layout.by_name)
    assert {"tunnel_saddr", "tunnel_dport", "tunnel_l4_proto"} <= set(layout.by_name)  # the second skb_tuple
    assert layout.offset("tunnel_saddr") == spec.member_offset(sid, "tunnel.saddr") != layout.offset("saddr")
    assert not [f for f in layout.fields if f.name.startswith("pad")]


@st.composite
def event_values(draw: st.DrawFn, layout: RecordLayout) -> dict[str, int | bytes]:
    values: dict[str, int | bytes] = {}
    for f in layout.fields:
        if f.text:
            values[f.name] = draw(st.binary(max_size=f.size - 1).map(lambda b: b.replace(b"\0", b"x")))
        elif f.code.endswith("s"):
            values[f.name] = draw(st.binary(min_size=f.size, max_size=f.size))
        else:
            bits = 8 * f.size
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if f.code.islower() else (0, (1 << bits) - 1)
            values[f.name] = draw(st.integers(lo, hi))
    return values


def test_round_trip(spec: btf.Spec, schema: Schema) -> None:
    layout = schema.layout("event")

    @settings(max_examples=200, deadline=None)
    @given(event_values(layout))
    def check(values: dict[str, int | bytes]) -> None:
        record = pack(spec, values)
        assert layout.encode(values) == record
        ev = layout.decode(memoryview(record))
        assert {f.name: getattr(ev, f.name) for f in layout.fields} == values
        assert layout.decode_many([record, memoryview(record)]) == [ev, ev]

    check()


def test_known_record(spec: btf.Spec, schema: Schema) -> None:
    record = pack(
        spec,
        {"type": 1, "skb": 0xFFFF888012345600, "reason": 3, "stack_id": -1, "comm": b"ping", "ifname": b"lo",
         "ifindex": 1, "saddr": bytes([127, 0, 0, 1]) + bytes(12), "dport": 9, "l4_proto": 17},
    )  # fmt: skip
    ev = schema.decode(record)
    assert (ev.skb, ev.reason, ev.stack_id, ev.comm, ev.ifname) == (0xFFFF888012345600, 3, -1, b"ping", b"lo")
    assert (ev.ifindex, ev.saddr[:4], ev.dport, ev.l4_proto, ev.ts) == (1, b"\x7f\0\0\x01", 9, 17, 0)
    with pytest.raises(AttributeError, match="no field 'addr'"):
        _ = ev.addr


def test_unpacker_and_span(schema: Schema) -> None:
    layout = schema.layout("event")
    rec = layout.encode({"pid": 7, "cpu": 3, "comm": b"x", "skb": 9})
    assert layout.unpacker("cpu", "skb")(rec) == (3, 9)
    assert layout.unpacker("skb")(rec) == (9,)
    start, end = layout.span("pid", "cpu", "comm")
    assert end - start >= 4 + 4 + 16
    with pytest.raises(KeyError):
        layout.span("nope")


def test_short_record_and_unknown_type_are_errors(schema: Schema) -> None:
    layout = schema.layout("event")
    with pytest.raises(struct.error):
        layout.decode(bytes(layout.size // 2))
    with pytest.raises(LayoutError, match="record type 9"):
        schema.decode(layout.encode({"type": 9}))
    with pytest.raises(KeyError):
        layout.encode({"no_such_field": 1})


def _compile(tmp_path: Path, source: str) -> btf.Spec:
    src = tmp_path / "records.c"
    src.write_text(source)
    out = tmp_path / "records.o"
    subprocess.run(["clang", "-target", "bpf", "-g", "-O2", "-c", str(src), "-o", str(out)], check=True)
    obj = ObjectSpec.load(out)
    assert obj.btf is not None
    return obj.btf


HEADER_C = """
struct record_header { unsigned long long ts, skb, probe; unsigned short type, size; unsigned char probe_kind;
                       unsigned char pad[3]; };
enum pwru_probe_kind { PWRU_PROBE_ADDR = 0, PWRU_PROBE_INDEX = 1 };
struct event { struct record_header hdr; unsigned int cpu; char comm[16]; };
"""


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_a_new_record_type_needs_no_python(tmp_path: Path) -> None:
    """How to add a record type: a member of enum pwru_record_type and a struct of the same name starting with
    struct record_header, in pwru.h. A flexible array at the end is the variable-sized tail."""
    spec = _compile(
        tmp_path,
        HEADER_C
        + "enum pwru_record_type { PWRU_RECORD_EVENT = 1, PWRU_RECORD_PACKET = 2 };\n"
        "struct packet { struct record_header hdr; unsigned int caplen; unsigned char data[]; };\n"
        "const enum pwru_record_type *a; const enum pwru_probe_kind *b; struct event *c; struct packet *d;\n",
    )
    schema = Schema(spec)
    assert schema.types == {"event": 1, "packet": 2}
    packet = schema.layout("packet")
    assert packet.tail is not None and packet.tail.name == "data"
    rec = packet.encode({"type": 2, "size": packet.tail.offset + 5, "caplen": 5, "data": b"hello"}) + b"junk"
    got = schema.decode(rec)
    assert (got.type, got.caplen, got.data) == (2, 5, b"hello")  # the tail ends at header.size
    event = schema.layout("event").encode({"type": 1})
    batch = Batch(schema, [rec, event, rec])
    assert batch.of_type("packet") == [rec, rec] and batch.of_type("event") == [event]


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_layout_errors_name_the_problem(tmp_path: Path) -> None:
    spec = _compile(
        tmp_path,
        HEADER_C + "enum pwru_record_type { PWRU_RECORD_EVENT = 1, PWRU_RECORD_BAD = 2 };\n"
        "struct bad { unsigned int x; struct record_header hdr; };\n"
        "const enum pwru_record_type *a; const enum pwru_probe_kind *b; struct event *c; struct bad *d;\n",
    )
    with pytest.raises(LayoutError, match="struct bad does not start with struct record_header"):
        Schema(spec)
    with pytest.raises(LayoutError, match="struct record_header is not in the object"):
        Schema(btf.Spec.from_bytes(_empty_btf()))


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_a_repeated_struct_is_prefixed_by_its_member_name(tmp_path: Path) -> None:
    spec = _compile(
        tmp_path,
        HEADER_C.replace("struct event {", "struct pair { unsigned short a, b; };\nstruct event {")
        .replace("char comm[16]; };", "char comm[16]; struct pair one; struct pair two; };")
        + "enum pwru_record_type { PWRU_RECORD_EVENT = 1 };\n"
        "const enum pwru_record_type *a; const enum pwru_probe_kind *b; struct event *c;\n",
    )
    layout = Schema(spec).layout("event")
    assert [f.name for f in layout.fields][-4:] == ["a", "b", "two_a", "two_b"]
    ev = layout.decode(layout.encode({"a": 1, "b": 2, "two_a": 3, "two_b": 4}))
    assert (ev.a, ev.b, ev.two_a, ev.two_b) == (1, 2, 3, 4)


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_a_prefixed_name_that_is_taken_is_an_error(tmp_path: Path) -> None:
    spec = _compile(
        tmp_path,
        HEADER_C.replace("struct event {", "struct pair { unsigned short a; };\nstruct event {")
        .replace("char comm[16]; };", "char comm[16]; unsigned short two_a; struct pair one; struct pair two; };")
        + "enum pwru_record_type { PWRU_RECORD_EVENT = 1 };\n"
        "const enum pwru_record_type *a; const enum pwru_probe_kind *b; struct event *c;\n",
    )
    with pytest.raises(LayoutError, match=r"two\.two_a: name appears twice"):
        Schema(spec)


def _empty_btf() -> bytes:
    # header only: magic, version 1, flags 0, hdr_len 24, empty type and string sections (string "\0")
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 1) + b"\0"
