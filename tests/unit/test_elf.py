"""ObjectSpec parsing of clang-built test objects (tests/data/bpf/*.bpf.c): sections, maps, globals, .BTF.ext,
bpf-to-bpf call fixups and replace_function."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
from pathlib import Path

import pytest

from pwru.ebpf import asm, btf
from pwru.ebpf.elf import ELFError, ObjectSpec, ProgramSpec, section_program_type
from pwru.ebpf.syscall import AttachType, MapType, ProgType

_BUILD = Path(__file__).resolve().parents[1] / "data" / "bpf" / "build.py"
_spec = importlib.util.spec_from_file_location("bpf_test_build", _BUILD)
assert _spec is not None and _spec.loader is not None
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

pytestmark = pytest.mark.skipif(not build.have_clang(), reason="clang not installed")


@pytest.fixture(scope="module")
def obj_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.compile_object("objects", tmp_path_factory.mktemp("bpf"))  # type: ignore[no-any-return]


@pytest.fixture
def obj(obj_path: Path) -> ObjectSpec:
    return ObjectSpec.load(obj_path)


def _call_targets(prog: ProgramSpec) -> dict[int, int]:
    """For each pseudo call: instruction index -> index of the instruction it lands on."""
    insns = prog.insns
    slots = asm.slot_offsets(insns)
    by_slot = {s: i for i, s in enumerate(slots[:-1])}
    return {i: by_slot[slots[i] + insn.imm + 1] for i, insn in enumerate(insns) if insn.is_pseudo_call}


def _function_starts(prog: ProgramSpec) -> dict[str, int]:
    starts, pos = {}, 0
    for name in prog.function_names:
        starts[name] = pos
        pos += len(prog.function(name).insns)
    return starts


@pytest.mark.parametrize(
    ("section", "ptype", "attach", "target", "ret"),
    [
        ("kprobe/ip_rcv", ProgType.KPROBE, None, "ip_rcv", False),
        ("kretprobe/ip_rcv", ProgType.KPROBE, None, "ip_rcv", True),
        ("kprobe.multi/ip_*", ProgType.KPROBE, AttachType.TRACE_KPROBE_MULTI, "ip_*", False),
        ("fentry/tcp_v4_rcv", ProgType.TRACING, AttachType.TRACE_FENTRY, "tcp_v4_rcv", False),
        ("fexit/x", ProgType.TRACING, AttachType.TRACE_FEXIT, "x", True),
        ("tp_btf/kfree_skb", ProgType.TRACING, AttachType.TRACE_RAW_TP, "kfree_skb", False),
        ("raw_tp/kfree_skb", ProgType.RAW_TRACEPOINT, None, "kfree_skb", False),
        ("raw_tracepoint/net_dev_xmit", ProgType.RAW_TRACEPOINT, None, "net_dev_xmit", False),
        ("tracepoint/skb/kfree_skb", ProgType.TRACEPOINT, None, "skb/kfree_skb", False),
        ("tc", ProgType.SCHED_CLS, None, "", False),
        ("tcx/ingress", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, "", False),
        ("tcx/egress", ProgType.SCHED_CLS, AttachType.TCX_EGRESS, "", False),
        ("xdp", ProgType.XDP, AttachType.XDP, "", False),
        ("netfilter", ProgType.NETFILTER, AttachType.NETFILTER, "", False),
        ("socket", ProgType.SOCKET_FILTER, None, "", False),
        ("kprobe/", ProgType.KPROBE, None, "", False),
    ],
)
def test_section_conventions(
    section: str, ptype: ProgType, attach: AttachType | None, target: str, ret: bool
) -> None:
    assert section_program_type(section) == (ptype, attach, target, ret)


@pytest.mark.parametrize("section", ["tcfoo", "sockets", "uprobe/x", "license"])
def test_unknown_sections_are_refused(section: str) -> None:
    with pytest.raises(ELFError):
        section_program_type(section)


def test_programs_one_per_function(obj: ObjectSpec) -> None:
    assert set(obj.programs) == {
        "sock_answer", "sock_calls", "tc_filter", "tcx_in", "xdp_pass", "kp_ip_rcv", "kretp", "kpm",
        "fent", "fexi", "tpbtf", "rawtp", "rawtp2", "tp", "nf",
    }  # fmt: skip
    assert obj.programs["sock_answer"].section == obj.programs["sock_calls"].section == "socket"
    assert "leaf" not in obj.programs and "filter_pcap_l2" in obj.functions
    assert obj.license == "Dual BSD/GPL"
    assert obj.programs["tpbtf"].attach_to == "kfree_skb"
    assert obj.programs["kpm"].expected_attach_type == AttachType.TRACE_KPROBE_MULTI


def test_btf_maps(obj: ObjectSpec) -> None:
    counts = obj.maps["counts"]
    assert (counts.type, counts.key_size, counts.value_size, counts.max_entries, counts.flags) == (
        MapType.HASH, 4, 16, 128, 1,
    )  # fmt: skip
    assert obj.btf is not None
    assert obj.btf.name_of(counts.value_type_id) == "value"
    events = obj.maps["events"]
    assert (events.type, events.key_size, events.value_size, events.max_entries) == (
        MapType.RINGBUF,
        0,
        0,
        1 << 16,
    )
    scratch = obj.maps["scratch"]
    assert (scratch.type, scratch.key_size, scratch.value_size) == (MapType.PERCPU_ARRAY, 4, 24)


def test_global_data(obj: ObjectSpec) -> None:
    ro = obj.maps[".rodata"]
    assert ro.readonly and ro.type == MapType.ARRAY and ro.max_entries == 1 and ro.value_size == 24
    assert ro.data is not None
    v = obj.variables
    assert (v["answer"].offset, v["answer"].size) == (0, 4)
    assert struct.unpack_from("<I", ro.data, v["answer"].offset)[0] == 7
    assert struct.unpack_from("<Q", ro.data, v["big_const"].offset)[0] == 0x1122334455667788
    assert ro.data[v["tag"].offset : v["tag"].offset + 8] == b"default\0"
    assert obj.maps[".data"].data == struct.pack("<I", 5)
    bss = obj.maps[".bss"]
    assert not bss.readonly and bss.data == bytes(24)
    assert v["bss_counter"].section == ".bss"


def test_datasec_fixed_from_symbols(obj: ObjectSpec) -> None:
    b = obj.btf
    assert b is not None
    ds = b.type(b.find_one(".rodata", btf.Kind.DATASEC))
    assert isinstance(ds, btf.Datasec)
    assert ds.size == 24
    got = {b.name_of(x.type): x.offset for x in ds.vars}
    assert got == {"answer": 0, "big_const": 8, "tag": 16}
    assert [x.offset for x in ds.vars] == sorted(x.offset for x in ds.vars)
    # The fixed BTF still parses after encoding.
    again = btf.Spec.from_bytes(b.encode())
    assert again.type(again.find_one(".rodata", btf.Kind.DATASEC)) == ds


def test_map_references(obj: ObjectSpec) -> None:
    refs = {(r.map, r.offset) for r in obj.programs["tc_filter"].map_refs}
    assert refs == {(".rodata", 16), (".rodata", 8)}
    kp = obj.programs["kp_ip_rcv"]
    (ev,) = [r for r in kp.map_refs if r.map == "events"]
    assert ev.offset is None
    insn = kp.insns[ev.index]
    assert insn.is_ld_imm64 and insn.src == asm.LdImm64Src.MAP_FD
    # bss_counter is written by leaf(), which kp_ip_rcv reaches through middle().
    assert (".bss", obj.variables["bss_counter"].offset) in {(r.map, r.offset) for r in kp.map_refs}


def test_subprograms_linked_transitively(obj: ObjectSpec) -> None:
    prog = obj.programs["sock_calls"]
    assert prog.function_names == ["sock_calls", "middle", "leaf"]
    starts = _function_starts(prog)
    targets = sorted(_call_targets(prog).values())
    assert targets == [starts["middle"], starts["leaf"]]
    assert obj.programs["sock_answer"].function_names == ["sock_answer"]


def test_func_and_line_info(obj: ObjectSpec) -> None:
    prog = obj.programs["tc_filter"]
    b = obj.btf
    assert b is not None
    starts = _function_starts(prog)
    fi = prog.func_info
    assert [(f.index, b.name_of(f.type_id)) for f in fi] == [(starts[n], n) for n in prog.function_names]
    lines = prog.line_info
    assert {starts[n] for n in starts} <= {r.index for r in lines}
    assert all(b.string(r.file_name_off).endswith("objects.bpf.c") for r in lines)
    assert any("filter_pcap_l2(data, data_end)" in b.string(r.line_off) for r in lines)
    # Kernel records are in slots: ld_imm64 counts twice.
    recs = prog.func_info_bytes()
    slots = asm.slot_offsets(prog.insns)
    assert [struct.unpack_from("<I", recs, 8 * i)[0] for i in range(len(fi))] == [slots[f.index] for f in fi]


def test_replace_function_fixes_calls_and_records(obj: ObjectSpec) -> None:
    prog = obj.programs["tc_filter"]
    before = _function_starts(prog)
    old_len = len(prog.function("filter_pcap_l2").insns)
    l3_lines_before = [r.line_col for r in prog.line_info if r.index >= before["filter_pcap_l3"]]
    body = [
        asm.mov_imm(asm.R0, 0),
        asm.jmp_reg(asm.JmpOp.JGE, asm.R1, asm.R2, "out"),
        asm.ld_imm64(asm.R3, 1 << 40),
        asm.mov_imm(asm.R0, 1),
        asm.exit_().with_label("out"),
    ]
    obj.replace_function("filter_pcap_l2", body)
    after = _function_starts(prog)
    assert after["filter_pcap_l3"] == before["filter_pcap_l3"] + len(body) - old_len
    assert sorted(_call_targets(prog).values()) == [after["filter_pcap_l2"], after["filter_pcap_l3"]]
    insns = prog.insns
    assert insns[after["filter_pcap_l2"] + 1].off == 3  # label resolved in slots (over the ld_imm64)
    assert [f.index for f in prog.func_info] == [after[n] for n in prog.function_names]
    stub_lines = [r for r in prog.line_info if after["filter_pcap_l2"] <= r.index < after["filter_pcap_l3"]]
    assert [r.index for r in stub_lines] == [after["filter_pcap_l2"]]
    assert [r.line_col for r in prog.line_info if r.index >= after["filter_pcap_l3"]] == l3_lines_before
    assert prog.line_info_bytes()  # still encodable


def test_replace_function_from_bytes_on_one_program(obj: ObjectSpec) -> None:
    code = asm.encode([asm.mov_imm(asm.R0, 1), asm.exit_()])
    other = obj.programs["sock_calls"]
    other_before = [str(i) for i in other.insns]
    prog = obj.programs["tc_filter"]
    prog.replace_function("filter_pcap_l3", code)
    assert [str(i) for i in prog.function("filter_pcap_l3").insns] == [
        str(asm.mov_imm(asm.R0, 1)),
        str(asm.exit_()),
    ]
    assert len(obj.functions["filter_pcap_l3"].insns) == 4  # the object's copy is untouched
    assert [str(i) for i in other.insns] == other_before


def test_replace_function_errors(obj: ObjectSpec) -> None:
    with pytest.raises(ELFError, match="no function"):
        obj.replace_function("nope", [asm.exit_()])
    with pytest.raises(ELFError, match="is a program"):
        obj.replace_function("tc_filter", [asm.exit_()])
    with pytest.raises(ELFError, match="refers outside"):
        obj.replace_function("filter_pcap_l2", [asm.ld_map_fd(asm.R1, 3), asm.exit_()])
    with pytest.raises(ELFError, match="does not end"):
        obj.replace_function("filter_pcap_l2", [asm.mov_imm(asm.R0, 1)])


def test_from_bytes_and_not_bpf(obj_path: Path) -> None:
    a = ObjectSpec.from_bytes(obj_path.read_bytes())
    assert set(a.programs) == set(ObjectSpec.load(obj_path).programs)
    with pytest.raises(ELFError):
        ObjectSpec.load("/bin/true")
    with pytest.raises(ELFError):
        ObjectSpec.from_bytes(b"not an elf at all")


def test_btf_ext_core_records(tmp_path: Path) -> None:
    spec = ObjectSpec.load(build.compile_object("core", tmp_path))
    prog = spec.programs["core_values"]
    assert prog.prog_type == ProgType.RAW_TRACEPOINT
    kinds = {r.kind.name for r in prog.core_relos}
    assert {"FIELD_BYTE_OFFSET", "FIELD_BYTE_SIZE", "FIELD_EXISTS", "TYPE_SIZE", "ENUMVAL_VALUE"} <= kinds
    assert all(r.access and r.type_id for r in prog.core_relos)


def test_objdump_agrees_on_function_sizes(obj_path: Path, obj: ObjectSpec) -> None:
    out = subprocess.run(["llvm-readelf", "-s", str(obj_path)], capture_output=True, text=True, check=False)
    if out.returncode:
        pytest.skip("llvm-readelf not available")
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[3] == "FUNC":
            assert asm.slot_count(obj.functions[parts[7]].insns) * 8 == int(parts[2])
