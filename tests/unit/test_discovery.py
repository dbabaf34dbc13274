"""Discovery of skb functions, tracepoints and drop reasons: this machine's BTF and a clang-built object."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pwru import discovery
from pwru.discovery import Target
from pwru.ebpf import btf
from pwru.ebpf.btf import Kind, Spec
from pwru.ebpf.kallsyms import Kallsyms
from tests.unit.test_btf import VMLINUX, bpftool_dump, needs_bpftool, needs_vmlinux, obj, objspec

__all__ = ["obj", "objspec"]


@pytest.fixture(scope="module")
def vmlinux() -> Spec:
    if not VMLINUX.exists():
        pytest.skip("no vmlinux BTF")
    return btf.kernel_btf()


@needs_vmlinux
def test_skb_functions_vmlinux(vmlinux: Spec) -> None:
    funcs = discovery.skb_functions(vmlinux)
    assert len(funcs) >= 1000
    by_name = {t.name: t for t in funcs}
    assert by_name["ip_rcv"] == Target("ip_rcv", None, vmlinux.find_one("ip_rcv", Kind.FUNC), 1, None)
    drop = by_name["sk_skb_reason_drop"]
    assert (drop.skb_pos, drop.reason_pos, drop.kind) == (2, 3, "func")
    if vmlinux.find("kfree_skb_reason", Kind.FUNC):  # inlined away on 6.18; checked on the object below
        assert (by_name["kfree_skb_reason"].skb_pos, by_name["kfree_skb_reason"].reason_pos) == (1, 2)
    assert all(1 <= t.skb_pos <= 5 and t.module is None for t in funcs)
    assert len({t.btf_id for t in funcs}) == len(funcs)
    fewer = discovery.skb_functions(vmlinux, max_pos=1)
    assert {t.name for t in fewer} == {t.name for t in funcs if t.skb_pos == 1}


@needs_vmlinux
def test_skb_tracepoints_vmlinux(vmlinux: Spec) -> None:
    tps = {t.name: t for t in discovery.skb_tracepoints(vmlinux)}
    kfree = tps["kfree_skb"]
    assert (kfree.skb_pos, kfree.location_pos, kfree.reason_pos, kfree.kind) == (1, 2, 3, "tracepoint")
    assert kfree.btf_id == vmlinux.find_one("btf_trace_kfree_skb", Kind.TYPEDEF)
    for name in ("consume_skb", "net_dev_queue", "netif_receive_skb"):
        assert (tps[name].skb_pos, tps[name].reason_pos, tps[name].location_pos) == (1, None, None), name
    assert tps["qdisc_enqueue"].skb_pos == 3
    assert 20 <= len(tps) < 200


@needs_vmlinux
@needs_bpftool
def test_drop_reasons_vmlinux(vmlinux: Spec) -> None:
    reasons = discovery.drop_reasons(vmlinux)
    dump = bpftool_dump(VMLINUX)
    (enum,) = [d for d in dump.values() if d.kind == "ENUM" and d.name == "skb_drop_reason"]
    values = {n: int(a["val"]) for n, a in enum.items}
    for name in ("SKB_DROP_REASON_NO_SOCKET", "SKB_DROP_REASON_NETFILTER_DROP"):
        assert reasons[values[name]] == name
    assert "SKB_DROP_REASON_MAX" not in reasons.values()
    assert 0xFFFF_FFF0 not in reasons


def test_object_targets(objspec: Spec) -> None:
    funcs = {t.name: t for t in discovery.skb_functions(objspec)}
    assert set(funcs) == {"kfree_skb_reason", "sk_skb_reason_drop", "user"}
    assert (funcs["kfree_skb_reason"].skb_pos, funcs["kfree_skb_reason"].reason_pos) == (1, 2)
    # const struct sk_buff * counts too
    assert (funcs["sk_skb_reason_drop"].skb_pos, funcs["sk_skb_reason_drop"].reason_pos) == (2, 3)
    assert discovery.skb_functions(objspec, max_pos=1) == [funcs["kfree_skb_reason"], funcs["user"]]
    (tp,) = discovery.skb_tracepoints(objspec)
    assert (tp.name, tp.skb_pos, tp.location_pos, tp.reason_pos) == ("kfree_skb", 1, 2, 3)


def _enum(name: str, values: dict[str, int]) -> btf.Enum:
    return btf.Enum(name, 4, tuple(btf.EnumValue(n, v) for n, v in values.items()))


def _empty_spec() -> Spec:
    return Spec.from_bytes(struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, 0, 0, 1) + b"\0")


def test_subsystem_drop_reasons() -> None:
    s = _empty_spec()
    s.add(_enum("skb_drop_reason", {"SKB_DROP_REASON_NOT_SPECIFIED": 2, "SKB_DROP_REASON_MAX": 3}))
    s.add(
        _enum(
            "skb_drop_reason_subsys",
            {
                "SKB_DROP_REASON_SUBSYS_CORE": 0,
                "SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE": 1,
                "SKB_DROP_REASON_SUBSYS_OPENVSWITCH": 2,
                "SKB_DROP_REASON_SUBSYS_NUM": 3,
            },
        )
    )
    s.add(_enum("mac80211_drop_reason", {"RX_CONTINUE": 1, "RX_DROP_U_MIC_FAIL": (1 << 16) | 1}))
    s.add(_enum("unrelated", {"BIG_FLAG": 2 << 16}))
    spec = Spec.from_bytes(s.encode())
    # openvswitch lives in a module: split BTF on top of the spec
    mod = Spec.from_bytes(_empty_spec().encode(), base=spec)
    mod.add(_enum("ovs_drop_reason", {"__OVS_DROP_REASON": 2 << 16, "OVS_DROP_LAST_ACTION": (2 << 16) | 1}))
    mod = Spec.from_bytes(mod.encode(), base=spec)
    reasons = discovery.drop_reasons(spec, modules=[("openvswitch", mod)])
    assert reasons == {
        2: "SKB_DROP_REASON_NOT_SPECIFIED",
        (1 << 16) | 1: "RX_DROP_U_MIC_FAIL",
        (2 << 16) | 1: "OVS_DROP_LAST_ACTION",
    }


def test_module_targets_named_with_module(objspec: Spec) -> None:
    mod = Spec.from_bytes(_empty_spec().encode(), base=objspec)
    skb_ptr = objspec.type(objspec.find_one("kfree_skb_reason", Kind.FUNC))
    assert isinstance(skb_ptr, btf.Func)
    proto = mod.add(
        btf.FuncProto(
            0,
            (
                btf.Param("dev", objspec.find_one("int")),
                btf.Param("skb", objspec.func_proto(skb_ptr.type).params[0].type),
            ),
        )
    )
    fid = mod.add(btf.Func("mod_xmit", proto, btf.Linkage.GLOBAL))
    mod = Spec.from_bytes(mod.encode(), base=objspec)
    funcs = discovery.skb_functions(objspec, modules=[("mymod", mod)])
    mine = [t for t in funcs if t.module == "mymod"]
    assert mine == [Target("mod_xmit", "mymod", fid, 2, None)]
    assert len(funcs) == 4


KSYMS = """\
ffffffff81000000 T _stext
ffffffff81000010 T __entry_text_start
ffffffff81000020 T entry_SYSCALL_64
ffffffff81000100 T __entry_text_end
ffffffff81000200 T ip_rcv
ffffffff81000300 t nokprobe_fn
ffffffff81000400 T __noinstr_text_start
ffffffff81000410 t noinstr_fn
ffffffff81000500 T __noinstr_text_end
ffffffff81000600 T _etext
ffffffff81000700 D data_sym
ffffffff82000000 T _sinittext
ffffffff82000010 t init_fn
ffffffff82000100 T _einittext
ffffffffc0000000 t mod_fn\t[mod]
"""


def test_kallsyms_probeable() -> None:
    k = Kallsyms.parse(KSYMS)
    assert discovery.kallsyms_probeable(k) == {"ip_rcv", "nokprobe_fn", "mod_fn"}
    assert discovery.kallsyms_probeable(k, blacklist={"nokprobe_fn"}) == {"ip_rcv", "mod_fn"}
    assert discovery.kallsyms_probeable(k, names=["ip_rcv", "init_fn", "nope"]) == {"ip_rcv"}


@needs_vmlinux
def test_probeable_here(vmlinux: Spec) -> None:
    names = {t.name for t in discovery.skb_functions(vmlinux)}
    ok = discovery.probeable(names)
    assert ok <= names
    assert {"ip_rcv", "sk_skb_reason_drop", "tcp_v4_rcv"} <= ok
    assert len(ok) > 0.9 * len(names)
    assert not discovery.probeable(["surely_not_a_kernel_function_xyz"])
    text = Path("/proc/kallsyms").read_text()
    assert all(f" {n}\n" in text or f" {n}\t" in text for n in list(ok)[:200])


def test_filter_functions_read_once_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """KernelContext reads available_filter_functions once, on a thread when preloaded; probeable takes the
    result; a failure of the read reaches the caller, not only the thread."""
    import threading

    from pwru.kernel import KernelContext

    reads: list[str] = []
    release = threading.Event()

    def read() -> set[str] | None:
        reads.append(threading.current_thread().name)
        release.wait(5)
        return {"ip_rcv", "tcp_v4_rcv"}

    monkeypatch.setattr(discovery, "read_filter_functions", read)
    kernel = KernelContext()
    kernel.preload_filter_functions()
    kernel.preload_filter_functions()
    release.set()
    assert discovery.probeable({"ip_rcv", "nope"}, filter_functions=kernel.filter_functions) == {"ip_rcv"}
    assert kernel.filter_functions() == {"ip_rcv", "tcp_v4_rcv"}
    assert reads == ["ftrace-functions"]

    def broken() -> set[str] | None:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(discovery, "read_filter_functions", broken)
    kernel = KernelContext()
    kernel.preload_filter_functions()
    with pytest.raises(UnicodeDecodeError):
        kernel.filter_functions()
    unloaded = KernelContext()  # never preloaded: read at the first question
    monkeypatch.setattr(discovery, "read_filter_functions", lambda: None)
    assert unloaded.filter_functions() is None
