"""--output-bpfmap in user space: the map functions found in BTF and in programs' instructions, the operation
records joined to their events, the values decoded with BTF, and how text and JSON show them."""

from __future__ import annotations

import json
import struct
from functools import cache
from typing import Any

import pytest

from pwru import bpfmap
from pwru.btf_value import Bare, c_text, decode
from pwru.config import OutputConfig
from pwru.ebpf import btf
from pwru.ebpf.btf import Kind, Spec
from pwru.output.bpfmap import MapOp, hex_dump
from pwru.output.json import JsonFormatter
from pwru.output.text import TextFormatter
from pwru.records import Batch
from tests.unit.test_output_text import FakeNames, make_event, schema

VMLINUX = "/sys/kernel/btf/vmlinux"


@cache
def kernel_spec() -> Spec:
    return btf.Spec.load(VMLINUX)


def object_spec() -> Spec:
    spec = schema()._spec
    assert isinstance(spec, Spec)
    return spec


# --- hex dump: Go's encoding/hex.Dump layout ---------------------------------------------------------------------


def test_hex_dump_is_gos_layout() -> None:
    # encoding/hex's documented example output for this input
    assert hex_dump(b"Go is an open source programming language.") == (
        "00000000  47 6f 20 69 73 20 61 6e  20 6f 70 65 6e 20 73 6f  |Go is an open so|\n"
        "00000010  75 72 63 65 20 70 72 6f  67 72 61 6d 6d 69 6e 67  |urce programming|\n"
        "00000020  20 6c 61 6e 67 75 61 67  65 2e                    | language.|\n"
    )
    assert hex_dump(b"") == ""
    assert hex_dump(bytes([0, 0x7F, 0x41, 0xFF])) == "00000000  00 7f 41 ff" + " " * 39 + "|..A.|\n"


# --- which functions ---------------------------------------------------------------------------------------------


def test_map_functions_from_the_kernels_btf() -> None:
    fs = bpfmap.map_functions(kernel_spec())
    assert fs["htab_map_update_elem"].op == "update" and fs["htab_map_update_elem"].nargs == 4
    assert fs["htab_map_delete_elem"].op == "delete"
    assert fs["__htab_map_lookup_elem"].op == "lookup"  # the inlined hash lookup's call
    assert fs["bpf_map_lookup_elem"].nargs == 5  # BPF_CALL_2: u64 parameters, the first named map
    assert "map_lookup_elem" not in fs  # the syscall's: its first parameter is the bpf_attr
    assert set(fs) >= bpfmap.ELEMENT_LOOKUPS
    for f in fs.values():
        assert f.name.endswith(f"_{f.op}_elem")
        assert kernel_spec().kind_of(f.btf_id) == Kind.FUNC


def _insn(code: int, regs: int, imm: int) -> bytes:
    return struct.pack("<BBhi", code, regs, 0, imm)


def test_call_targets_are_helper_calls_relative_to_the_base() -> None:
    code = b"".join([
        _insn(0x85, 0x00, 0x1000),  # helper call: base + 0x1000
        _insn(0x85, 0x10, 7),  # a BPF-to-BPF call (src_reg 1): not a kernel function
        _insn(0x85, 0x00, 0),  # withheld address
        _insn(0x18, 0x01, 0x85), _insn(0x00, 0x00, 0),  # ld_imm64: two slots, neither a call
        _insn(0x85, 0x00, -0x20),  # below the base
        _insn(0x95, 0x00, 0),  # exit
    ])  # fmt: skip
    assert bpfmap.call_targets(code + b"\x85\x00", 0xFFFF0000) == ({0xFFFF1000, 0xFFFF0000 - 0x20}, 1)


# --- decoding with BTF ------------------------------------------------------------------------------------------


def _struct(spec: Spec, name: str) -> int:
    return next(i for i in spec.find(name) if isinstance(spec.type(i), btf.Struct))


def test_a_struct_decodes_by_member_with_strings_and_arrays() -> None:
    spec = object_spec()
    layout = schema().layout("event")
    ev = make_event(netns=4026531840, mark=0x2A, ifindex=3, len=60, ifname=b"eth0", protocol=0x0800)
    record = layout.encode(ev)
    meta_off = layout.offset("netns")
    value = decode(spec, _struct(spec, "skb_meta"), record[meta_off:])
    assert value["netns"] == 4026531840 and value["mark"] == 0x2A and value["ifname"] == "eth0"
    assert value["cb"] == [0] * 20
    text = c_text(value)
    assert text.startswith("{.netns = 4026531840, .mark = 42, .ifindex = 3, .len = 60") and '.ifname = "eth0"' in text


def test_enums_by_name_and_bitfields_by_bits() -> None:
    spec = object_spec()
    op = next(i for i in spec.find("pwru_bpfmap_op") if isinstance(spec.type(i), btf.Enum))
    assert decode(spec, op, struct.pack("<I", 2)) == "PWRU_BPFMAP_UPDATE"
    assert isinstance(decode(spec, op, struct.pack("<I", 2)), Bare)
    assert decode(spec, op, struct.pack("<I", 99)) == 99
    assert c_text({"op": decode(spec, op, struct.pack("<I", 3))}) == "{.op = PWRU_BPFMAP_DELETE}"
    # the kernel's struct iphdr: ihl and version are 4-bit fields of its first byte
    k = kernel_spec()
    header = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1])
    ip = decode(k, _struct(k, "iphdr"), header)
    assert (ip["ihl"], ip["version"], ip["ttl"], ip["protocol"]) == (5, 4, 64, 17)
    assert ip["saddr"] == 0x0100007F  # little-endian read of network-order bytes, as the map holds them


def test_short_data_is_refused() -> None:
    spec = object_spec()
    with pytest.raises(ValueError):
        decode(spec, _struct(spec, "skb_meta"), b"\0" * 4)


# --- records to outputs -----------------------------------------------------------------------------------------

NAT_KEY, NAT_VALUE = bytes([10, 99, 0, 9]), bytes([10, 99, 0, 3])


class FakeTypes(bpfmap.MapTypes):
    """Map 7 has BTF types (the object's own struct skb_tuple as its value, u32 key); others none."""

    def get(self, map_id: int) -> tuple[Spec, int, int] | None:
        if map_id != 7:
            return None
        spec = object_spec()
        u32 = next(i for i in spec.find("__u32") if spec.kind_of(i) == Kind.TYPEDEF)
        return spec, u32, _struct(spec, "skb_meta")


def map_record(op: str, *, map_id: int = 7, found: int = 0, value: bytes | None = None, **event: Any) -> bytes:
    s = schema()
    ev = make_event(**event)
    layout = s.layout("bpfmap_op")
    ops = s.enum("pwru_bpfmap_op", "PWRU_BPFMAP_")
    values: dict[str, Any] = {k: ev[k] for k in ("ts", "skb", "probe", "probe_kind")}
    values.update(type=s.type_id("bpfmap_op"), size=layout.size, map_id=map_id, map_type=1, key_size=4,
                  value_size=4 if map_id != 7 else 60, map_name=b"nat_map", op=ops[op], found=found,
                  value_read=int(value is not None), key=NAT_KEY, value=value or b"")  # fmt: skip
    return layout.encode(values)


def event(**kw: Any) -> bytes:
    return schema().layout("event").encode(make_event(**kw))


def test_operations_join_their_event_and_are_decoded() -> None:
    stage = bpfmap.MapOpStage(FakeTypes())
    meta = schema().layout("event").encode(make_event(ifname=b"b0", len=42))
    meta_value = meta[schema().layout("event").offset("netns") :][:60]
    batch = Batch(schema(), [map_record("lookup", found=1, value=meta_value, ts=5), event(ts=5),
                             map_record("update", map_id=8, value=NAT_VALUE, ts=9)])  # fmt: skip
    out = stage.process(batch)
    assert out.records == [event(ts=5)]
    (key,) = out.map_ops
    op = out.map_ops[key]
    assert (op.op, op.found, op.map_name, op.key) == ("lookup", True, "nat_map", NAT_KEY)
    assert op.key_decoded == 0x0900630A
    assert op.value_decoded["ifname"] == "b0" and op.value_decoded["len"] == 42
    later = stage.process(Batch(schema(), [event(ts=9)]))
    (op9,) = later.map_ops.values()
    assert (op9.op, op9.found, op9.value, op9.key_decoded) == ("update", None, NAT_VALUE, None)


def test_text_shows_pwrus_block_then_ours() -> None:
    op = MapOp(12, "nat_map", 1, "lookup", 4, 4, NAT_KEY, NAT_VALUE, True, 0x0900630A, 0x0300630A)
    assert op.text() == (
        "map_id: 12\nmap_name: nat_map\nkey(4):\n"
        "00000000  0a 63 00 09" + " " * 39 + "|.c..|\n"
        "value(4):\n"
        "00000000  0a 63 00 03" + " " * 39 + "|.c..|\n"
        "map_op: lookup (found)\nkey_decoded: 151020298\nvalue_decoded: 50357002"
    )
    miss = MapOp(12, "nat_map", 1, "lookup", 4, 4, NAT_KEY, None, False)
    assert "value(4):\nmap_op: lookup (not found)" in miss.text()
    assert "map_op: delete" in MapOp(3, "m", 1, "delete", 4, 4, NAT_KEY, None).text()


def test_outputs_add_the_operation_to_its_event() -> None:
    stage = bpfmap.MapOpStage(FakeTypes())
    batch = stage.process(Batch(schema(), [map_record("update", map_id=8, value=NAT_VALUE), event(), event(ts=3)]))
    text = TextFormatter(OutputConfig(), FakeNames()).format_batch(batch)
    assert text[0].split("\n")[1:3] == ["map_id: 8", "map_name: nat_map"] and "\n" not in text[1]
    lines = JsonFormatter(OutputConfig(json=True), FakeNames()).format_batch(batch)
    first = json.loads(lines[0])
    assert first["bpfmap"] == {"map_id": 8, "map_name": "nat_map", "map_type": 1, "op": "update", "key_size": 4,
                               "key": "0a630009", "value_size": 4, "value": "0a630003"}  # fmt: skip
    assert "bpfmap" not in json.loads(lines[1])


def test_pending_operations_are_bounded() -> None:
    stage = bpfmap.MapOpStage(FakeTypes())
    stage.process(Batch(schema(), [map_record("delete", map_id=8, ts=t) for t in range(bpfmap.MAX_PENDING + 10)]))
    out = stage.process(Batch(schema(), [event(ts=0), event(ts=bpfmap.MAX_PENDING + 9)]))
    assert [k[0] for k in out.map_ops] == [bpfmap.MAX_PENDING + 9]
