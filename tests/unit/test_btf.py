"""BTF parser tests: vmlinux checked against bpftool, a clang-built object covering every kind, encoding."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pwru.ebpf import btf
from pwru.ebpf.btf import Kind, Spec

VMLINUX = Path("/sys/kernel/btf/vmlinux")
needs_vmlinux = pytest.mark.skipif(not VMLINUX.exists(), reason="no vmlinux BTF")
needs_bpftool = pytest.mark.skipif(shutil.which("bpftool") is None, reason="no bpftool")
needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="no clang")

_TYPE_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_KV = re.compile(r"(\w+)=(\S+?),?(?=\s|$)")


@dataclasses.dataclass
class DumpedType:
    kind: str
    name: str
    attrs: dict[str, str]
    items: list[tuple[str, dict[str, str]]]


def bpftool_dump(path: Path) -> dict[int, DumpedType]:
    """Parse ``bpftool btf dump file PATH`` (raw format) into {id: DumpedType}."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(path)], check=True, capture_output=True, text=True
    ).stdout
    types: dict[int, DumpedType] = {}
    cur: DumpedType | None = None
    for line in out.splitlines():
        if line.startswith("\t"):
            assert cur is not None
            body = line.strip()
            m = re.match(r"^'([^']*)'\s*(.*)$", body)
            name, rest = (m.group(1), m.group(2)) if m else ("", body)
            cur.items.append((name, dict(_KV.findall(rest))))
            continue
        m = _TYPE_LINE.match(line)
        assert m, line
        cur = DumpedType(m.group(2), m.group(3), dict(_KV.findall(m.group(4))), [])
        types[int(m.group(1))] = cur
    return types


def object_btf(obj: Path) -> bytes:
    with obj.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(".BTF")
        assert sec is not None
        return bytes(sec.data())


def _int(v: str) -> int:
    return int(v.removesuffix("ULL").removesuffix("LL"))


def _name(n: str) -> str:
    return "" if n == "(anon)" else n


def assert_matches_dump(spec: Spec, dump: dict[int, DumpedType]) -> None:
    """Every type of ``spec`` agrees with bpftool on kind, name and kind-specific data."""
    assert len(spec) == len(dump)
    for tid, t in spec:
        d = dump[tid]
        assert t.kind.name == d.kind, tid
        assert t.name == _name(d.name), tid
        if isinstance(t, btf.Struct | btf.Union):
            assert int(d.attrs["size"]) == t.size
            got = [(m.name, m.type, m.bit_offset, m.bitfield_size) for m in t.members]
            want = [
                (_name(n), int(a["type_id"]), int(a["bits_offset"]), int(a.get("bitfield_size", 0)))
                for n, a in d.items
            ]
            assert got == want, tid
        elif isinstance(t, btf.FuncProto):
            assert t.return_type == int(d.attrs["ret_type_id"])
            assert [(p.name, p.type) for p in t.params] == [(_name(n), int(a["type_id"])) for n, a in d.items]
        elif isinstance(t, btf.Enum | btf.Enum64):
            assert [(v.name, v.value) for v in t.values] == [(n, _int(a["val"])) for n, a in d.items]
        elif isinstance(t, btf.Int):
            assert (t.size, t.offset, t.bits) == (
                int(d.attrs["size"]),
                int(d.attrs["bits_offset"]),
                int(d.attrs["nr_bits"]),
            )
        elif isinstance(t, btf.Array):
            assert (t.type, t.index_type, t.nelems) == (
                int(d.attrs["type_id"]),
                int(d.attrs["index_type_id"]),
                int(d.attrs["nr_elems"]),
            )
        elif isinstance(t, btf.Func):
            assert t.type == int(d.attrs["type_id"])
            assert t.linkage.name.lower() == d.attrs["linkage"]
        elif isinstance(t, btf.Pointer | btf.Typedef | btf.Const | btf.Volatile | btf.Restrict | btf.TypeTag):
            assert t.type == int(d.attrs["type_id"])
        elif isinstance(t, btf.DeclTag):
            assert (t.type, t.component_idx) == (int(d.attrs["type_id"]), int(d.attrs["component_idx"]))
        elif isinstance(t, btf.Datasec):
            assert [(v.type, v.offset, v.size) for v in t.vars] == [
                (int(a["type_id"]), int(a["offset"]), int(a["size"])) for _, a in d.items
            ]


# ------------------------------------------------------------------------------------------------- vmlinux


@pytest.fixture(scope="module")
def vmlinux() -> Spec:
    return btf.kernel_btf()


@pytest.fixture(scope="module")
def vmlinux_dump() -> dict[int, DumpedType]:
    return bpftool_dump(VMLINUX)


@needs_vmlinux
@needs_bpftool
def test_vmlinux_matches_bpftool(vmlinux: Spec, vmlinux_dump: dict[int, DumpedType]) -> None:
    assert_matches_dump(vmlinux, vmlinux_dump)


@needs_vmlinux
@needs_bpftool
def test_sk_buff_offsets_agree_with_bpftool(vmlinux: Spec, vmlinux_dump: dict[int, DumpedType]) -> None:
    dump = vmlinux_dump
    (sid,) = [i for i, d in dump.items() if d.kind == "STRUCT" and d.name == "sk_buff"]
    assert vmlinux.find("sk_buff", Kind.STRUCT) == [sid]

    def flatten(type_id: int, base: int) -> dict[str, tuple[int, int]]:
        """Named members reachable through anonymous struct/union members: name -> (bit offset, bits)."""
        out: dict[str, tuple[int, int]] = {}
        for name, a in dump[type_id].items:
            off = base + int(a["bits_offset"])
            inner = int(a["type_id"])
            while dump[inner].kind in ("TYPEDEF", "CONST", "VOLATILE"):
                inner = int(dump[inner].attrs["type_id"])
            if name == "(anon)" and dump[inner].kind in ("STRUCT", "UNION"):
                for k, v in flatten(inner, off).items():
                    out.setdefault(k, v)
            else:
                out.setdefault(name, (off, int(a.get("bitfield_size", 0))))
        return out

    want = flatten(sid, 0)
    assert {"dev", "len", "protocol", "pkt_type", "mark", "head", "data"} <= set(want)
    bitfields = 0
    for name, (bit_off, bits) in want.items():
        m = vmlinux.member("sk_buff", name)
        assert vmlinux.bitfield(m) == (bit_off, bits), name
        if bits:
            bitfields += 1
            with pytest.raises(btf.BTFError):
                vmlinux.member_offset("sk_buff", name)
        else:
            assert vmlinux.member_offset("sk_buff", name) == bit_off // 8
    assert bitfields >= 5  # pkt_type, ip_summed, cloned, ...
    sk = vmlinux.type(sid)
    assert isinstance(sk, btf.Struct)
    for name, (bit_off, _) in want.items():  # the one member search, also what CO-RE uses
        hit = vmlinux.find_member(sk, name)
        assert hit is not None and hit[0].name == name and hit[0].bit_offset + hit[1] == bit_off, name
    assert vmlinux.find_member(sk, "no_such_member") is None
    assert vmlinux.size_of(sid) == int(dump[sid].attrs["size"])
    # dotted paths through a named member
    assert vmlinux.member_offset("sk_buff", "headers.protocol") == vmlinux.member_offset(
        "sk_buff", "protocol"
    )


@needs_vmlinux
def test_vmlinux_encode_round_trips(vmlinux: Spec) -> None:
    raw = VMLINUX.read_bytes()
    assert vmlinux.encode() == raw
    # a modified copy re-encodes unchanged records byte for byte
    copy = Spec.from_bytes(raw)
    sid = copy.find_one("sk_buff", Kind.STRUCT)
    copy.replace(sid, copy.type(sid))
    again = copy.encode()
    assert again[24:] == raw[24:]  # same types and strings, only the header is re-written
    reparsed = Spec.from_bytes(again)
    assert reparsed.type(sid) == vmlinux.type(sid)
    assert reparsed.encode() == again
    assert len(reparsed) == len(vmlinux)


@needs_vmlinux
def test_vmlinux_lookups(vmlinux: Spec) -> None:
    assert len(vmlinux) > 50_000
    fid = vmlinux.find_one("ip_rcv", Kind.FUNC)
    proto = vmlinux.func_proto(fid)
    assert vmlinux.name_of(vmlinux.resolve(vmlinux.type(proto.params[0].type).type)) == "sk_buff"  # type: ignore[union-attr]
    assert [p.name for p in proto.params][:2] == ["skb", "dev"]
    assert vmlinux.enum_values("skb_drop_reason")["SKB_DROP_REASON_NOT_SPECIFIED"] == 2
    assert vmlinux.type(0) is btf.VOID
    u32 = vmlinux.find_one("u32", Kind.TYPEDEF)
    assert vmlinux.size_of(u32) == 4
    assert vmlinux.kind_of(vmlinux.resolve(u32)) == Kind.INT
    assert vmlinux.find("no_such_type_xyz") == []
    assert btf.kernel_btf() is vmlinux


# -------------------------------------------------------------------------------------- clang-built object

C_SOURCE = r"""
typedef unsigned int u32;
struct sk_buff { int len; unsigned int a:3, b:5; struct sk_buff *next; u32 mark; };
enum skb_drop_reason { SKB_DROP_REASON_NOT_SPECIFIED = 2, SKB_DROP_REASON_NO_SOCKET = 3 };
enum big { BIG_A = 0x100000000ULL, BIG_B = 1 };
enum neg { NEG_A = -5, NEG_B = 7 };
union num { int i; float f; double d; };
struct fwd_only;
union fwd_union;
struct holder {
    struct fwd_only *p;
    union fwd_union *u;
    const volatile int cv;
    int *__restrict r;
    int arr[4];
    int __attribute__((btf_type_tag("user"))) *tagged;
    union num n;
    enum big b;
    enum neg ng;
} __attribute__((btf_decl_tag("holder_tag")));
int global_var = 1;
struct holder holder_var;
__attribute__((noinline)) int kfree_skb_reason(struct sk_buff *skb, enum skb_drop_reason reason)
{ return skb->len + reason; }
__attribute__((noinline)) static int
sk_skb_reason_drop(void *sk, const struct sk_buff *skb, enum skb_drop_reason r)
{ return skb->len + r + (sk != 0); }
typedef void (*btf_trace_kfree_skb)(void *, struct sk_buff *, void *, enum skb_drop_reason);
btf_trace_kfree_skb tp_var;
int __attribute__((btf_decl_tag("fn_tag")))
user(struct sk_buff *skb __attribute__((btf_decl_tag("param"))))
{ return kfree_skb_reason(skb, 2) + sk_skb_reason_drop(0, skb, 3) + holder_var.b; }
"""


def build_object(tmp: Path, source: str = C_SOURCE) -> Path:
    src = tmp / "t.c"
    src.write_text(source)
    obj = tmp / "t.o"
    subprocess.run(["clang", "-target", "bpf", "-g", "-O2", "-c", str(src), "-o", str(obj)], check=True)
    return obj


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("clang") is None:
        pytest.skip("no clang")
    return build_object(tmp_path_factory.mktemp("btf"))


@pytest.fixture(scope="module")
def objspec(obj: Path) -> Spec:
    return Spec.from_bytes(object_btf(obj))


@needs_clang
@needs_bpftool
def test_object_matches_bpftool(obj: Path, objspec: Spec) -> None:
    assert_matches_dump(objspec, bpftool_dump(obj))


def _enum64_variant(spec: Spec) -> tuple[Spec, int]:
    """clang 14 cannot emit ENUM64: make ``enum big`` one with real 64-bit values, re-encode, re-parse."""
    copy = Spec.from_bytes(spec.encode())
    eid = copy.find_one("big", Kind.ENUM)
    copy.replace(
        eid,
        btf.Enum64(
            "big", 8, (btf.EnumValue("BIG_A", 0x1_0000_0000), btf.EnumValue("BIG_NEG", -2)), signed=True
        ),
    )
    return Spec.from_bytes(copy.encode()), eid


@needs_clang
def test_object_covers_every_kind(objspec: Spec) -> None:
    kinds = {t.kind for _, t in objspec}
    assert kinds == set(Kind) - {Kind.UNKN, Kind.ENUM64}
    spec64, eid = _enum64_variant(objspec)
    assert {t.kind for _, t in spec64} == set(Kind) - {Kind.UNKN}
    e = spec64.type(eid)
    assert isinstance(e, btf.Enum64) and e.signed
    assert spec64.enum_values("big") == {"BIG_A": 0x1_0000_0000, "BIG_NEG": -2}


@needs_clang
@needs_bpftool
def test_enum64_encoding_read_by_bpftool(objspec: Spec, tmp_path: Path) -> None:
    spec64, eid = _enum64_variant(objspec)
    path = tmp_path / "enum64.btf"
    path.write_bytes(spec64.encode())
    dump = bpftool_dump(path)
    assert dump[eid].kind == "ENUM64"
    assert dump[eid].attrs["encoding"] == "SIGNED"
    assert [(n, _int(a["val"])) for n, a in dump[eid].items] == [("BIG_A", 0x1_0000_0000), ("BIG_NEG", -2)]
    assert_matches_dump(spec64, dump)


@needs_clang
def test_object_details(objspec: Spec) -> None:
    s = objspec
    sk = s.type(s.find_one("sk_buff", Kind.STRUCT))
    assert isinstance(sk, btf.Struct) and sk.kind_flag
    assert [tuple(m) for m in sk.members][1:3] == [("a", 4, 32, 3), ("b", 4, 35, 5)]
    assert s.member_offset("sk_buff", "mark") == 16
    assert s.size_of(s.find_one("sk_buff")) == 24
    holder = s.find_one("holder", Kind.STRUCT)
    assert s.size_of(s.member(holder, "arr").type) == 16
    (tag,) = [t for _, t in s if isinstance(t, btf.DeclTag) and t.name == "holder_tag"]
    assert tag.type == holder and tag.component_idx == -1
    (ptag,) = [t for _, t in s if isinstance(t, btf.DeclTag) and t.name == "param"]
    assert ptag.component_idx == 0 and s.name_of(ptag.type) == "user"
    (tt,) = [t for _, t in s if isinstance(t, btf.TypeTag)]
    assert tt.name == "user" and s.resolve(s.find_one("holder", Kind.STRUCT)) == holder
    fwds = {t.name: t.union for _, t in s if isinstance(t, btf.Fwd)}
    assert fwds == {"fwd_only": False, "fwd_union": True}
    assert {t.name: t.size for _, t in s if isinstance(t, btf.Float)} == {"float": 4, "double": 8}
    funcs = {t.name: t.linkage for _, t in s if isinstance(t, btf.Func)}
    assert funcs["kfree_skb_reason"] == btf.Linkage.GLOBAL
    assert funcs["sk_skb_reason_drop"] == btf.Linkage.STATIC
    proto = s.func_proto("sk_skb_reason_drop")
    assert [p.name for p in proto.params] == ["sk", "skb", "r"]
    cv = s.member(holder, "cv").type
    assert s.kind_of(cv) == Kind.CONST and s.kind_of(s.resolve(cv)) == Kind.INT
    data = s.type(s.find_one(".data", Kind.DATASEC))
    assert isinstance(data, btf.Datasec) and data.size == 0  # the loader fills this in
    (var,) = data.vars
    assert s.name_of(var.type) == "global_var" and var.size == 4
    assert s.string(0) == ""


@needs_clang
def test_patch_datasec_and_encode(objspec: Spec) -> None:
    s = Spec.from_bytes(objspec.encode())
    assert s.encode() == objspec.encode()
    did = s.find_one(".bss", Kind.DATASEC)
    sec = s.type(did)
    assert isinstance(sec, btf.Datasec)
    fixed = dataclasses.replace(
        sec, size=88, vars=(btf.VarSecinfo(sec.vars[0].type, 0, 80), btf.VarSecinfo(sec.vars[1].type, 80, 8))
    )
    s.replace(did, fixed)
    new_id = s.add(btf.Typedef("brand_new_name", s.find_one("u32")))
    assert s.modified
    out = Spec.from_bytes(s.encode())
    assert out.type(did) == fixed
    assert out.find("brand_new_name") == [new_id]
    assert out.string(len(objspec.strings)) == "brand_new_name"  # new strings are appended
    for tid, t in objspec:
        if tid != did:
            assert out.type(tid) == t


def test_split_btf(objspec: Spec) -> None:
    base = objspec
    strings = bytearray(b"\0")
    offs: dict[str, int] = {}

    def stroff(name: str) -> int:
        if not name:
            return 0
        existing = base.string_offsets(name)
        if existing:
            return existing[0]
        if name not in offs:
            offs[name] = len(base.strings) + len(strings)
            strings.extend(name.encode() + b"\0")
        return offs[name]

    skb = base.find_one("sk_buff", Kind.STRUCT)
    first = base.last_id + 1
    types = btf.encode_type(btf.Struct("mod_priv", 8, (btf.Member("skb", first + 1, 0),)), stroff)
    types += btf.encode_type(btf.Pointer(skb), stroff)
    types += btf.encode_type(btf.Typedef("u32", base.find_one("u32")), stroff)  # name from base strings
    import struct as _s

    header = _s.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    raw = header + types + bytes(strings)
    split = Spec.from_bytes(raw, base=base)
    assert split.first_id == first and len(split) == 3 and split.last_id == first + 2
    assert [tid for tid, _ in split] == [first, first + 1, first + 2]
    assert split.type(skb) == base.type(skb)
    assert split.member_offset("mod_priv", "skb") == 0
    assert split.resolve_type(split.resolve(split.type(first + 1).type)).name == "sk_buff"  # type: ignore[union-attr]
    assert split.find("u32") == [*base.find("u32"), first + 2]
    assert split.find("mod_priv") == [first]
    assert split.encode() == raw


def test_rejects_garbage() -> None:
    with pytest.raises(btf.BTFError):
        Spec.from_bytes(b"\x00" * 24)
    with pytest.raises(btf.BTFError):
        Spec.from_bytes(b"\x9f\xeb")
    bad_kind = bytes.fromhex("9feb0100 18000000 00000000 0c000000 0c000000 01000000".replace(" ", ""))
    bad_kind += (0).to_bytes(4, "little") + (0x1F << 24).to_bytes(4, "little") + (0).to_bytes(4, "little")
    bad_kind += b"\0"
    with pytest.raises(btf.BTFError, match="unknown BTF kind"):
        Spec.from_bytes(bad_kind)
