"""The probe model without a kernel: program variants, naming, plans, executors, the parallel attach loop.

Also "how to add a probe": a feature declares :class:`Probe` objects and adds them to the plan; attaching them
is the executors' job (``test_a_feature_adds_probes_by_declaration``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pwru import backends, probes
from pwru.discovery import Target
from pwru.ebpf.errors import BPFError
from pwru.ebpf.syscall import Cmd
from pwru.probes import Attach, AttachContext, Attachment, Plan, Probe, execute

NAMES = {"kprobe_skb_1", "kprobe_skb_2", "kprobe_skb_1_reason_2", "kprobe_skb_2_reason_3"}


def target(name: str, skb: int = 1, reason: int | None = None, module: str | None = None) -> Target:
    return Target(name, module, 1, skb, reason)


def test_variant_for_reason_positions_falls_back_to_skb_only() -> None:
    v = backends.program_variant
    assert v("kprobe", target("sk_skb_reason_drop", 2, 3), NAMES) == "kprobe_skb_2_reason_3"
    assert v("kprobe", target("icmpv6_param_prob_reason", 1, 4), NAMES) == "kprobe_skb_1"
    assert v("kprobe", target("ip_rcv"), NAMES) == "kprobe_skb_1"


def test_display_names() -> None:
    assert backends.display_name(target("veth_xmit", module="veth")) == "veth_xmit[veth]"
    tp = Target("kfree_skb", None, 1, 1, 3, 2, "tracepoint")
    assert backends.display_name(tp) == "tp:kfree_skb"
    assert Probe("tracepoint", "kfree_skb", "tp_skb", Attach.TP_BTF).display_name == "tp:kfree_skb"
    assert Probe("func", "veth_xmit", "p", Attach.KPROBE, module="veth").display_name == "veth_xmit[veth]"


def test_skb_probes_of_each_backend() -> None:
    tp = Target("kfree_skb", None, 42, 1, 3, 2, "tracepoint")
    (p,) = backends.skb_probes("tracepoint", [tp], set(), None)  # type: ignore[arg-type]
    assert (p.kind, p.program, p.attach, p.btf_id) == ("tracepoint", "tp_skb", Attach.TP_BTF, 42)
    assert p.constants == {"cfg_tp_skb_pos": 1, "cfg_tp_reason_pos": 3, "cfg_tp_location_pos": 2}
    (k,) = backends.skb_probes("kprobe-multi", [target("sk_skb_reason_drop", 2, 3)], NAMES, None)  # type: ignore[arg-type]
    assert (k.program, k.attach, k.skb_pos, k.reason_pos) == ("kprobe_skb_2_reason_3", Attach.KPROBE_MULTI, 2, 3)


class FakeLink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeProgram:
    def __init__(self, name: str, load: dict[str, Any]) -> None:
        self.name = name
        self.load = load
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeCollection:
    def __init__(self) -> None:
        self.loads: list[FakeProgram] = []
        self.lock = threading.Lock()

    def load_program(self, name: str, **load: Any) -> FakeProgram:
        prog = FakeProgram(name, load)
        with self.lock:
            self.loads.append(prog)
        return prog


class FakeKernel:
    def module_btf_fd(self, module: str | None) -> int | None:
        if module == "gone":
            raise LookupError("no kernel BTF object named 'gone'")
        return None if module is None else 77


def _ctx(plan: Plan, stop: Any = lambda: False) -> tuple[AttachContext, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    done = [0]

    def report(n: int) -> None:
        done[0] += n
        seen.append((done[0], len(plan)))

    ids = {id(p): i for i, p in enumerate(plan.probes)}
    ctx = AttachContext(FakeCollection(), FakeKernel(), plan, Attachment(), report, stop, ids)  # type: ignore[arg-type]
    return ctx, seen


def test_each_collects_links_ignored_and_progress() -> None:
    plan = Plan([Probe("func", f"f{i}", "p", Attach.KPROBE) for i in range(40)])
    ctx, seen = _ctx(plan)

    def one(p: Probe) -> tuple[FakeLink | None, str]:
        return (None, "busy") if p.name.endswith("3") else (FakeLink(p.name), "")

    probes._each(ctx, plan.probes, one)  # type: ignore[arg-type]
    assert [p.name for p, _ in ctx.att.ignored] == ["f3", "f13", "f23", "f33"]
    assert len(ctx.att.links) == len(ctx.att.attached) == 36
    assert seen[-1] == (40, 40)
    ctx.att.close()
    assert ctx.att.links == []


def test_each_stops_early_and_keeps_what_it_made() -> None:
    made: list[FakeLink] = []
    lock = threading.Lock()
    plan = Plan([Probe("func", f"f{i}", "p", Attach.KPROBE) for i in range(200)])
    ctx, _ = _ctx(plan, stop=lambda: len(made) >= 20)

    def one(p: Probe) -> tuple[FakeLink | None, str]:
        lk = FakeLink(p.name)
        with lock:
            made.append(lk)
        return lk, ""

    probes._each(ctx, plan.probes, one)  # type: ignore[arg-type]
    assert 20 <= len(ctx.att.links) < 200
    assert ctx.att.ignored == []
    assert {id(lk) for lk in made} == {id(lk) for lk in ctx.att.links}  # nothing made is lost
    ctx.att.close()
    assert all(lk.closed for lk in made)


def test_tracing_loads_once_per_probe_with_its_probe_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """tp_btf probes are loaded one by one, each told its index in the plan (how records name them)."""
    monkeypatch.setattr(probes.link, "attach_tracing", lambda prog: FakeLink(prog.name))
    plan = Plan([Probe("func", "ip_rcv", "kprobe_skb_1", Attach.KPROBE)])  # index 0, attached elsewhere
    tps = [Probe("tracepoint", n, "tp_skb", Attach.TP_BTF, btf_id=i, module="m" if i else None,
                 constants={"cfg_tp_skb_pos": 1}) for i, n in enumerate(["a", "b"])]  # fmt: skip
    plan.add(tps)
    ctx, _ = _ctx(plan)
    probes.EXECUTORS[Attach.TP_BTF](ctx, tps)
    coll = ctx.coll
    assert isinstance(coll, FakeCollection)
    loads = sorted(coll.loads, key=lambda p: p.load["attach_btf_id"])
    assert [p.load["constants"] for p in loads] == [{"cfg_tp_skb_pos": 1, "cfg_probe_id": 1},
                                                    {"cfg_tp_skb_pos": 1, "cfg_probe_id": 2}]  # fmt: skip
    assert [p.load["attach_btf_obj_fd"] for p in loads] == [None, 77]
    assert all(p.closed for p in loads)  # the link holds the program
    assert [p.name for p in ctx.att.attached] == ["a", "b"]
    assert plan.names() == ["ip_rcv", "tp:a", "tp:b[m]"]


def test_tracing_ignores_a_probe_whose_module_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes.link, "attach_tracing", lambda prog: FakeLink(prog.name))
    plan = Plan([Probe("func", "veth_xmit", "fentry_skb_1", Attach.FENTRY, module="gone", btf_id=5),
                 Probe("func", "ip_rcv", "fentry_skb_1", Attach.FENTRY, btf_id=6)])  # fmt: skip
    ctx, _ = _ctx(plan)
    probes.EXECUTORS[Attach.FENTRY](ctx, plan.probes)
    assert [(p.name, why) for p, why in ctx.att.ignored] == [
        ("veth_xmit", "module BTF: no kernel BTF object named 'gone'")]  # fmt: skip
    assert [p.name for p in ctx.att.attached] == ["ip_rcv"]


def test_a_feature_adds_probes_by_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """How to add a probe: declare it (target, program, how) and add it to the plan. ``execute`` groups the plan
    by attach method; a new method is one entry in EXECUTORS."""
    calls: list[tuple[Attach, list[str]]] = []

    def fake(method: Attach) -> probes.Executor:
        def run(ctx: AttachContext, group: list[Probe]) -> None:
            calls.append((method, [p.name for p in group]))
            for p in group:
                ctx.att.links.append(FakeLink(p.name))  # type: ignore[arg-type]
                ctx.att.attached.append(p)
                ctx.report(1)

        return run

    monkeypatch.setattr(probes, "EXECUTORS", {m: fake(m) for m in Attach})
    plan = Plan()
    plan.add([Probe("func", "ip_rcv", "kprobe_skb_1", Attach.KPROBE_MULTI)])
    # a feature's own probes, e.g. fexit on a loaded tc program:
    plan.add([Probe("bpf_prog", "cil_from_container", "fexit_tc", Attach.FEXIT, attach_prog_fd=9, btf_id=3)])
    progress: list[tuple[int, int]] = []
    att = execute(plan, FakeCollection(), FakeKernel(), lambda d, n: progress.append((d, n)), lambda: False)  # type: ignore[arg-type]
    assert calls == [(Attach.KPROBE_MULTI, ["ip_rcv"]), (Attach.FEXIT, ["cil_from_container"])]
    assert [p.name for p in att.attached] == ["ip_rcv", "cil_from_container"]
    assert progress[-1] == (2, 2)
    att.close()


def test_execute_releases_everything_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeLink] = []

    def first(ctx: AttachContext, group: list[Probe]) -> None:
        made.append(FakeLink("x"))
        ctx.att.links.append(made[-1])  # type: ignore[arg-type]

    def second(ctx: AttachContext, group: list[Probe]) -> None:
        raise OSError(1, "boom")

    monkeypatch.setattr(probes, "EXECUTORS", {Attach.KPROBE: first, Attach.TP_BTF: second})
    plan = Plan([Probe("func", "a", "p", Attach.KPROBE), Probe("tracepoint", "b", "tp_skb", Attach.TP_BTF)])
    with pytest.raises(OSError):
        execute(plan, FakeCollection(), FakeKernel(), lambda d, n: None, lambda: False)  # type: ignore[arg-type]
    assert made[0].closed


@pytest.mark.parametrize(("batch", "threads"), [(25, 2), (50, 1), (1000, 1), (1, probes.ATTACH_WORKERS)])
def test_kprobe_batch_is_what_one_worker_attaches_in_a_row(
    monkeypatch: pytest.MonkeyPatch, batch: int, threads: int
) -> None:
    """--filter-kprobe-batch (pwru's meaning): the perf kprobes are split in batches of that many, each batch
    attached in order by one worker; a batch as large as the plan attaches them all from one thread."""
    by_thread: dict[int, list[str]] = {}
    lock = threading.Lock()

    def attach(prog: Any, name: str, retprobe: bool = False) -> FakeLink:
        with lock:
            by_thread.setdefault(threading.get_ident(), []).append(name)
        time.sleep(0.001)  # long enough that one worker cannot take every batch before another starts
        return FakeLink(name)

    monkeypatch.setattr(probes.link, "attach_kprobe", attach)
    plan = Plan([Probe("func", f"f{i:03}", "kprobe_skb_1", Attach.KPROBE) for i in range(50)])
    ctx, seen = _ctx(plan)
    ctx.kprobe_batch = batch
    probes.EXECUTORS[Attach.KPROBE](ctx, plan.probes)
    assert [p.name for p in ctx.att.attached] == [p.name for p in plan.probes]
    assert seen[-1] == (50, 50)
    assert len(by_thread) <= threads
    for names in by_thread.values():  # each worker's probes: whole batches, each in plan order
        runs = [names[i : i + batch] for i in range(0, len(names), batch)]
        for run in runs:
            start = int(run[0][1:])
            assert start % batch == 0 and run == [f"f{start + k:03}" for k in range(len(run))]
    if threads > 1:
        assert len(by_thread) > 1
    ctx.att.close()


def test_kprobe_programs_load_once_each_on_threads_and_a_failure_keeps_the_rest() -> None:
    names = ["kprobe_skb_3", "kprobe_skb_1", "kprobe_bad_b", "kprobe_skb_2", "kprobe_bad_a"]
    plan = Plan([Probe("func", f"f{i}", names[i % len(names)], Attach.KPROBE) for i in range(20)])
    ctx, _ = _ctx(plan)
    threads: set[str] = set()
    started = threading.Barrier(2, timeout=5)  # two loads in flight at once, or the barrier breaks

    class Loads(FakeCollection):
        def load_program(self, name: str, **load: Any) -> FakeProgram:
            threads.add(threading.current_thread().name)
            if name in ("kprobe_skb_1", "kprobe_skb_2"):
                started.wait()
            if "bad" in name:
                raise BPFError(13, Cmd.PROG_LOAD)
            return super().load_program(name, **load)

    ctx.coll = Loads()  # type: ignore[assignment]
    with pytest.raises(BPFError) as e:
        probes._load_once_per_program(ctx, plan.probes, None)
    assert e.value.errno == 13
    assert sorted(p.name for p in ctx.coll.loads) == ["kprobe_skb_1", "kprobe_skb_2", "kprobe_skb_3"]  # type: ignore[attr-defined]
    assert [p.name for p in ctx.att.programs] == ["kprobe_skb_1", "kprobe_skb_2", "kprobe_skb_3"]  # released at exit
    assert threading.current_thread().name not in threads
    programs = probes._load_once_per_program(_ctx(Plan(plan.probes[:2]))[0], plan.probes[:2], None)
    assert sorted(programs) == ["kprobe_skb_1", "kprobe_skb_3"]
