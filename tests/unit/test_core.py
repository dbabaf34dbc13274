"""CO-RE relocation of tests/data/bpf/core.bpf.c against the running kernel's vmlinux BTF (cross-checked with
bpftool) and against a deliberately different BTF (core_target.bpf.c) where fields moved or are missing."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from pwru.ebpf import asm, btf, core
from pwru.ebpf.core import CoreError, PoisonedLdImm64, Target
from pwru.ebpf.elf import CoreRelo, CoreReloKind, ObjectSpec

_BUILD = Path(__file__).resolve().parents[1] / "data" / "bpf" / "build.py"
_spec = importlib.util.spec_from_file_location("bpf_test_build", _BUILD)
assert _spec is not None and _spec.loader is not None
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

VMLINUX = Path("/sys/kernel/btf/vmlinux")
pytestmark = pytest.mark.skipif(not build.have_clang(), reason="clang not installed")
needs_vmlinux = pytest.mark.skipif(not VMLINUX.exists(), reason="no vmlinux BTF")

K = CoreReloKind


@pytest.fixture(scope="module")
def objdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("core")
    for name in ("core", "core_target"):
        build.compile_object(name, d)
    return d


@pytest.fixture
def obj(objdir: Path) -> ObjectSpec:
    return ObjectSpec.load(objdir / "core.o")


@pytest.fixture(scope="module")
def target_btf(objdir: Path) -> btf.Spec:
    o = ObjectSpec.load(objdir / "core_target.o")
    assert o.btf is not None
    return o.btf


def _results(
    obj: ObjectSpec, prog: str, target: btf.Spec | None
) -> dict[tuple[str, str, str], core.CoreResult]:
    """(root type, access path, kind) -> result, for one program relocated against ``target``."""
    p = obj.programs[prog]
    b = obj.btf
    assert b is not None
    insns = p.insns
    res = core.relocate(
        insns, p.core_relos, b, Target(target) if target is not None else Target(btf.kernel_btf())
    )
    out = {}
    for r in res:
        out[(b.name_of(r.relo.type_id), core._access_text(b, r.relo.type_id, r.relo), r.relo.kind.name)] = r
    return out


def _bpftool_members(struct: str) -> dict[str, tuple[int, int]]:
    """Direct members of a vmlinux struct from bpftool: name -> (bits_offset, bitfield_size)."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"], capture_output=True, text=True
    )
    if out.returncode:
        pytest.skip("bpftool cannot dump vmlinux BTF")
    lines = out.stdout.splitlines()
    head = re.compile(rf"^\[\d+\] STRUCT '{struct}' size=")
    start = next(i for i, line in enumerate(lines) if head.match(line))
    members = {}
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        m = re.match(r"\t'(\S+)' type_id=\d+ bits_offset=(\d+)(?: bitfield_size=(\d+))?", line)
        assert m, line
        members[m.group(1)] = (int(m.group(2)), int(m.group(3) or 0))
    return members


@needs_vmlinux
def test_against_vmlinux_matches_bpftool(obj: ObjectSpec) -> None:
    kb = btf.kernel_btf()
    r = _results(obj, "core_values", None)
    members = _bpftool_members("sk_buff")
    assert r[("sk_buff", "len", "FIELD_BYTE_OFFSET")].target == members["len"][0] // 8
    assert r[("sk_buff", "len", "FIELD_BYTE_SIZE")].target == 4
    assert r[("sk_buff", "mark", "FIELD_BYTE_OFFSET")].target == kb.member_offset("sk_buff", "mark")
    assert r[("sk_buff", "dev", "FIELD_BYTE_OFFSET")].target == kb.member_offset("sk_buff", "dev")
    assert r[("sk_buff", "next", "FIELD_BYTE_OFFSET")].target == 0
    assert r[("sk_buff", "protocol", "FIELD_EXISTS")].target == 1
    missing = r[("sk_buff", "pwru_no_such_field", "FIELD_EXISTS")]
    assert (missing.local, missing.target, missing.poisoned) == (1, 0, False)
    sk_id = kb.find_one("sk_buff", btf.Kind.STRUCT)
    assert r[("sk_buff", "0", "TYPE_SIZE")].target == kb.size_of(sk_id)
    assert r[("sk_buff", "0", "TYPE_ID_TARGET")].target == sk_id
    assert r[("net_device", "0", "TYPE_EXISTS")].target == 1
    reasons = kb.enum_values("skb_drop_reason")
    assert r[("skb_drop_reason", "3", "ENUMVAL_VALUE")].target == reasons["SKB_DROP_REASON_NO_SOCKET"]
    assert r[("skb_drop_reason", "4", "ENUMVAL_EXISTS")].target == 0


@needs_vmlinux
def test_bitfield_against_vmlinux(obj: ObjectSpec) -> None:
    kb = btf.kernel_btf()
    m = kb.member("sk_buff", "pkt_type")
    assert m.bitfield_size == 3
    r = _results(obj, "core_reads", None)
    byte_off = r[("sk_buff", "pkt_type", "FIELD_BYTE_OFFSET")].target
    size = r[("sk_buff", "pkt_type", "FIELD_BYTE_SIZE")].target
    lshift = r[("sk_buff", "pkt_type", "FIELD_LSHIFT_U64")].target
    rshift = r[("sk_buff", "pkt_type", "FIELD_RSHIFT_U64")].target
    assert size == 1 and byte_off == m.bit_offset // 8 and rshift == 61
    assert 64 - lshift - 3 == m.bit_offset - byte_off * 8  # bit position inside the loaded byte
    assert r[("net_device", "ifindex", "FIELD_BYTE_OFFSET")].target == kb.member_offset(
        "net_device", "ifindex"
    )


@needs_vmlinux
def test_guarded_missing_field_is_poisoned(obj: ObjectSpec) -> None:
    p = obj.programs["core_reads"]
    insns = p.insns
    assert obj.btf is not None
    res = core.relocate(insns, p.core_relos, obj.btf, Target(btf.kernel_btf()))
    (bad,) = [x for x in res if x.poisoned]
    assert bad.relo.kind == K.FIELD_BYTE_OFFSET and "pwru_no_such_field" in bad.reason
    poisoned = insns[bad.relo.index]
    assert poisoned.is_helper_call and poisoned.imm == core.POISON_HELPER
    # The guard (bpf_core_field_exists) became "r1 = 0" just before.
    exists = next(x for x in res if x.relo.kind == K.FIELD_EXISTS)
    assert insns[exists.relo.index].imm == 0


def test_against_a_different_btf(obj: ObjectSpec, target_btf: btf.Spec) -> None:
    r = _results(obj, "core_values", target_btf)
    assert r[("sk_buff", "mark", "FIELD_BYTE_OFFSET")].target == 0
    assert r[("sk_buff", "len", "FIELD_BYTE_OFFSET")].target == 32
    assert r[("sk_buff", "len", "FIELD_BYTE_SIZE")].target == 8
    assert r[("sk_buff", "dev", "FIELD_BYTE_OFFSET")].target == 16  # through two anonymous members
    assert r[("sk_buff", "next", "FIELD_BYTE_OFFSET")].target == 8
    assert r[("sk_buff", "protocol", "FIELD_EXISTS")].target == 0
    assert r[("sk_buff", "pwru_no_such_field", "FIELD_EXISTS")].target == 1
    assert r[("sk_buff", "0", "TYPE_SIZE")].target == 88
    assert r[("net_device", "0", "TYPE_EXISTS")].target == 1
    enum_val = r[("skb_drop_reason", "3", "ENUMVAL_VALUE")]
    assert enum_val.poisoned and enum_val.target is None  # NO_SOCKET is not in this "kernel"


def test_poisoned_ld_imm64_keeps_two_slots(obj: ObjectSpec, target_btf: btf.Spec) -> None:
    p = obj.programs["core_values"]
    insns = p.insns
    slots_before = asm.slot_count(insns)
    assert obj.btf is not None
    res = core.relocate(insns, p.core_relos, obj.btf, Target(target_btf))
    (bad,) = [x for x in res if x.poisoned]
    assert isinstance(insns[bad.relo.index], PoisonedLdImm64)
    assert asm.slot_count(insns) == slots_before
    code = asm.encode(insns)
    assert len(code) == slots_before * 8
    assert asm.decode(code)[bad.relo.index].imm == core.POISON_HELPER


def test_bitfield_and_missing_member_in_different_btf(obj: ObjectSpec, target_btf: btf.Spec) -> None:
    r = _results(obj, "core_reads", target_btf)
    assert r[("sk_buff", "pkt_type", "FIELD_BYTE_OFFSET")].target == 24
    assert r[("sk_buff", "pkt_type", "FIELD_LSHIFT_U64")].target == 64 - 5 - 3
    assert r[("sk_buff", "pkt_type", "FIELD_RSHIFT_U64")].target == 61
    ifindex = r[("net_device", "ifindex", "FIELD_BYTE_OFFSET")]
    assert ifindex.poisoned and ifindex.target is None
    assert not r[("sk_buff", "pwru_no_such_field", "FIELD_BYTE_OFFSET")].poisoned


def test_memory_access_size_follows_the_field(obj: ObjectSpec, target_btf: btf.Spec) -> None:
    assert obj.btf is not None
    sk = obj.btf.find_one("sk_buff", btf.Kind.STRUCT)
    local_off = obj.btf.member_offset(sk, "len")
    insns = [asm.ldx(asm.Size.W, asm.R0, asm.R1, local_off), asm.exit_()]
    relo = CoreRelo(0, sk, "0:2", K.FIELD_BYTE_OFFSET)
    (res,) = core.relocate(insns, [relo], obj.btf, Target(target_btf))
    assert not res.poisoned
    assert (insns[0].off, insns[0].size) == (32, asm.Size.DW)


def test_instruction_must_hold_local_value(obj: ObjectSpec, target_btf: btf.Spec) -> None:
    assert obj.btf is not None
    sk = obj.btf.find_one("sk_buff", btf.Kind.STRUCT)
    insns = [asm.mov_imm(asm.R0, 12345), asm.exit_()]
    with pytest.raises(CoreError, match="local value"):
        core.relocate(insns, [CoreRelo(0, sk, "0:2", K.FIELD_BYTE_OFFSET)], obj.btf, Target(target_btf))
    with pytest.raises(CoreError, match="access string"):
        core.relocate(insns, [CoreRelo(0, sk, "0:x", K.FIELD_BYTE_OFFSET)], obj.btf, Target(target_btf))


def test_type_matches_and_type_id_local(obj: ObjectSpec, target_btf: btf.Spec) -> None:
    b = obj.btf
    assert b is not None
    sk = b.find_one("sk_buff", btf.Kind.STRUCT)
    dev = b.find_one("net_device", btf.Kind.STRUCT)
    insns = [asm.mov_imm(asm.R0, 1), asm.mov_imm(asm.R1, 1), asm.mov_imm(asm.R2, sk), asm.exit_()]
    relos = [
        CoreRelo(0, sk, "0", K.TYPE_MATCHES),  # the target sk_buff lacks protocol: no match
        CoreRelo(1, dev, "0", K.TYPE_MATCHES),  # lacks ifindex
        CoreRelo(2, sk, "0", K.TYPE_ID_LOCAL),
    ]
    res = core.relocate(insns, relos, b, Target(target_btf))
    assert [x.target for x in res] == [0, 0, sk]
    assert [i.imm for i in insns[:3]] == [0, 0, sk]


def test_essential_names() -> None:
    assert core.essential_name("sk_buff___old") == "sk_buff"
    assert core.essential_name("sk_buff") == "sk_buff"
    assert core.essential_name("___x") == "___x"


@needs_vmlinux
def test_pwru_struct_dumps_get_the_running_kernels_type_ids() -> None:
    """--output-skb: bpf_snprintf_btf prints by the running kernel's BTF id (bpf_core_type_id_kernel, a
    TYPE_ID_TARGET relocation), never the object's own."""
    from pwru.bpf import build as pwru_build
    from pwru.bpf import object_path

    pwru_build.build()
    obj = ObjectSpec.load(object_path())
    kb = btf.kernel_btf()
    found = {}
    for name in ("tp_skb", "kprobe_skb_1", "fentry_skb_1"):
        r = _results(obj, name, None)
        found[name] = {k[0]: v for k, v in r.items() if k[2] == "TYPE_ID_TARGET"}
    for name, ids in found.items():
        assert set(ids) == {"sk_buff", "skb_shared_info"}, (name, ids)
        for struct_name, result in ids.items():
            assert result.target == kb.find_one(struct_name, btf.Kind.STRUCT), (name, struct_name)
            assert result.local != result.target  # the object's own id would print something else
    assert not {k for k in _results(obj, "nf_skb", None) if k[2] == "TYPE_ID_TARGET"}  # no helper there
