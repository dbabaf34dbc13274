"""Backends: how pwru's one kernel-side program reaches every skb-carrying function or tracepoint.

=============  =========================================================  ==========================================
backend        attaches                                                   needs from the kernel
=============  =========================================================  ==========================================
kprobe-multi   one link per skb argument position, by addresses           CONFIG_FPROBE (>= 5.18), kprobes allowed
kprobe         one perf kprobe per function, attached in parallel          CONFIG_KPROBES, kprobes allowed
fentry         one program load + link per function                       BTF trampolines (>= 5.5), not locked down
tracepoint     one tp_btf program per tracepoint carrying an skb          BTF (>= 5.5); works under lockdown
=============  =========================================================  ==========================================

Each backend lists its targets (discovery narrowed by ``--filter-func``) and attaches a loaded
:class:`~pwru.ebpf.collection.Collection`'s programs to them, reporting progress and what it had to skip.
"""

from __future__ import annotations

import errno
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pwru import discovery
from pwru.config import Config
from pwru.discovery import Target
from pwru.ebpf import features, link
from pwru.ebpf.btf import Spec
from pwru.ebpf.btf_kernel import btf_fd_of_module
from pwru.ebpf.collection import Collection
from pwru.ebpf.kallsyms import Kallsyms
from pwru.ebpf.prog import Program
from pwru.ebpf.syscall import AttachType, BPFError, ProgType
from pwru.errors import UserError

#: In the order ``--backend auto`` tries them (see the README for the measurements behind it).
NAMES = ("kprobe-multi", "kprobe", "fentry", "tracepoint")
#: Threads attaching kprobes or fentry programs: the kernel serialises much of the work, but each attach also
#: waits (text patching, trampoline updates) and spends time in Python around its syscalls.
ATTACH_WORKERS = 8
#: Threads closing links at exit (they sleep in the kernel waiting for RCU grace periods, not on a CPU).
DETACH_WORKERS = 64
#: Highest skb argument position the kprobe-type programs read (registers on every architecture).
MAX_KPROBE_POS = 5

Progress = Callable[[int, int], None]
StopCheck = Callable[[], bool]


@dataclass
class Attachment:
    """What a backend left in the kernel, to be released at exit."""

    links: list[link.Link] = field(default_factory=list)
    programs: list[Program] = field(default_factory=list)
    attached: list[Target] = field(default_factory=list)
    ignored: list[tuple[Target, str]] = field(default_factory=list)

    def close(self, workers: int = DETACH_WORKERS) -> None:
        """Detach every link. Many at once: tearing down a kprobe or an fentry trampoline waits for an RCU grace
        period, and the kernel lets concurrent waiters share one, so 64 closers finish about 64 times sooner than
        one (pwru's one-by-one detach of 1,500 kprobes takes a minute)."""
        links, self.links = self.links, []
        if workers > 1 and len(links) > 16:
            with ThreadPoolExecutor(min(workers, len(links))) as pool:
                list(pool.map(lambda lk: lk.close(), links))
        else:
            for lk in links:
                lk.close()
        for p in self.programs:
            p.close()
        self.programs = []


def feature_for(backend: str) -> features.Feature:
    probe = {
        "kprobe-multi": features.kprobe_multi,
        "kprobe": features.kprobe,
        "fentry": features.fentry,
        "tracepoint": features.tp_btf,
    }[backend]
    return probe()


def choose(requested: str) -> str:
    """The backend to use: ``requested`` if the kernel allows it, or the first allowed one for ``auto``."""
    if requested != "auto":
        f = feature_for(requested)
        if not f.available:
            allowed = [b for b in NAMES if b != requested and feature_for(b).available]
            hint = f"; use --backend {allowed[0]}" if allowed else ""
            raise UserError(f"--backend {requested}: not available on this kernel: {f.reason}{hint}")
        return requested
    reasons = []
    for name in NAMES:
        f = feature_for(name)
        if f.available:
            return name
        reasons.append(f"{name}: {f.reason}")
    raise UserError("no backend works on this kernel: " + "; ".join(reasons), exit_code=1)


def targets_for(backend: str, spec: Spec, config: Config, modules: Sequence[str]) -> list[Target]:
    """Discovery for one backend, narrowed by ``--filter-func`` and, for functions, to what can be probed."""
    if backend == "tracepoint":
        found = discovery.skb_tracepoints(spec, modules)
    else:
        found = discovery.skb_functions(spec, MAX_KPROBE_POS, modules)
        names = {t.name for t in found}
        ok = discovery.probeable(names)
        found = [t for t in found if t.name in ok]
    seen: set[tuple[str, str | None]] = set()
    out = []
    for t in found:
        key = (t.name, t.module)
        if key in seen or (not config.func_allowed(display_name(t)) and not config.func_allowed(t.name)):
            continue
        seen.add(key)
        out.append(t)
    return out


def display_name(t: Target) -> str:
    """How a target is named to users: ``ip_rcv``, ``nf_hook_slow``, ``veth_xmit[veth]``, ``tp:kfree_skb``."""
    base = f"tp:{t.name}" if t.kind == "tracepoint" else t.name
    return f"{base}[{t.module}]" if t.module else base


def kprobe_program_name(t: Target, available: set[str]) -> str:
    return _variant("kprobe", t, available)


def fentry_program_name(t: Target, available: set[str]) -> str:
    return _variant("fentry", t, available)


def _variant(prefix: str, t: Target, available: set[str]) -> str:
    """The program for a target's skb (and drop reason) position. The object has reason variants only for the
    positions drop functions use (``kfree_skb_reason``: 1/2, ``sk_skb_reason_drop``: 2/3); elsewhere the skb
    variant traces the function without its reason."""
    if t.reason_pos is not None:
        name = f"{prefix}_skb_{t.skb_pos}_reason_{t.reason_pos}"
        if name in available:
            return name
    return f"{prefix}_skb_{t.skb_pos}"


TP_PROGRAM = "tp_skb"


def attach(
    backend: str,
    coll: Collection,
    targets: list[Target],
    progress: Progress,
    stop: StopCheck,
) -> Attachment:
    fn = {
        "kprobe-multi": _attach_kprobe_multi,
        "kprobe": _attach_kprobe,
        "fentry": _attach_fentry,
        "tracepoint": _attach_tracepoints,
    }[backend]
    att = Attachment()
    try:
        fn(att, coll, targets, progress, stop)
    except BaseException:
        att.close()
        raise
    return att


def _attach_tracepoints(
    att: Attachment,
    coll: Collection,
    targets: list[Target],
    progress: Progress,
    stop: StopCheck,
) -> None:
    """One load of ``tp_skb`` per tracepoint, told by per-load constants where its skb, drop reason and
    location are and which probe id (index into ``targets``) to report."""
    probe_id = {t: i for i, t in enumerate(targets)}

    def one(t: Target) -> tuple[link.Link | None, str]:
        constants = {
            "cfg_tp_skb_pos": t.skb_pos,
            "cfg_tp_reason_pos": t.reason_pos or 0,
            "cfg_tp_location_pos": t.location_pos or 0,
            "cfg_probe_id": probe_id[t],
        }
        return _load_and_attach(
            coll, TP_PROGRAM, attach_btf_id=t.btf_id, expected_attach_type=AttachType.TRACE_RAW_TP,
            constants=constants,
        )  # fmt: skip

    _attach_each(att, targets, one, progress, stop)


def _load_and_attach(coll: Collection, name: str, **load: Any) -> tuple[link.Link | None, str]:
    """Load one program for one target (fentry, tp_btf) and link it; the reason when either step fails."""
    try:
        prog = coll.load_program(name, **load)
    except BPFError as e:
        return None, f"load: {e.strerror}"
    try:
        return link.attach_tracing(prog), ""
    except OSError as e:
        return None, f"attach: {e.strerror}"
    finally:
        prog.close()  # the link holds the program


def _attach_fentry(
    att: Attachment,
    coll: Collection,
    targets: list[Target],
    progress: Progress,
    stop: StopCheck,
) -> None:
    names = set(coll.program_names())
    # Before 5.15 a tracing program cannot ask for its function's address (bpf_get_func_ip): each load is told
    # it as a constant instead, from kallsyms.
    ksyms = None if features.get_func_ip().available else Kallsyms.load()

    def one(t: Target) -> tuple[link.Link | None, str]:
        constants = None if ksyms is None else {"cfg_probe_id": ksyms.address(t.name, t.module) or 0}
        return _load_and_attach(
            coll, fentry_program_name(t, names), attach_btf_id=t.btf_id, attach_btf_obj_fd=module_btf_fd(t.module),
            expected_attach_type=AttachType.TRACE_FENTRY, constants=constants,
        )  # fmt: skip

    _attach_each(att, targets, one, progress, stop)


def _attach_each(
    att: Attachment,
    targets: list[Target],
    one: Callable[[Target], tuple[link.Link | None, str]],
    progress: Progress,
    stop: StopCheck,
) -> None:
    """Attach target by target with :data:`ATTACH_WORKERS` threads; after a stop request the remaining
    targets are passed over (every link made so far is kept in ``att``, so it is released)."""

    def guarded(t: Target) -> tuple[link.Link | None, str]:
        return (None, "") if stop() else one(t)

    with ThreadPoolExecutor(ATTACH_WORKERS) as pool:
        for done, (t, (lk, why)) in enumerate(zip(targets, pool.map(guarded, targets), strict=True), 1):
            if lk is not None:
                att.links.append(lk)
                att.attached.append(t)
            elif why:
                att.ignored.append((t, why))
            if done % 16 == 0 or done == len(targets):
                progress(done, len(targets))


_module_btf_fds: dict[str, int] = {}


def module_btf_fd(module: str | None) -> int | None:
    """A kernel BTF object fd for a module (fentry on module functions attaches against it)."""
    if module is None:
        return None
    if module not in _module_btf_fds:
        _module_btf_fds[module] = btf_fd_of_module(module)
    return _module_btf_fds[module]


def _load_kprobe_programs(
    coll: Collection, targets: list[Target], attach_type: AttachType | None
) -> dict[str, Program]:
    programs: dict[str, Program] = {}
    names = set(coll.program_names())
    for name in sorted({kprobe_program_name(t, names) for t in targets}):
        programs[name] = coll.load_program(name, prog_type=ProgType.KPROBE, expected_attach_type=attach_type)
    return programs


def _attach_kprobe(
    att: Attachment,
    coll: Collection,
    targets: list[Target],
    progress: Progress,
    stop: StopCheck,
) -> None:
    programs = _load_kprobe_programs(coll, targets, None)
    att.programs.extend(programs.values())
    names = set(programs)

    def one(t: Target) -> tuple[link.Link | None, str]:
        try:
            return link.attach_kprobe(programs[kprobe_program_name(t, names)], t.name), ""
        except OSError as e:
            return None, e.strerror or str(e)

    _attach_each(att, targets, one, progress, stop)


def _attach_kprobe_multi(
    att: Attachment, coll: Collection, targets: list[Target], progress: Progress, stop: StopCheck
) -> None:
    """One link per program variant, by symbol name: the kernel resolves all names in one walk of its symbol
    table, so pwru need not read kallsyms before it is ready. A batch the kernel refuses is split in halves
    until the function it cannot take is found and ignored."""
    programs = _load_kprobe_programs(coll, targets, AttachType.TRACE_KPROBE_MULTI)
    att.programs.extend(programs.values())
    names = set(programs)
    groups: dict[str, list[Target]] = defaultdict(list)
    for t in targets:
        groups[kprobe_program_name(t, names)].append(t)
    done = 0

    def attach_batch(prog: Program, batch: list[Target]) -> None:
        nonlocal done
        if stop():
            return
        try:
            lk = link.attach_kprobe_multi(prog, syms=[t.name for t in batch])
        except OSError as e:
            if len(batch) == 1:
                att.ignored.append((batch[0], e.strerror or str(e)))
                done += 1
                progress(done, len(targets))
                return
            if e.errno not in (errno.ENOMEM, errno.E2BIG, errno.EINVAL, errno.ENOENT, errno.ESRCH, errno.EBUSY):
                raise
            half = len(batch) // 2
            attach_batch(prog, batch[:half])
            attach_batch(prog, batch[half:])
            return
        att.links.append(lk)
        att.attached.extend(batch)
        done += len(batch)
        progress(done, len(targets))

    for name, batch in groups.items():
        attach_batch(programs[name], sorted(batch, key=lambda t: t.name))
