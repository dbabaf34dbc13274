"""--filter-trace-tc, --filter-trace-xdp: fentry and fexit on the kernel's loaded tc and XDP programs.

The programs are found by walking every loaded program (``BPF_PROG_GET_NEXT_ID``): those of type ``sched_cls``
(tc, tcx included) or ``xdp`` that carry BTF (fentry on a program names its entry function by its BTF id, the
first of its function records). Each one gets two probes of kind ``bpf_prog`` named as pwru prints them,
``prog_name(tc)`` / ``prog_name(xdp)``: ``fentry_tc``/``fentry_xdp`` (the filters on the program's own packet,
then the event) and ``fexit_tc``/``fexit_xdp`` (the same packet again, with the program's return value:
``struct event``'s ``prog_ret``, ``prog_ret_kind``, named by
:func:`pwru.output.fields.verdict_text`). :class:`Watcher` looks for programs loaded after the start
and attaches to them as well (a datapath that reloads, as Cilium's does, stays traced).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from pwru import backends, discovery
from pwru.config import Config
from pwru.ebpf import btf, btf_kernel, features, prog
from pwru.ebpf.collection import Collection
from pwru.ebpf.errors import EBPFError
from pwru.ebpf.syscall import ProgType
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.probes import Attach, Attachment, Plan, Probe, execute

log = logging.getLogger(__name__)

#: What --filter-trace-tc / --filter-trace-xdp trace: program type -> pwru's suffix.
KINDS = {ProgType.SCHED_CLS: "tc", ProgType.XDP: "xdp"}
#: pwru's own programs of those types, never traced.
OWN_PROGRAMS = frozenset({"tc_chain"})
#: The object's programs for each kind: entry, exit.
PROGRAMS = {"tc": ("fentry_tc", "fexit_tc"), "xdp": ("fentry_xdp", "fexit_xdp")}
def kinds(config: Config) -> list[str]:
    """The program kinds this run traces."""
    return [k for k, on in (("tc", config.filter.trace_tc), ("xdp", config.filter.trace_xdp)) if on]


def check(config: Config, kernel: KernelContext) -> None:
    """Before anything is loaded: fentry/fexit is what tracing a BPF program takes; a kernel that refuses it
    is one line naming the flag and the reason (exit 1), with what to use instead."""
    wanted = kinds(config)
    if not wanted:
        return
    feature = kernel.feature("fentry", lambda: features.fentry("ip_rcv"))
    if not feature.available:
        flag = " and ".join(f"--filter-trace-{k}" for k in wanted)
        raise UserError(
            f"{flag} needs fentry/fexit programs attached to BPF programs, which this kernel does not allow "
            f"({feature.reason}); --filter-trace-tc-chain shows the skb before and after each device's tc "
            "chain with tcx links instead",
            exit_code=1,
        )


def helper_probes(config: Config, backend: str, kernel: KernelContext, programs: set[str]) -> list[Probe]:
    """--filter-track-bpf-helpers: the skb helpers' kernel functions (:func:`pwru.discovery.skb_helpers`), as
    probes of kind ``helper`` with the backend's skb program (the skb is the helper's first argument, so they
    are filtered and tracked as any skb function). Only the function backends can reach them."""
    if not config.filter.track_bpf_helpers:
        return []
    if backend not in ("kprobe-multi", "kprobe", "fentry"):
        raise UserError(
            f"--filter-track-bpf-helpers needs kprobes or fentry (the {backend} backend cannot reach the helpers' "
            "kernel functions)",
            exit_code=1,
        )
    found = discovery.skb_helpers(kernel.spec)
    ok = discovery.probeable({t.name for t in found}, filter_functions=kernel.filter_functions)
    targets = [t for t in found if t.name in ok]
    return [dataclasses.replace(p, kind="helper") for p in backends.skb_probes(backend, targets, programs, kernel)]


@dataclass(frozen=True)
class Target:
    """A loaded tc or XDP program to trace: its id, kind (``tc``/``xdp``), display name and entry BTF id."""

    id: int
    kind: str
    name: str
    entry_btf_id: int


@dataclass
class Targets:
    """The programs found, each held open by a descriptor until the run ends (a probe names its target by fd)."""

    found: list[tuple[Target, prog.Program]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (id, why)
    seen: set[int] = field(default_factory=set)  # every program id looked at (the watcher looks past them)

    def close(self) -> None:
        found, self.found = self.found, []
        for _, p in found:
            p.close()


def _entry_name(info: prog.ProgramInfo, type_id: int) -> str:
    """The entry function's name from the program's BTF (not cut at 15 characters as ``info.name`` is)."""
    try:
        spec = btf.Spec.from_bytes(btf_kernel.raw_btf(info.btf_id))
        return spec.name_of(type_id) or info.name
    except (EBPFError, OSError):
        return info.name


def find(wanted: Iterable[str], seen: set[int] | None = None) -> Targets:
    """Every loaded program of the ``wanted`` kinds whose id is not in ``seen`` (which gets every id looked
    at). A program without BTF cannot be traced: it is skipped with the reason."""
    want = {t for t, k in KINDS.items() if k in set(wanted)}
    seen = set() if seen is None else seen
    targets = Targets(seen=seen)
    for prog_id in prog.loaded_ids():
        if prog_id in seen:
            continue
        seen.add(prog_id)
        try:
            p = prog.Program.from_id(prog_id)
        except OSError:
            continue  # unloaded meanwhile
        if p.type not in want:
            p.close()
            continue
        try:
            info = p.info()
            funcs = p.func_info()
        except OSError:
            p.close()
            continue
        if info.name in OWN_PROGRAMS:  # pwru's own (--filter-trace-tc-chain), seen by the watcher
            p.close()
            continue
        if not funcs:
            targets.skipped.append((prog_id, f"{info.name}: no BTF (fentry needs its entry function's BTF id)"))
            p.close()
            continue
        kind = KINDS[ProgType(p.type)]
        name = f"{_entry_name(info, funcs[0][1])}({kind})"
        targets.found.append((Target(prog_id, kind, name, funcs[0][1]), p))
    return targets


def probes(targets: Targets) -> list[Probe]:
    """fentry and fexit on each target: both named ``prog_name(tc)`` (or ``(xdp)``)."""
    out: list[Probe] = []
    for t, p in targets.found:
        entry, exit_ = PROGRAMS[t.kind]
        for program, attach in ((entry, Attach.FENTRY), (exit_, Attach.FEXIT)):
            out.append(
                Probe("bpf_prog", t.name, program, attach, btf_id=t.entry_btf_id, attach_prog_fd=p.fd)
            )
    return out


#: How often the watcher looks for programs loaded since the start (seconds).
POLL_SECONDS = 1.0


class Watcher:
    """Programs loaded after the start (a datapath that reloads, as Cilium's does): every :data:`POLL_SECONDS`
    the ids not seen yet are looked at and the new tc/XDP programs get their probes, appended to the plan (so
    their probe ids name them) and attached from this thread; each one is said on stderr. ``close()`` stops
    the thread, then detaches and closes everything it made."""

    def __init__(self, wanted: list[str], targets: Targets, plan: Plan, coll: Collection, kernel: KernelContext):
        self._kinds, self._targets, self._plan, self._coll, self._kernel = wanted, targets, plan, coll, kernel
        self._stop = threading.Event()
        self._attachments: list[Attachment] = []
        self._found: list[Targets] = []
        self._thread = threading.Thread(target=self._loop, name="pwru-bpf-progs", daemon=True)

    @classmethod
    def start(
        cls, config: Config, targets: Targets | None, plan: Plan, coll: Collection, kernel: KernelContext
    ) -> Watcher | None:
        wanted = kinds(config)
        if not wanted or targets is None:
            return None
        w = cls(wanted, targets, plan, coll, kernel)
        w._thread.start()
        return w

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.poll()
            except (EBPFError, OSError) as e:
                log.warning("no longer watching for new BPF programs: %s", e)
                return

    def poll(self) -> None:
        """One look for new programs (the thread's step; callable directly)."""
        new = find(self._kinds, self._targets.seen)
        self._found.append(new)
        for prog_id, why in new.skipped:
            log.warning("BPF program %d not traced: %s", prog_id, why)
        added = []
        for p in probes(new):
            p = dataclasses.replace(p, constants={**p.constants, "cfg_probe_id": len(self._plan)})
            self._plan.add([p])
            added.append(p)
        if not added:
            return
        att = execute(Plan(added), self._coll, self._kernel, lambda _d, _t: None, self._stop.is_set)
        self._attachments.append(att)
        names = sorted({p.display_name for p in att.attached})
        if names:
            print(f"Attached {len(names)} BPF programs loaded since the start: {' '.join(names)}", file=sys.stderr)
        for p, why in att.ignored:
            log.warning("could not attach %s (%s): %s", p.display_name, p.attach.value, why)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for att in self._attachments:
            att.close()
        for t in self._found:
            t.close()
