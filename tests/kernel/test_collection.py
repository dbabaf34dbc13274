"""Collection on the real kernel: maps, constants (shared and per load), every program type of the test
object, CO-RE results seen by a running program, verifier errors with C source lines, pwru's own object."""

from __future__ import annotations

import errno
import importlib.util
import struct
from pathlib import Path

import pytest

from pwru.ebpf import btf
from pwru.ebpf.collection import Collection, ConstantError
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.errors import BPFError, VerifierError
from pwru.ebpf.syscall import AttachType, ProgType

_BUILD = Path(__file__).resolve().parents[1] / "data" / "bpf" / "build.py"
_spec = importlib.util.spec_from_file_location("bpf_test_build", _BUILD)
assert _spec is not None and _spec.loader is not None
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

pytestmark = [pytest.mark.root, pytest.mark.skipif(not build.have_clang(), reason="clang not installed")]

PACKET = bytes(64)
# What each program of objects.bpf.c that BPF_PROG_TEST_RUN can run returns on PACKET (constants answer=42).
RETURNS = {
    "sock_answer": 42,
    "sock_calls": (len(PACKET) - 14 + 1) * 2 + 5,  # middle(skb->len) + data_counter; the skb starts at L3
    "tc_filter": ord("d"),  # both filter stubs pass, then tag[0] of "default"
    "tcx_in": 2,  # leaf(1)
    "xdp_pass": 2,  # XDP_PASS
    "rawtp": 0,
    "rawtp2": 0,
}


@pytest.fixture(scope="module")
def objdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("coll")
    for name in ("objects", "core", "bad"):
        build.compile_object(name, d)
    return d


@pytest.fixture
def coll(objdir: Path) -> Collection:
    c = Collection(ObjectSpec.load(objdir / "objects.o"), constants={"answer": 42})
    yield c  # type: ignore[misc]
    c.close()


def test_every_program_type_loads(coll: Collection) -> None:
    assert coll.btf_fd is not None and coll.btf_error is None
    for name in coll.program_names():
        spec = coll.program_spec(name)
        if spec.prog_type == ProgType.TRACING and spec.expected_attach_type in (
            AttachType.TRACE_FENTRY,
            AttachType.TRACE_FEXIT,
        ):
            with pytest.raises(BPFError) as e:
                coll.load_program(name)
            assert e.value.errno == errno.EPERM  # locked-down kernel: refused before the verifier
            assert not isinstance(e.value, VerifierError)
            continue
        prog = coll.load_program(name)
        info = prog.info()
        assert (info.name, info.type) == (name, spec.prog_type)
        assert info.btf_id != 0  # func_info/line_info went with the load
        if name in RETURNS:
            ctx = bytes(8) if spec.prog_type == ProgType.RAW_TRACEPOINT else None
            res = prog.test_run(b"" if ctx is not None else PACKET, ctx=ctx)
            assert res.retval == RETURNS[name], name
    assert set(RETURNS) <= set(coll.program_names())


def test_maps_created_and_filled(coll: Collection) -> None:
    assert set(coll.maps) == {".rodata", ".data", ".bss", "counts", "scratch", "events"}
    assert coll.maps[".data"].lookup(0) == struct.pack("<I", 5)
    assert coll.maps[".bss"].lookup(0) == bytes(24)
    ro = coll.maps[".rodata"].lookup(0)
    assert isinstance(ro, bytes)
    assert struct.unpack_from("<I", ro, 0)[0] == 42
    with pytest.raises(BPFError):  # frozen
        coll.maps[".rodata"].update(0, bytes(24))
    info = coll.maps["counts"].info
    assert (info.key_size, info.value_size, info.max_entries) == (4, 16, 128)


def test_constants_reach_the_program(coll: Collection) -> None:
    assert coll.load_program("sock_answer").test_run(PACKET).retval == 42


def test_per_load_constants_are_private(coll: Collection) -> None:
    a = coll.load_program("sock_answer", constants={"answer": 9})
    b = coll.load_program("sock_answer", constants={"answer": 13})
    shared = coll.load_program("sock_answer")
    assert [p.test_run(PACKET).retval for p in (a, b, shared)] == [9, 13, 42]
    tc = coll.load_program("tc_filter", constants={"tag": b"Z"})
    assert tc.test_run(PACKET).retval == ord("Z")
    # Each private .rodata is its own map; the programs loaded with constants do not use the shared one.
    ids = [set(p.info().map_ids) for p in (a, b, shared)]
    assert ids[0] != ids[1] and ids[2] == {coll.maps[".rodata"].info.id}
    assert not ids[2] & (ids[0] | ids[1])


def test_shared_data_written_by_program(coll: Collection) -> None:
    prog = coll.load_program("sock_calls")
    ret = prog.test_run(PACKET).retval
    skb_len = len(PACKET) - 14  # a socket filter's skb starts after the Ethernet header
    assert ret == (skb_len + 1) * 2 + 5  # middle(len) + data_counter
    bss = coll.maps[".bss"].lookup(0)
    assert isinstance(bss, bytes)
    assert struct.unpack_from("<Q", bss, coll.spec.variables["bss_counter"].offset)[0] == skb_len


def test_kprobe_program_as_kprobe_multi(coll: Collection) -> None:
    prog = coll.load_program("kp_ip_rcv", expected_attach_type=AttachType.TRACE_KPROBE_MULTI)
    assert prog.expected_attach_type == AttachType.TRACE_KPROBE_MULTI


def test_bad_constants(objdir: Path) -> None:
    spec = ObjectSpec.load(objdir / "objects.o")
    with pytest.raises(ConstantError, match="no volatile const"):
        Collection(spec, constants={"nope": 1})
    with pytest.raises(ConstantError, match="no volatile const"):
        Collection(spec, constants={"data_counter": 1})  # .data, not .rodata
    with pytest.raises(ConstantError, match="does not fit"):
        Collection(spec, constants={"answer": 1 << 32})
    with pytest.raises(ConstantError, match="bytes"):
        Collection(spec, constants={"tag": b"123456789"})
    with Collection(spec) as c, pytest.raises(ConstantError):
        c.load_program("sock_answer", constants={"nope": 1})


def test_close_is_idempotent(objdir: Path) -> None:
    c = Collection(ObjectSpec.load(objdir / "objects.o"))
    prog = c.load_program("xdp_pass")
    m = c.maps["events"]
    c.close()
    c.close()
    assert prog.closed and m.closed and c.closed
    with pytest.raises(ValueError):
        c.load_program("xdp_pass")


def test_core_values_seen_by_the_program(objdir: Path) -> None:
    kb = btf.kernel_btf()
    with Collection(ObjectSpec.load(objdir / "core.o")) as c:
        prog = c.load_program("core_values")
        prog.test_run(ctx=bytes(8))
        out = c.maps[".bss"].lookup(0)
        assert isinstance(out, bytes)
        vals = struct.unpack("<16Q", out)
        sk = kb.find_one("sk_buff", btf.Kind.STRUCT)
        assert vals[0] == kb.member_offset(sk, "mark")
        assert vals[1] == 4
        assert vals[2:4] == (0, 1)
        assert vals[4] == kb.size_of(sk)
        assert vals[5] == kb.enum_values("skb_drop_reason")["SKB_DROP_REASON_NO_SOCKET"]
        assert vals[6:8] == (0, 1)
        assert vals[8] == kb.member_offset(sk, "dev")
        assert vals[9] == sk
        assert vals[15] == kb.member_offset(sk, "len")
        # The guarded read of a missing field is poisoned but unreachable: the program loads.
        c.load_program("core_reads")
        assert any(r.poisoned for r in c.core_results("core_reads"))


def test_reachable_poison_is_refused_with_source_line(objdir: Path) -> None:
    with Collection(ObjectSpec.load(objdir / "core.o")) as c, pytest.raises(VerifierError) as e:
        c.load_program("core_missing_used")
    assert "core.bpf.c" in e.value.log
    assert "195896080" in e.value.log_tail(5)


def test_verifier_error_shows_c_line(objdir: Path) -> None:
    with Collection(ObjectSpec.load(objdir / "bad.o")) as c, pytest.raises(VerifierError) as e:
        c.load_program("out_of_bounds")
    assert e.value.errno == errno.EACCES and e.value.program == "out_of_bounds"
    assert "PWRU_BAD_LINE" in e.value.log
    assert "invalid access to map value" in e.value.log


def _pwru_object() -> Path:
    try:
        from pwru.bpf import build as pwru_build
    except ImportError:
        pytest.skip("pwru.bpf.build is not available")
    try:
        (path,) = pwru_build.build()
    except Exception as e:  # a missing compiler or header is not this test's failure
        pytest.skip(f"cannot build pwru.bpf.o: {e}")
    return Path(path)


def test_pwru_object_programs_load() -> None:
    spec = ObjectSpec.load(_pwru_object())
    kb = btf.kernel_btf()
    trace_kfree = kb.find_one("btf_trace_kfree_skb", btf.Kind.TYPEDEF)
    loaded, refused = [], []
    with Collection(spec) as c:
        for name in c.program_names():
            ps = c.program_spec(name)
            kw = {}
            if ps.expected_attach_type == AttachType.TRACE_RAW_TP:
                kw["attach_btf_id"] = trace_kfree
            elif ps.expected_attach_type in (AttachType.TRACE_FENTRY, AttachType.TRACE_FEXIT):
                kw["attach_btf_id"] = kb.find_one("kfree_skb_partial", btf.Kind.FUNC)
            try:
                c.load_program(name, **kw)
                loaded.append(name)
            except BPFError as e:
                fentry = ps.expected_attach_type in (AttachType.TRACE_FENTRY, AttachType.TRACE_FEXIT)
                if fentry and e.errno == errno.EPERM:
                    refused.append(name)  # fentry/fexit: EPERM on this locked-down kernel
                    continue
                raise
    assert loaded, "no program of pwru.bpf.o loaded"
    assert any(c.program_spec(n).prog_type == ProgType.KPROBE for n in loaded)
    assert any(c.program_spec(n).expected_attach_type == AttachType.TRACE_RAW_TP for n in loaded)
    assert len(loaded) + len(refused) == len(spec.programs)


def test_fexit_on_a_loaded_program(coll: Collection) -> None:
    """``attach_prog_fd``: an fexit program whose target is a function of a loaded tc program (its BTF)."""
    from pwru.ebpf import features
    from pwru.ebpf.link import attach_tracing

    allowed = features.fentry("do_unlinkat")
    if not allowed:
        pytest.skip(f"fentry not available here: {allowed.reason}")
    target = coll.load_program("tc_filter")
    assert coll.spec.btf is not None
    func_id = coll.spec.btf.find_one("tc_filter", btf.Kind.FUNC)  # the object's BTF is the target's BTF
    fexit = coll.load_program(
        "fexi", attach_prog_fd=target.fd, attach_btf_id=func_id, expected_attach_type=AttachType.TRACE_FEXIT
    )
    assert fexit.info().type == ProgType.TRACING
    with attach_tracing(fexit):
        assert target.test_run(PACKET).retval == RETURNS["tc_filter"]  # fexit sees the call, changes nothing
