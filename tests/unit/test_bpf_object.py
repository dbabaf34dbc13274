"""The kernel-side object: it builds, and has the programs, maps, variables and types user space relies on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pwru.bpf import BPF_DIR, BuildError, build, object_path
from pwru.config import Config, FilterConfig
from pwru.ebpf import btf
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.syscall import MapType, ProgType
from pwru.errors import UserError
from pwru.filter import compile_filter
from pwru.run import build_object

KPROBES = [f"kprobe_skb_{n}" for n in range(1, 6)] + ["kprobe_skb_1_reason_2", "kprobe_skb_2_reason_3"]
FENTRIES = [f"fentry_skb_{n}" for n in range(1, 6)] + ["fentry_skb_1_reason_2", "fentry_skb_2_reason_3"]
CONFIG = [
    "cfg_netns", "cfg_mark", "cfg_mark_mask", "cfg_ifindex", "cfg_has_pcap", "cfg_output_meta",
    "cfg_output_tuple", "cfg_output_stack", "cfg_output_caller", "cfg_has_tunnel_pcap_l2", "cfg_has_tunnel_pcap_l3",
    "cfg_output_tunnel", "cfg_tp_skb_pos", "cfg_tp_reason_pos", "cfg_tp_location_pos", "cfg_probe_id",
]  # fmt: skip

needs_clang = pytest.mark.skipif(
    shutil.which("clang") is None or not Path("/usr/include/bpf/bpf_helpers.h").exists(),
    reason="needs clang and libbpf-dev",
)


@pytest.fixture(scope="module")
def obj_path() -> Path:
    build.build()  # no-op when up to date
    return object_path()


@pytest.fixture(scope="module")
def spec(obj_path: Path) -> ObjectSpec:
    return ObjectSpec.load(obj_path)


@needs_clang
def test_builds_from_scratch(tmp_path: Path) -> None:
    for f in BPF_DIR.glob("*.h"):
        shutil.copy(f, tmp_path)
    src = tmp_path / "pwru.bpf.c"
    shutil.copy(BPF_DIR / "pwru.bpf.c", src)
    [out] = build.build([src], force=True)
    assert out == tmp_path / "pwru.bpf.o"
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert not list(tmp_path.glob("*.tmp"))


@needs_clang
def test_compile_error_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "bad.bpf.c"
    src.write_text("int f(void) { return undefined_symbol; }\n")
    with pytest.raises(BuildError, match=r"clang failed on bad\.bpf\.c"):
        build.build([src])
    assert not (tmp_path / "bad.bpf.o").exists()


def test_missing_tools_give_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.CLANG_ENV, str(tmp_path / "no-clang"))
    with pytest.raises(BuildError, match="is not an executable"):
        build.find_clang()
    with pytest.raises(BuildError, match="install libbpf-dev"):
        build.libbpf_include_dir(tmp_path)
    with pytest.raises(BuildError, match=r"python3 -m pwru\.bpf\.build"):
        object_path("not-built.o")


def test_programs_and_sections(spec: ObjectSpec) -> None:
    progs = spec.programs
    assert set(KPROBES + FENTRIES + ["tp_skb"]) <= set(progs)
    for name in KPROBES:
        assert progs[name].section == name.replace("kprobe_", "kprobe/")
        assert progs[name].prog_type == ProgType.KPROBE
    for name in FENTRIES:
        assert progs[name].section == "fentry/placeholder"
        assert progs[name].prog_type == ProgType.TRACING
    assert progs["tp_skb"].section == "tp_btf/placeholder"
    assert progs["tp_skb"].prog_type == ProgType.TRACING


def test_maps(spec: ObjectSpec) -> None:
    maps = spec.maps
    assert maps["events"].type == MapType.RINGBUF
    assert maps["events"].max_entries & (maps["events"].max_entries - 1) == 0
    assert maps["stacks"].type == MapType.STACK_TRACE
    assert maps["stacks"].value_size == 127 * 8
    assert maps["lost"].type == MapType.PERCPU_ARRAY
    assert (maps["lost"].max_entries, maps["lost"].value_size) == (1, 8)


def test_config_variables(spec: ObjectSpec) -> None:
    rodata = spec.data_section_variables(".rodata")
    assert set(CONFIG) <= set(rodata)
    assert rodata["cfg_tp_skb_pos"].size == 4
    assert rodata["cfg_probe_id"].size == 8


def test_event_struct_in_btf(spec: ObjectSpec) -> None:
    assert spec.btf is not None
    sid = spec.btf.find_one("event", btf.Kind.STRUCT)
    names = [m.name for m in spec.btf.members(sid)]
    assert names[0] == "hdr"
    assert [m.name for m in spec.btf.members(spec.btf.find_one("record_header", btf.Kind.STRUCT))][:5] == [
        "ts", "skb", "probe", "type", "size"]  # fmt: skip
    assert {"meta", "tuple", "comm", "reason", "location", "stack_id"} <= set(names)
    assert names[-11:] == ["tunnel", "nf_pf", "nf_hook", "pad_nf", "nf_table", "nf_chain", "prog_ret", "prog_ret_kind",
                           "xdp_ctx", "pad_prog", "metadata"]  # pwru.h
    nf_hook = next(m for m in spec.btf.members(sid) if m.name == "nf_hook")
    assert spec.btf.size_of(nf_hook.type) == 1
    assert spec.btf.member_offset("event", "meta.ifindex") > spec.btf.member_offset("event", "comm")


@pytest.mark.parametrize(
    "stub", ["filter_pcap_l2", "filter_pcap_l3", "filter_pcap_tunnel_l2", "filter_pcap_tunnel_l3", "filter_skb_expr"]
)
def test_pcap_stubs_are_replaceable_subprograms(spec: ObjectSpec, stub: str) -> None:
    """The stubs survive clang as real functions, and every call site tests all 64 bits of their result
    (a translated filter may accept with a value like 0x40000 whose low byte is 0)."""
    assert stub in spec.functions
    for name in KPROBES + FENTRIES + ["tp_skb"]:
        prog = spec.programs[name]
        assert stub in prog.function_names
        insns = prog.insns
        calls = [i for i, ins in enumerate(insns) if ins.is_pseudo_call and ins.target == stub]
        assert len(calls) == 1, name
        # the first instruction after the call that reads r0 is a 64-bit jump against 0
        use = next(str(ins) for ins in insns[calls[0] + 1 :] if "r0" in str(ins) or "w0" in str(ins))
        assert use.startswith("if r0 == 0 goto"), (name, use)


def test_build_object_splices_the_tunnel_filters_it_is_given() -> None:
    stub = ObjectSpec.load(object_path()).functions["filter_pcap_tunnel_l3"].insns
    spec, consts = build_object(Config())
    assert consts == {"cfg_has_pcap": 0, "cfg_has_tunnel_pcap_l2": 0, "cfg_has_tunnel_pcap_l3": 0,
                      "cfg_has_skb_expr": 0, "cfg_has_xdp_expr": 0, "cfg_metadata_size": 0,
                      "cfg_xdp_metadata": 0}  # fmt: skip
    assert spec.functions["filter_pcap_tunnel_l3"].insns == stub
    filters = FilterConfig(pcap="udp port 4789", tunnel_pcap_l3="udp dst port 7001")
    spec, consts = build_object(Config(filter=filters))
    assert consts == {"cfg_has_pcap": 1, "cfg_has_tunnel_pcap_l2": 0, "cfg_has_tunnel_pcap_l3": 1,
                      "cfg_has_skb_expr": 0, "cfg_has_xdp_expr": 0, "cfg_metadata_size": 0,
                      "cfg_xdp_metadata": 0}  # fmt: skip
    body = spec.functions["filter_pcap_tunnel_l3"].insns
    assert body != stub and body == compile_filter("udp dst port 7001").to_ebpf("l3", "probe")  # type: ignore[union-attr]
    spec, consts = build_object(Config(filter=FilterConfig(tunnel_pcap_l2="ether host 02:00:00:00:99:02")))
    assert (consts["cfg_has_tunnel_pcap_l2"], consts["cfg_has_tunnel_pcap_l3"]) == (1, 0)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (FilterConfig(tunnel_pcap_l3="bogus ("), '--filter-tunnel-pcap-l3: invalid pcap filter "bogus ("'),
        (FilterConfig(tunnel_pcap_l2="udp port"), '--filter-tunnel-pcap-l2: invalid pcap filter "udp port"'),
        # libpcap has no raw-IP form of these: the inner packet from its network header has no Ethernet header
        (FilterConfig(tunnel_pcap_l3="ether host 02:00:00:00:99:02"), "--filter-tunnel-pcap-l3: invalid pcap"),
        (FilterConfig(tunnel_pcap_l3="arp"), '--filter-tunnel-pcap-l3: invalid pcap filter "arp"'),
    ],
)
def test_a_bad_tunnel_filter_names_its_flag(filters: FilterConfig, message: str) -> None:
    with pytest.raises(UserError) as info:
        build_object(Config(filter=filters))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert info.value.exit_code == 2
