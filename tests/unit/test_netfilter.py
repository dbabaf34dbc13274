"""Netfilter observation points without a kernel: the point list, names, when they are on, the executor."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest

from pwru import flags, netfilter, netns, probes
from pwru.config import Config, FilterConfig
from pwru.ebpf.errors import BPFError
from pwru.ebpf.features import Feature
from pwru.ebpf.link import NF_INET_FORWARD, NF_INET_LOCAL_OUT, NFPROTO_IPV4, NFPROTO_IPV6
from pwru.ebpf.syscall import AttachType, Cmd, ProgType
from pwru.errors import UserError
from pwru.netns import NetnsRef
from pwru.probes import Attach, AttachContext, Attachment, Plan, Probe

from .test_probes import FakeCollection, FakeKernel, FakeLink

A, B = NetnsRef(4026531840, "/proc/1/ns/net"), NetnsRef(4026532999, "/run/netns/b")


def test_points_are_every_hook_first_and_last_per_family_and_netns() -> None:
    pts = netfilter.points([A, B])
    assert len(pts) == 2 * 2 * 5 * 2
    assert len({(p.netns_inode, p.pf, p.hooknum, p.priority) for p in pts}) == len(pts)
    assert {p.pf for p in pts} == {NFPROTO_IPV4, NFPROTO_IPV6}
    assert {p.priority for p in pts} == {-(2**31) + 1, 2**31 - 2}  # inside NF_IP_PRI_FIRST/LAST, which are refused
    assert [p.name for p in pts[:10]] == [
        "PREROUTING@first", "PREROUTING@last", "INPUT@first", "INPUT@last", "FORWARD@first", "FORWARD@last",
        "OUTPUT@first", "OUTPUT@last", "POSTROUTING@first", "POSTROUTING@last",
    ]  # fmt: skip
    assert [p.name for p in pts[10:20]] == [p.name for p in pts[:10]]  # IPv6: the same names
    assert {(p.netns_inode, p.netns_path) for p in pts} == {(A.inode, A.path), (B.inode, B.path)}


def test_point_names() -> None:
    assert netfilter.point_name(NF_INET_LOCAL_OUT, netfilter.PRIORITIES["first"]) == "OUTPUT@first"
    assert netfilter.point_name(NF_INET_FORWARD, netfilter.PRIORITIES["last"]) == "FORWARD@last"
    assert netfilter.point_name(NF_INET_FORWARD, -150) == "FORWARD@-150"


def test_probes_are_named_nf_and_take_filter_func() -> None:
    pts = netfilter.points([A])
    ps = netfilter.probes_for(pts)
    assert [p.display_name for p in ps[:2]] == ["nf:PREROUTING@first", "nf:PREROUTING@last"]
    assert {(p.kind, p.program, p.attach) for p in ps} == {("nf_hook", "nf_skb", Attach.NETFILTER)}
    assert [p.netfilter for p in ps] == pts
    only = netfilter.probes_for(pts, FilterConfig(func=re.compile(r"nf:OUTPUT@.*")).func_allowed)
    assert [(p.display_name, p.netfilter.pf) for p in only if p.netfilter] == [
        ("nf:OUTPUT@first", NFPROTO_IPV4), ("nf:OUTPUT@last", NFPROTO_IPV4),
        ("nf:OUTPUT@first", NFPROTO_IPV6), ("nf:OUTPUT@last", NFPROTO_IPV6),
    ]  # fmt: skip
    assert netfilter.probes_for(pts, FilterConfig(func=re.compile("ip_rcv")).func_allowed) == []


class Kernel:
    """The feature probe's answer, and whether it was asked."""

    def __init__(self, available: bool) -> None:
        self.result = Feature("netfilter_link", available, "ok" if available else "netfilter_link: too old")
        self.asked = 0

    def feature(self, name: str, probe: Callable[[], Feature]) -> Feature:
        assert name == "netfilter_link"
        self.asked += 1
        return self.result


@pytest.mark.parametrize(
    ("mode", "backend", "available", "expected"),
    [
        ("auto", "tracepoint", True, True),
        ("auto", "tracepoint", False, False),
        ("auto", "kprobe-multi", True, False),
        ("true", "kprobe-multi", True, True),
        ("false", "tracepoint", True, False),
    ],
)
def test_enabled(mode: str, backend: str, available: bool, expected: bool) -> None:
    assert netfilter.enabled(mode, backend, Kernel(available)) is expected  # type: ignore[arg-type]


def test_true_without_netfilter_links_is_one_clear_error() -> None:
    with pytest.raises(UserError) as e:
        netfilter.enabled("true", "tracepoint", Kernel(False))  # type: ignore[arg-type]
    assert str(e.value) == "--filter-trace-netfilter: not available on this kernel: netfilter_link: too old"
    assert e.value.exit_code == 2
    k = Kernel(True)
    assert not netfilter.enabled("false", "tracepoint", k)  # type: ignore[arg-type]
    assert k.asked == 0  # off: the kernel is not even asked


def test_flag_values_and_default() -> None:
    assert flags.parse_config([]).filter.trace_netfilter == "auto"
    assert flags.parse_config(["--filter-trace-netfilter=false"]).filter.trace_netfilter == "false"
    assert flags.parse_config(["--filter-trace-netfilter", "true", "udp"]).filter.pcap == "udp"
    with pytest.raises(UserError, match=r"^--filter-trace-netfilter: invalid value 'yes' \(choose from auto"):
        flags.parse_config(["--filter-trace-netfilter", "yes"])
    names = [f.name for f in flags.FLAGS]
    assert names.index("filter-trace-netfilter") == names.index("filter-mark") + 1


def _config(**filter_fields: Any) -> Config:
    return Config(filter=FilterConfig(**filter_fields))


def test_namespaces_follow_filter_netns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "all_netns", lambda: [A, B])
    monkeypatch.setattr(netns, "find_netns_path", lambda inode: "/proc/42/ns/net" if inode == 7 else None)
    assert netfilter.namespaces(_config()) == [A, B]
    assert netfilter.namespaces(_config(netns=B.inode, netns_path=B.path)) == [B]
    assert netfilter.namespaces(_config(netns=7)) == [NetnsRef(7, "/proc/42/ns/net")]
    assert netfilter.namespaces(_config(netns=8)) == []


def test_run_probes_for_a_netns_nothing_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "find_netns_path", lambda inode: None)
    auto = _config(netns=8)
    assert netfilter.run_probes(auto, "tracepoint", Kernel(True)) == []  # type: ignore[arg-type]
    with pytest.raises(UserError, match="netns inode 8, so it cannot be entered"):
        netfilter.run_probes(
            dataclasses.replace(auto, filter=dataclasses.replace(auto.filter, trace_netfilter="true")),
            "tracepoint",
            Kernel(True),  # type: ignore[arg-type]
        )


# --- the executor ---------------------------------------------------------------------------------------------


class RefusingCollection(FakeCollection):
    """Loads like FakeCollection, except that the load of priority ``refuse`` (its ``cfg_nf_point``) fails."""

    def __init__(self, refuse: int = -1) -> None:
        super().__init__()
        self.refuse = refuse

    def load_program(self, name: str, **load: Any) -> Any:
        if load["constants"]["cfg_nf_point"] == self.refuse:
            raise BPFError(1, Cmd.PROG_LOAD)
        return super().load_program(name, **load)


def _ids(table: bytes) -> list[int]:
    return [int.from_bytes(table[i : i + 4], "little") for i in range(0, len(table), 4)]


def _run_executor(
    monkeypatch: pytest.MonkeyPatch, plan: Plan, coll: FakeCollection, enter: Callable[[str, int], None]
) -> tuple[AttachContext, list[tuple[str, int, list[tuple[int, int, int]]]]]:
    """Run the NETFILTER executor with fake loads, links and namespace entry (``enter`` may refuse); record
    which links were made in which namespace."""
    entered: list[tuple[str, int, list[tuple[int, int, int]]]] = []

    def run_in_netns(path: str, fn: Callable[[], None], inode: int | None = None) -> None:
        assert inode is not None
        enter(path, inode)
        entered.append((path, inode, []))
        fn()

    def attach(prog: Any, pf: int, hooknum: int, priority: int) -> FakeLink:
        entered[-1][2].append((pf, hooknum, priority))
        return FakeLink(prog.name)

    monkeypatch.setattr(probes.netns, "run_in_netns", run_in_netns)
    monkeypatch.setattr(probes.link, "attach_netfilter", attach)
    ids = {id(p): i for i, p in enumerate(plan.probes)}
    ctx = AttachContext(coll, FakeKernel(), plan, Attachment(), lambda n: None, lambda: False, ids)  # type: ignore[arg-type]
    probes.EXECUTORS[Attach.NETFILTER](ctx, [p for p in plan.probes if p.attach is Attach.NETFILTER])
    return ctx, entered


def test_executor_loads_once_per_priority_and_links_inside_each_netns(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan([Probe("tracepoint", "kfree_skb", "tp_skb", Attach.TP_BTF)])
    plan.add(netfilter.probes_for(netfilter.points([A, B])))
    coll = FakeCollection()
    ctx, entered = _run_executor(monkeypatch, plan, coll, lambda path, inode: None)
    # One load per priority (first: remember the skb's hook, last: forget it), serving every hook, family and
    # netns; the kernel reads the hook from its state and names the event by the table's probe id: that of the
    # point's first probe, so IPv4 and IPv6 and every netns share the point's name.
    assert len(coll.loads) == 2
    names = plan.names()
    by_point = {p.load["constants"]["cfg_nf_point"]: p.load["constants"] for p in coll.loads}
    assert set(by_point) == {1, 2}
    for point, role in ((1, "first"), (2, "last")):
        constants = by_point[point]
        ids = _ids(constants["cfg_nf_probe_ids"])
        assert [names[i] for i in ids] == [f"nf:{hook}@{role}" for hook in netfilter.HOOKS]
        assert all(names.index(names[i]) == i for i in ids)
        assert [plan.probes[i].netfilter.hooknum for i in ids] == list(range(5))  # type: ignore[union-attr]
        assert constants["cfg_nf_shown"] == 0b11111 and constants["cfg_emit"] == 1
        assert "cfg_probe_id" not in constants
    assert {(p.load["prog_type"], p.load["expected_attach_type"]) for p in coll.loads} == {
        (ProgType.NETFILTER, AttachType.NETFILTER)
    }
    assert all(p.closed for p in coll.loads)  # the links hold the programs
    assert [(path, inode, len(made)) for path, inode, made in entered] == [(A.path, A.inode, 20), (B.path, B.inode, 20)]
    for (_, _inode, made), group in zip(entered, (plan.probes[1:21], plan.probes[21:]), strict=True):
        assert made == [(p.netfilter.pf, p.netfilter.hooknum, p.netfilter.priority) for p in group if p.netfilter]
    assert ctx.att.attached == plan.probes[1:] and len(ctx.att.links) == 40 and ctx.att.ignored == []


def test_executor_shows_only_the_hooks_filter_func_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = FilterConfig(func=re.compile(r"nf:(INPUT|OUTPUT)@first")).func_allowed
    plan = Plan(netfilter.probes_for(netfilter.points([A, B]), allowed, keep_state=True))
    coll = FakeCollection()
    _run_executor(monkeypatch, plan, coll, lambda path, inode: None)
    by_point = {p.load["constants"]["cfg_nf_point"]: p.load["constants"] for p in coll.loads}
    inout = (1 << netfilter.HOOKS["INPUT"]) | (1 << netfilter.HOOKS["OUTPUT"])
    assert (by_point[1]["cfg_nf_shown"], by_point[1]["cfg_emit"]) == (inout, 1)
    assert (by_point[2]["cfg_nf_shown"], by_point[2]["cfg_emit"]) == (0, 0)  # state only: the verifier drops emit


def test_executor_ignores_what_cannot_load_or_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan(netfilter.probes_for(netfilter.points([A, B])))

    def enter(path: str, inode: int) -> None:
        if path == B.path:
            raise netns.NetnsError(f"{path} no longer names netns inode {inode}")

    coll = RefusingCollection(refuse=2)
    ctx, _ = _run_executor(monkeypatch, plan, coll, enter)
    why = {id(p): r for p, r in ctx.att.ignored}
    # The last points' load failed: they are missing at every hook, in every netns; B's first points are missing
    # because B is gone.
    last = netfilter.PRIORITIES["last"]
    refused = {i for i, p in enumerate(plan.probes) if p.netfilter and p.netfilter.priority == last}
    assert len(refused) == 20  # 5 hooks, IPv4 and IPv6, in A and in B
    assert all(why[id(plan.probes[i])].startswith("load: ") for i in refused)
    gone = f"netns: {B.path} no longer names netns inode {B.inode}"
    assert all(why[id(p)] == gone for i, p in enumerate(plan.probes) if i >= 20 and i not in refused)
    assert len(ctx.att.ignored) == 30
    assert ctx.att.attached == [p for i, p in enumerate(plan.probes[:20]) if i not in refused]
    assert all(p.closed for p in coll.loads)


# --- drop attribution -----------------------------------------------------------------------------------------


def test_points_left_out_keep_the_attribution_state_only() -> None:
    pts = netfilter.points([A])
    ps = netfilter.probes_for(pts, FilterConfig(func=re.compile(r"nf:INPUT@.*")).func_allowed, keep_state=True)
    assert len(ps) == len(pts)  # every point attached: a drop at any hook can be named
    shown = [p for p in ps if p.shows]
    assert {p.display_name for p in shown} == {"nf:INPUT@first", "nf:INPUT@last"}
    assert all("cfg_emit" not in p.constants for p in shown)
    hidden = [p for p in ps if not p.shows]
    assert len(hidden) == len(pts) - 4 and all(p.constants["cfg_emit"] == 0 for p in hidden)
    first = netfilter.PRIORITIES["first"]
    assert {(p.netfilter.priority == first, p.constants["cfg_nf_point"]) for p in ps if p.netfilter} == {
        (True, 1), (False, 2)
    }


@pytest.mark.parametrize(
    ("mode", "backend", "available", "shown", "hidden"),
    [
        ("auto", "tracepoint", True, 20, 0),
        ("auto", "kprobe-multi", True, 0, 20),  # function backends: kept for attribution, not shown
        ("auto", "fentry", False, 0, 0),
        ("true", "kprobe", True, 20, 0),
        ("false", "tracepoint", True, 0, 0),
    ],
)
def test_run_probes_shown_or_kept(
    monkeypatch: pytest.MonkeyPatch, mode: str, backend: str, available: bool, shown: int, hidden: int
) -> None:
    monkeypatch.setattr(netns, "all_netns", lambda: [A])
    ps = netfilter.run_probes(_config(trace_netfilter=mode), backend, Kernel(available))  # type: ignore[arg-type]
    assert (sum(p.shows for p in ps), sum(not p.shows for p in ps)) == (shown, hidden)


def test_run_probes_without_events_keep_state_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "all_netns", lambda: [A])
    ps = netfilter.run_probes(_config(), "tracepoint", Kernel(True), show=False)  # type: ignore[arg-type]
    assert len(ps) == 20 and not any(p.shows for p in ps)


def test_attribution_constants() -> None:
    nf = netfilter.probes_for(netfilter.points([A]))
    tp = [Probe("tracepoint", "kfree_skb", "tp_skb", Attach.TP_BTF)]
    reasons = {2: "SKB_DROP_REASON_NOT_SPECIFIED", 9: "SKB_DROP_REASON_NETFILTER_DROP"}
    assert netfilter.constants(tp + nf, reasons) == {"cfg_nf_attrib": 1, "cfg_nf_drop_reason": 9}
    assert netfilter.constants(tp, reasons) == {"cfg_nf_attrib": 0, "cfg_nf_drop_reason": 9}
    assert netfilter.constants(tp + nf, {})["cfg_nf_drop_reason"] == 0  # a kernel without the reason


def test_hook_names_agree_with_the_output_names() -> None:
    from pwru.output import fields

    assert {num: fields.nf_hook_name(num) for num in netfilter.HOOKS.values()} == netfilter.HOOK_NAMES
    assert [fields.nf_family_name(pf) for pf in netfilter.FAMILIES] == ["ipv4", "ipv6"]
    assert fields.nf_text(NFPROTO_IPV6, NF_INET_FORWARD) == "ipv6/FORWARD"
    assert fields.nf_text(0, -1) == "" and fields.nf_text(0, 1) == ""
