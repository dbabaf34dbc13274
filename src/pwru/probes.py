"""The probe model: what is attached where, and how, declared as data; one attach loop executes a plan.

A :class:`Probe` says *what* is attached (a kernel function, a tracepoint, a BPF program, a BPF helper, a
netfilter hook), *which* program of pwru's object runs there, where the skb sits when there is one, and *how*
it is attached (:class:`Attach`: kprobe-multi, kprobe, fentry, fexit, tp_btf, netfilter). Features contribute probes to
one :class:`Plan`; :func:`execute` groups the plan by attach method and hands each group to its executor
(:data:`EXECUTORS`). Adding a feature's probes is a declaration; adding a new way to attach is one executor.

Each probe gets an index in the plan: records whose header names a probe by index (tracepoints, and any
program told its probe id at load time) are named through :meth:`Plan.names`.
"""

from __future__ import annotations

import enum
import errno
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pwru import netns
from pwru.ebpf import link
from pwru.ebpf.collection import Collection
from pwru.ebpf.errors import BPFError
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, ProgType
from pwru.kernel import KernelContext

if TYPE_CHECKING:
    from pwru.netfilter import Point
    from pwru.tc_chain import TcPoint

#: Threads attaching kprobes or tracing programs: the kernel serialises much of the work, but each attach also
#: waits (text patching, trampoline updates) and spends time in Python around its syscalls.
ATTACH_WORKERS = 8
#: --filter-kprobe-batch's default: perf kprobes one attach worker takes in a row (pwru's default).
KPROBE_BATCH = 10
#: Threads closing links at exit (they sleep in the kernel waiting for RCU grace periods, not on a CPU).
DETACH_WORKERS = 64

Progress = Callable[[int, int], None]
StopCheck = Callable[[], bool]
#: What a probe is attached to.
TargetKind = Literal["func", "tracepoint", "bpf_prog", "helper", "map_op", "nf_hook", "tc_hook"]


class Attach(enum.Enum):
    """How a probe's program is attached."""

    KPROBE_MULTI = "kprobe-multi"  # one link for many functions, by symbol name
    KPROBE = "kprobe"  # a perf kprobe per function
    KRETPROBE = "kretprobe"  # a perf kprobe on the function's return
    FENTRY = "fentry"  # a tracing program loaded per target (BTF id), linked
    FEXIT = "fexit"
    TP_BTF = "tp_btf"  # a BTF-typed raw tracepoint program loaded per tracepoint
    NETFILTER = "netfilter"  # a netfilter program loaded per priority (every hook), linked from inside each netns
    TCX = "tcx"  # a tc program loaded per point name, a tcx link per device, made from inside its netns


@dataclass(frozen=True)
class Probe:
    """One attachment point of the plan.

    ``btf_id`` is the target's BTF id (a FUNC, or a ``btf_trace_<name>`` TYPEDEF) in vmlinux or, with
    ``module``, in that module's split BTF; ``attach_prog_fd`` names a loaded BPF program as the target
    (fentry/fexit on tc or XDP programs). Positions are 1-based argument numbers. ``constants`` are per-load
    ``volatile const`` overrides (only for methods that load once per probe). ``shows`` is False for probes that
    only keep kernel state (skb tracking) and never produce an event. ``netfilter`` is the hook point (family,
    hook, priority, netns) of an ``nf_hook`` probe, ``tcx`` the device, direction and place of a ``tc_hook`` one.
    """

    kind: TargetKind
    name: str
    program: str
    attach: Attach
    module: str | None = None
    btf_id: int | None = None
    skb_pos: int | None = None
    reason_pos: int | None = None
    location_pos: int | None = None
    attach_prog_fd: int | None = None
    constants: Mapping[str, int] = field(default_factory=dict)
    netfilter: Point | None = None
    tcx: TcPoint | None = None
    shows: bool = True

    @property
    def display_name(self) -> str:
        """How users see it: ``ip_rcv``, ``veth_xmit[veth]``, ``tp:kfree_skb``, ``nf:OUTPUT@first``."""
        base = {"tracepoint": "tp:", "nf_hook": "nf:", "tc_hook": "tcx:"}.get(self.kind, "") + self.name
        return f"{base}[{self.module}]" if self.module else base


@dataclass
class Plan:
    """Every probe of a run, in order; a probe's index is its probe id."""

    probes: list[Probe] = field(default_factory=list)

    def add(self, probes: Sequence[Probe]) -> None:
        self.probes.extend(probes)

    def names(self) -> list[str]:
        """Display names by probe id."""
        return [p.display_name for p in self.probes]

    def live_names(self) -> Sequence[str]:
        """Display names by probe id, as a view that sees probes added later (programs attached while running)."""
        return _LiveNames(self.probes)

    def __len__(self) -> int:
        return len(self.probes)


class _LiveNames(Sequence[str]):
    def __init__(self, probes: list[Probe]) -> None:
        self._probes = probes

    def __len__(self) -> int:
        return len(self._probes)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._probes[i].display_name


@dataclass
class Attachment:
    """What executing a plan left in the kernel, to be released at exit."""

    links: list[link.Link] = field(default_factory=list)
    programs: list[Program] = field(default_factory=list)
    attached: list[Probe] = field(default_factory=list)
    ignored: list[tuple[Probe, str]] = field(default_factory=list)

    def close(self, workers: int = DETACH_WORKERS) -> None:
        """Detach every link. Many at once: tearing down a kprobe or a trampoline waits for an RCU grace
        period, and the kernel lets concurrent waiters share one, so 64 closers finish about 64 times sooner than
        one (pwru's one-by-one detach of 1,500 kprobes takes a minute)."""
        links, self.links = self.links, []
        if workers > 1 and len(links) > 16:
            with ThreadPoolExecutor(min(workers, len(links))) as pool:
                list(pool.map(lambda lk: lk.close(), links))
        else:
            for lk in links:
                lk.close()
        programs, self.programs = self.programs, []
        for p in programs:
            p.close()


@dataclass
class AttachContext:
    """What an executor works with: the loaded object, the kernel, the plan (for probe ids), progress."""

    coll: Collection
    kernel: KernelContext
    plan: Plan
    att: Attachment
    report: Callable[[int], None]  # `n` more probes done (attached or ignored)
    stop: StopCheck
    probe_ids: dict[int, int] = field(default_factory=dict)  # id(probe) -> index in the plan
    kprobe_batch: int = KPROBE_BATCH  # --filter-kprobe-batch: kprobes one worker attaches in a row

    def probe_id(self, probe: Probe) -> int:
        return self.probe_ids[id(probe)]


Executor = Callable[[AttachContext, list[Probe]], None]


def execute(
    plan: Plan,
    coll: Collection,
    kernel: KernelContext,
    progress: Progress,
    stop: StopCheck,
    kprobe_batch: int = KPROBE_BATCH,
) -> Attachment:
    """Attach every probe of ``plan``, method by method. A probe that cannot be attached is ignored with its
    reason; after a stop request the remaining probes are passed over. On an exception everything made so far
    is released. ``kprobe_batch`` is --filter-kprobe-batch: how many perf kprobes one worker attaches in a row
    (the other methods do not use it, as in pwru)."""
    att = Attachment()
    done = 0
    total = len(plan)

    def report(n: int) -> None:
        nonlocal done
        done += n
        if n and (done % 16 == 0 or done == total or n > 1):
            progress(done, total)

    ids = {id(p): i for i, p in enumerate(plan.probes)}
    ctx = AttachContext(coll, kernel, plan, att, report, stop, ids, max(1, kprobe_batch))
    groups: dict[Attach, list[Probe]] = defaultdict(list)
    for p in plan.probes:
        groups[p.attach].append(p)
    try:
        for method, probes in groups.items():
            if not stop():
                EXECUTORS[method](ctx, probes)
    except BaseException:
        att.close()
        raise
    return att


# --- executors ------------------------------------------------------------------------------------------------


def _each(
    ctx: AttachContext,
    probes: list[Probe],
    one: Callable[[Probe], tuple[link.Link | None, str]],
    batch: int = 1,
) -> None:
    """Attach probe by probe on :data:`ATTACH_WORKERS` threads (at most one per ``batch`` probes: a worker takes
    ``batch`` probes in a row, pwru's --filter-kprobe-batch); after a stop request the remaining probes are
    passed over (every link made so far is kept in the attachment, so it is released)."""

    def guarded(chunk: list[Probe]) -> list[tuple[link.Link | None, str]]:
        return [(None, "") if ctx.stop() else one(p) for p in chunk]

    chunks = [probes[i : i + batch] for i in range(0, len(probes), batch)]
    if not chunks:
        return
    with ThreadPoolExecutor(min(ATTACH_WORKERS, len(chunks))) as pool:
        for chunk, results in zip(chunks, pool.map(guarded, chunks), strict=True):
            for p, (lk, why) in zip(chunk, results, strict=True):
                if lk is not None:
                    ctx.att.links.append(lk)
                    ctx.att.attached.append(p)
                elif why:
                    ctx.att.ignored.append((p, why))
                ctx.report(1)


def _load_once_per_program(
    ctx: AttachContext, probes: list[Probe], attach_type: AttachType | None
) -> dict[str, Program]:
    """kprobe-type programs serve many targets: each program the probes name is loaded once, the programs on
    threads (the verifier of one runs while another is relocated: a second under emulation for kprobe-multi's
    seven). The first failure, in name order, is raised once every load has ended; what loaded is kept in the
    attachment, so it is released."""
    names = sorted({p.program for p in probes})

    def load(name: str) -> Program:
        return ctx.coll.load_program(name, prog_type=ProgType.KPROBE, expected_attach_type=attach_type)

    with ThreadPoolExecutor(min(ATTACH_WORKERS, max(1, len(names)))) as pool:
        futures = [pool.submit(load, name) for name in names]
    programs: dict[str, Program] = {}
    failure: BaseException | None = None
    for name, future in zip(names, futures, strict=True):
        error = future.exception()
        if error is not None:
            failure = failure or error
            continue
        programs[name] = future.result()
        ctx.att.programs.append(programs[name])
    if failure is not None:
        raise failure
    return programs


def _constants(ctx: AttachContext, p: Probe) -> dict[str, int]:
    """A per-probe load's constants: the probe's own, with its probe id unless it sets one."""
    constants = dict(p.constants)
    if "cfg_probe_id" not in constants:
        constants["cfg_probe_id"] = ctx.probe_id(p)
    return constants


def _tracing(attach_type: AttachType) -> Executor:
    """fentry, fexit, tp_btf: one load per probe (its target is fixed at load time), then a tracing link."""

    def run(ctx: AttachContext, probes: list[Probe]) -> None:
        def one(p: Probe) -> tuple[link.Link | None, str]:
            constants = _constants(ctx, p)
            try:
                module_btf = ctx.kernel.module_btf_fd(p.module)
            except LookupError as e:  # the module went away since discovery
                return None, f"module BTF: {e}"
            try:
                prog = ctx.coll.load_program(
                    p.program,
                    attach_btf_id=p.btf_id,
                    attach_btf_obj_fd=module_btf,
                    attach_prog_fd=p.attach_prog_fd,
                    expected_attach_type=attach_type,
                    constants=constants,
                )
            except BPFError as e:
                return None, f"load: {e.strerror}"
            try:
                return link.attach_tracing(prog), ""
            except OSError as e:
                return None, f"attach: {e.strerror}"
            finally:
                prog.close()  # the link holds the program

        _each(ctx, probes, one)

    return run


def _kprobe(retprobe: bool) -> Executor:
    """A perf kprobe (or kretprobe) per probe, ``ctx.kprobe_batch`` in a row per worker; each program loaded
    once."""

    def run(ctx: AttachContext, probes: list[Probe]) -> None:
        programs = _load_once_per_program(ctx, probes, None)

        def one(p: Probe) -> tuple[link.Link | None, str]:
            try:
                return link.attach_kprobe(programs[p.program], p.name, retprobe=retprobe), ""
            except OSError as e:
                return None, e.strerror or str(e)

        _each(ctx, probes, one, ctx.kprobe_batch)

    return run


#: errnos with which the kernel refuses a kprobe-multi batch because of one of its functions.
_BATCH_REFUSALS = (errno.ENOMEM, errno.E2BIG, errno.EINVAL, errno.ENOENT, errno.ESRCH, errno.EBUSY)


def _kprobe_multi(ctx: AttachContext, probes: list[Probe]) -> None:
    """One link per program, by address from kallsyms (read since the run started): given names, the kernel
    looks each up in its symbol table, which took 2.6-4.7 s for ~1,600 functions in the emulated lab where
    addresses take a fraction of a second (an ``sym+0`` address is mapped to its ftrace site, 6.0+). A probe
    whose function kallsyms does not list (or that hides addresses) goes by name. A batch the kernel refuses is
    split in halves until the function it cannot take is found and ignored."""
    programs = _load_once_per_program(ctx, probes, AttachType.TRACE_KPROBE_MULTI)
    found = ctx.kernel.kallsyms.addresses((p.name, p.module) for p in probes)
    address = {id(p): found.get((p.name, p.module), 0) for p in probes}
    groups: dict[tuple[str, bool], list[Probe]] = defaultdict(list)
    for p in probes:
        groups[p.program, bool(address[id(p)])].append(p)

    def attach_batch(prog: Program, batch: list[Probe]) -> None:
        if ctx.stop():
            return
        try:
            if address[id(batch[0])]:
                lk = link.attach_kprobe_multi(prog, addrs=[address[id(p)] for p in batch])
            else:
                lk = link.attach_kprobe_multi(prog, syms=[p.name for p in batch])
        except OSError as e:
            if len(batch) == 1:
                ctx.att.ignored.append((batch[0], e.strerror or str(e)))
                ctx.report(1)
                return
            if e.errno not in _BATCH_REFUSALS:
                raise
            half = len(batch) // 2
            attach_batch(prog, batch[:half])
            attach_batch(prog, batch[half:])
            return
        ctx.att.links.append(lk)
        ctx.att.attached.extend(batch)
        ctx.report(len(batch))

    for (name, _by_address), batch in groups.items():
        attach_batch(programs[name], sorted(batch, key=lambda p: (address[id(p)], p.name)))


#: Which probes of an in-netns method share one program load (the key), and that load's constants given the
#: probes sharing it, in plan order.
LoadKey = Callable[[Probe], Hashable]
LoadConstants = Callable[[AttachContext, list[Probe]], dict[str, int | bytes]]


def _in_netns(
    prog_type: ProgType,
    expected: AttachType | None,
    where: Callable[[Probe], tuple[int, str]],
    make_link: Callable[[Probe, Program], tuple[link.Link | None, str]],
    load_key: LoadKey,
    load_constants: LoadConstants,
) -> Executor:
    """Hooks whose links are made from inside a netns (netfilter: the link hooks the creating thread's netns;
    tcx: the device index is the creating thread's netns's). One program load per ``load_key`` (a tcx point
    name, ``tcx:eth0@first`` in every netns being one program: its events name the point, their netns column
    says where; a netfilter priority, one program for every hook and netns; each load being tens of
    milliseconds, hundreds under emulation), in parallel; then each namespace's links made from one thread
    inside it. A namespace that cannot be entered any more (its last process exited, its pid was reused) has its
    probes ignored with the reason."""

    def run(ctx: AttachContext, probes: list[Probe]) -> None:
        shared: dict[Hashable, list[Probe]] = defaultdict(list)
        for p in probes:
            shared[load_key(p)].append(p)

        def load(group: list[Probe]) -> tuple[Program | None, str]:
            if ctx.stop():
                return None, ""
            try:
                prog = ctx.coll.load_program(
                    group[0].program,
                    prog_type=prog_type,
                    expected_attach_type=expected,
                    constants=load_constants(ctx, group),
                )
            except BPFError as e:
                return None, f"load: {e.strerror}"
            return prog, ""

        with ThreadPoolExecutor(min(ATTACH_WORKERS, max(1, len(shared)))) as pool:
            loaded = dict(zip(shared, pool.map(load, shared.values()), strict=True))
        try:
            groups: dict[tuple[int, str], list[tuple[Probe, Program]]] = defaultdict(list)
            for p in probes:
                prog, why = loaded[load_key(p)]
                if prog is not None:
                    groups[where(p)].append((p, prog))
                    continue
                if why:
                    ctx.att.ignored.append((p, why))
                ctx.report(1)
            for (inode, path), group in groups.items():
                if not ctx.stop():
                    _links_in_netns(ctx, inode, path, group, make_link)
        finally:
            for prog, _ in loaded.values():
                if prog is not None:
                    prog.close()  # the links hold the programs

    return run


def _nf_where(p: Probe) -> tuple[int, str]:
    assert p.netfilter is not None, p
    return p.netfilter.netns_inode, p.netfilter.netns_path


def _nf_load_key(p: Probe) -> Hashable:
    """Netfilter points share a load when only their hook (read in the kernel) and whether they show differ."""
    return p.program, tuple(sorted((k, v) for k, v in p.constants.items() if k != "cfg_emit"))


def _nf_load_constants(ctx: AttachContext, group: list[Probe]) -> dict[str, int | bytes]:
    """One load for a priority's points at every hook: each hook's probe id (``cfg_nf_probe_ids``, that of the
    hook's first probe in the plan, so every family and netns share the point's name) and whether it shows
    (``cfg_nf_shown``, a bit per hook; ``cfg_emit`` 0 when none does)."""
    ids: dict[int, int] = {}
    shown = 0
    for p in group:
        assert p.netfilter is not None, p
        hook = p.netfilter.hooknum
        if hook not in ids:
            ids[hook] = ctx.probe_id(p)
            if p.constants.get("cfg_emit", 1):
                shown |= 1 << hook
    table = b"".join(ids.get(h, 0).to_bytes(4, "little") for h in range(max(ids) + 1))
    constants: dict[str, int | bytes] = {k: v for k, v in group[0].constants.items() if k != "cfg_emit"}
    return {**constants, "cfg_nf_probe_ids": table, "cfg_nf_shown": shown, "cfg_emit": int(shown != 0)}


def _tcx_load_key(p: Probe) -> Hashable:
    return p.program, p.display_name


def _tcx_load_constants(ctx: AttachContext, group: list[Probe]) -> dict[str, int | bytes]:
    return dict(_constants(ctx, group[0]))


def _nf_link(p: Probe, prog: Program) -> tuple[link.Link | None, str]:
    nf = p.netfilter
    assert nf is not None
    return _netfilter_link(prog, nf.pf, nf.hooknum, nf.priority)


def _tcx_where(p: Probe) -> tuple[int, str]:
    assert p.tcx is not None, p
    return p.tcx.netns_inode, p.tcx.netns_path


def _tcx_link(p: Probe, prog: Program) -> tuple[link.Link | None, str]:
    """A tcx link before (``first``) or after (``last``) every program on the device's hook."""
    t = p.tcx
    assert t is not None
    try:
        flags = link.BPF_F_BEFORE if t.first else link.BPF_F_AFTER
        return link.attach_tcx(prog, t.ifindex, ingress=t.ingress, flags=flags), ""
    except OSError as e:
        return None, f"attach {t.ifname}: {e.strerror}"


#: How far a netfilter point moves inward from its priority when the kernel says it is taken (EBUSY: one BPF
#: hook per priority, so a second pwru, or another tool, holds it).
NF_PRIORITY_STEPS = 16


def _netfilter_link(prog: Program, pf: int, hooknum: int, priority: int) -> tuple[link.Link | None, str]:
    """A netfilter link at ``priority``, or the nearest free one towards the middle (still before, or after,
    every hook the kernel and the rule sets place)."""
    inward = 1 if priority < 0 else -1
    for step in range(NF_PRIORITY_STEPS):
        try:
            return link.attach_netfilter(prog, pf, hooknum, priority + inward * step), ""
        except OSError as e:
            if e.errno != errno.EBUSY or step == NF_PRIORITY_STEPS - 1:
                return None, f"attach: {e.strerror}"
    raise AssertionError("unreachable")


def _links_in_netns(
    ctx: AttachContext,
    inode: int,
    path: str,
    group: list[tuple[Probe, Program]],
    make_link: Callable[[Probe, Program], tuple[link.Link | None, str]],
) -> None:
    """Link each loaded program at its point, from a thread inside netns ``inode``; every link made is kept in
    the attachment, also when something fails half way."""
    made: list[tuple[Probe, link.Link | None, str]] = []

    def inside() -> None:
        for p, prog in group:
            if ctx.stop():
                return
            lk, why = make_link(p, prog)
            made.append((p, lk, why))

    failure = ""
    try:
        netns.run_in_netns(path, inside, inode=inode)
    except netns.NetnsError as e:
        failure = f"netns: {e}"
    finally:
        for p, lk, why in made:
            if lk is not None:
                ctx.att.links.append(lk)
                ctx.att.attached.append(p)
            else:
                ctx.att.ignored.append((p, why))
        ctx.report(len(made))
    if failure:
        for p, _prog in group[len(made) :]:
            ctx.att.ignored.append((p, failure))
        ctx.report(len(group) - len(made))


#: The executor of each attach method.
EXECUTORS: dict[Attach, Executor] = {
    Attach.KPROBE_MULTI: _kprobe_multi,
    Attach.KPROBE: _kprobe(retprobe=False),
    Attach.KRETPROBE: _kprobe(retprobe=True),
    Attach.FENTRY: _tracing(AttachType.TRACE_FENTRY),
    Attach.FEXIT: _tracing(AttachType.TRACE_FEXIT),
    Attach.TP_BTF: _tracing(AttachType.TRACE_RAW_TP),
    Attach.NETFILTER: _in_netns(
        ProgType.NETFILTER, AttachType.NETFILTER, _nf_where, _nf_link, _nf_load_key, _nf_load_constants
    ),
    Attach.TCX: _in_netns(ProgType.SCHED_CLS, None, _tcx_where, _tcx_link, _tcx_load_key, _tcx_load_constants),
}
