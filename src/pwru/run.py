"""The run loop: plan the probes, load the object, attach, feed records through the pipeline, leave nothing behind.

Also the two introspection commands, ``--list-backends`` and ``--list-funcs``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from pwru import (
    backends,
    bpf_progs,
    bpfmap,
    discovery,
    dumps,
    flags,
    netfilter,
    nf_rules,
    rawfile,
    resolve,
    summary,
    tc_chain,
    tracking,
)
from pwru.bpf import object_path
from pwru.config import Config, FlagError
from pwru.ebpf.collection import Collection
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.ringbuf import RingBufReader
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.netns_names import NetnsNames
from pwru.output import Sink, make_formatter, open_sink
from pwru.output.journey import JourneyOutput
from pwru.output.names import Names
from pwru.output.pcap import PcapOutput
from pwru.output.sink import FileSink, open_pcap_sink
from pwru.pipeline import LineOutput, Output, Pipeline
from pwru.probes import Attach, Attachment, Plan, Probe, Progress, execute
from pwru.records import RecordLayout, Schema
from pwru.stages import LimitStage, StackStage, Stage
from pwru.symbols import Symbols

if TYPE_CHECKING:
    from pwru.cexpr import MetadataField
    from pwru.ebpf.asm import Instruction
    from pwru.ebpf.btf import Spec
    from pwru.filter import CompiledFilter, Link, SkbLayout

log = logging.getLogger("pwru")

#: Records taken from the ring buffer per loop turn: bounds the memory a full ring costs user space (its
#: records, their lines and the encoded output exist at once) without adding turns worth measuring.
READ_BATCH = 2048
#: How the progress and summary lines name each kind of probe (``Probe.kind``): singular, plural.
KIND_NOUNS = {"func": ("function", "functions"), "tracepoint": ("tracepoint", "tracepoints"),
              "nf_hook": ("netfilter hook", "netfilter hooks"), "bpf_prog": ("BPF program", "BPF programs"),
              "helper": ("helper", "helpers"), "map_op": ("map function", "map functions"),
              "tc_hook": ("tc hook", "tc hooks")}  # fmt: skip
#: File descriptors a run holds per probe, by attach method (program + link where each probe loads its own
#: program; a perf event where the program is shared; nothing per probe for kprobe-multi's one link), and per
#: distinct program (loaded once, shared by the probes of the method, linked once for kprobe-multi).
FDS_PER_PROBE = {Attach.KPROBE_MULTI: 0, Attach.KPROBE: 1, Attach.KRETPROBE: 1, Attach.FENTRY: 2, Attach.FEXIT: 2,
                 Attach.TP_BTF: 2, Attach.NETFILTER: 1, Attach.TCX: 1}  # fmt: skip
FDS_PER_PROGRAM = {Attach.KPROBE_MULTI: 2, Attach.KPROBE: 1, Attach.KRETPROBE: 1, Attach.NETFILTER: 1, Attach.TCX: 1}
#: Descriptors beyond those counted: the ring buffer's epoll, sinks, netns files, what Python opens meanwhile.
FDS_SPARE = 64


def kernel_context(config: Config) -> KernelContext:
    k = config.kernel
    return KernelContext(k.kernel_btf, k.kmods, k.all_kmods)


# --- introspection ---------------------------------------------------------------------------------------


def list_backends(config: Config) -> int:
    resolve.check_privileges()  # without them every backend would read "unavailable", blaming the kernel
    kernel = kernel_context(config)
    for name in backends.NAMES:
        f = backends.feature_for(name, kernel)
        reason = f.reason.removeprefix(f"{f.name}: ")
        print(f"{name:<13} {'available' if f.available else 'unavailable: ' + reason}")
    return 0


def list_funcs(config: Config) -> int:
    resolve.check_privileges()  # the feature probes behind --backend auto need them
    kernel = kernel_context(config)
    try:
        backend = backends.choose("auto", kernel) if config.kernel.backend == "auto" else config.kernel.backend
        targets = backends.skb_targets(backend, kernel, config.filter.func_allowed)
    finally:
        kernel.close()
    for t in targets:
        print(f"{backends.display_name(t)} skb={t.skb_pos}" + (f" reason={t.reason_pos}" if t.reason_pos else ""))
    what = "tracepoint" if backend == "tracepoint" else "function"
    print(f"{len(targets)} {what}{'' if len(targets) == 1 else 's'} ({backend})")
    return 0


# --- shared set-up ----------------------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fds_needed(plan: Plan, open_now: int) -> int:
    """The file descriptors a run of ``plan`` needs at most: ``open_now`` plus what attaching every probe opens
    (see :data:`FDS_PER_PROBE`) plus :data:`FDS_SPARE`."""
    programs = {(p.attach, p.program) for p in plan.probes}
    per_probe = sum(FDS_PER_PROBE.get(p.attach, 2) for p in plan.probes)
    per_program = sum(FDS_PER_PROGRAM.get(method, 0) for method, _ in programs)
    return open_now + per_probe + per_program + FDS_SPARE


def ensure_fd_limit(plan: Plan) -> None:
    """Raise RLIMIT_NOFILE to what the plan needs (the hard limit too, which takes CAP_SYS_RESOURCE); raise
    :class:`UserError` when it cannot be, before anything is loaded: with too few descriptors most probes would
    fail to attach and the run would trace a fraction of the plan."""
    needed = fds_needed(plan, len(os.listdir("/proc/self/fd")))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(
            f"{counted(plan)} need about {needed} open files, but RLIMIT_NOFILE is {soft} (hard limit {hard}) and "
            f"cannot be raised ({why}): raise it first (ulimit -n {needed}), or trace fewer (--filter-func)",
            exit_code=1,
        ) from None
    log.debug("RLIMIT_NOFILE raised from %d/%d to %d", soft, hard, needed)


class ReadyFile:
    """--ready-file: removed at start (a file left by an earlier run must not say this one is ready), written
    once everything is attached (under a temporary name, then renamed: a script never reads it half written),
    removed at exit. Failures are one line each (a :class:`UserError`, exit 1)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def clear_stale(self) -> None:
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise UserError(f"--ready-file: {self.path}: cannot remove it: {e.strerror}", exit_code=1) from None
        log.debug("removed the ready file of an earlier run: %s", self.path)

    def signal(self) -> None:
        if self.path is None:
            return
        tmp = ""
        try:
            fd, tmp = resolve.make_temp(os.path.dirname(os.path.abspath(self.path)), ".pwru-ready-")
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError as e:
            if tmp:
                with suppress(OSError):
                    os.unlink(tmp)
            raise UserError(f"--ready-file: {self.path}: {e.strerror}", exit_code=1) from None

    def remove(self) -> None:
        if self.path is not None:
            with suppress(OSError):
                os.unlink(self.path)


class Stopper:
    """SIGINT/SIGTERM set a flag the loops check; nothing is torn down inside a signal handler. While installed,
    a signal also makes :attr:`wakeup_fd` readable (``signal.set_wakeup_fd``), so a reader waiting on it with the
    ring buffer wakes at once instead of at its next timeout (up to 0.2 s of every detach otherwise)."""

    def __init__(self) -> None:
        self.stopped = False
        self.signal: int | None = None
        self.wakeup_fd = -1

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.stopped = True
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[Stopper]:
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.wakeup_fd = r
        try:
            yield self
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, h in old.items():
                signal.signal(s, h)
            self.wakeup_fd = -1
            os.close(r)
            os.close(w)


def _kinds(plan: Plan) -> list[str]:
    """The kinds of probe in the plan, in plan order."""
    return list(dict.fromkeys(p.kind for p in plan.probes))


def count_of(n: int, kind: str) -> str:
    """``1 tracepoint``, ``30 tracepoints``: ``n`` probes of ``kind`` (``Probe.kind``)."""
    one, many = KIND_NOUNS[kind]
    return f"{n} {one if n == 1 else many}"


def counted(plan: Plan, probes: list[Probe] | None = None) -> str:
    """``30 tracepoints and 1 netfilter hook``: ``probes`` (the whole plan by default) by the plan's kinds."""
    chosen = plan.probes if probes is None else probes
    return " and ".join(count_of(sum(p.kind == k for p in chosen), k) for k in _kinds(plan))


def _progress_printer(plan: Plan, backend: str) -> Progress:
    """A progress bar on a terminal; one plain line otherwise."""
    tty = sys.stderr.isatty()
    what = " and ".join(KIND_NOUNS[k][1] for k in _kinds(plan))
    if not tty:
        print(f"Attaching {counted(plan)} ({backend})...", file=sys.stderr)
    last = [0.0]

    def progress(done: int, total_: int) -> None:
        if not tty:
            return
        now = time.monotonic()
        if done != total_ and now - last[0] < 0.05:
            return
        last[0] = now
        width = 30
        filled = width * done // max(total_, 1)
        sys.stderr.write(f"\rAttaching {what} ({backend}) [{'=' * filled}{' ' * (width - filled)}] {done}/{total_}")
        if done == total_:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress


def build_object(config: Config, kernel_btf: Spec | None = None) -> tuple[ObjectSpec, dict[str, int]]:
    """The kernel program with the pcap filter spliced into its two stubs (L2 and L3) and the tunnel filters
    into theirs, and the constants that turn on the spliced ones (``cfg_has_pcap``, ``cfg_has_tunnel_pcap_*``).
    ``kernel_btf`` gives ``struct sk_buff``'s layout to filters with ancillary loads (vmlinux BTF without it).
    Raises :class:`UserError` for an expression libpcap refuses or the kernel cannot run, before anything is
    loaded."""
    from pwru.filter import FilterError, compile_filter

    try:
        compiled = compile_filter(config.filter.pcap, progress=_say)
    except FilterError as e:
        raise UserError(str(e)) from None
    splice = _Splicer(kernel_btf)
    tunnel = {
        "l2": _tunnel_filter("filter.tunnel_pcap_l2", config.filter.tunnel_pcap_l2, "l2", splice),
        "l3": _tunnel_filter("filter.tunnel_pcap_l3", config.filter.tunnel_pcap_l3, "l3", splice),
    }
    spec = ObjectSpec.load(object_path())
    if compiled is not None:
        for link in ("l2", "l3"):
            spec.replace_function(f"filter_pcap_{link}", splice(compiled, link, None))
    for link, body in tunnel.items():
        if body is not None:
            spec.replace_function(f"filter_pcap_tunnel_{link}", body)
    spliced = {f"cfg_has_tunnel_pcap_{link}": int(body is not None) for link, body in tunnel.items()}
    expr = skb_expr_filter(config, kernel_btf)
    if expr is not None:
        spec.replace_function("filter_skb_expr", expr)
    xdp_expr = skb_expr_filter(config, kernel_btf, root="xdp")
    if xdp_expr is not None:
        spec.replace_function("filter_xdp_expr", xdp_expr)
    metadata = skb_metadata(config, kernel_btf)
    if metadata is not None:
        spec.replace_function("set_skb_metadata", metadata[0])
    xdp_metadata = skb_metadata(config, kernel_btf, root="xdp")
    if xdp_metadata is not None:
        spec.replace_function("set_xdp_metadata", xdp_metadata[0])
    sizes = [m[2] for m in (metadata, xdp_metadata) if m is not None]
    return spec, {
        "cfg_has_pcap": int(compiled is not None),
        **spliced,
        "cfg_has_skb_expr": int(expr is not None),
        "cfg_has_xdp_expr": int(xdp_expr is not None),
        "cfg_metadata_size": max(sizes, default=0),  # one tail for both: the larger
        "cfg_xdp_metadata": int(xdp_metadata is not None),
    }


def _btf_or_kernel(kernel_btf: Spec | None) -> Spec:
    from pwru.ebpf.btf import kernel_btf as running

    return kernel_btf if kernel_btf is not None else running()


def skb_expr_filter(config: Config, kernel_btf: Spec | None, root: str = "skb") -> list[Instruction] | None:
    """--filter-skb-expr (``root`` xdp: --filter-xdp-expr) compiled against the kernel's BTF (the body of
    ``filter_skb_expr`` / ``filter_xdp_expr``), or None."""
    expr = config.filter.skb_expr if root == "skb" else config.filter.xdp_expr
    if not expr.strip():
        return None
    from pwru.cexpr import ExprError, compile_filter  # only when asked: its import is seconds under emulation

    try:
        return compile_filter(expr, _btf_or_kernel(kernel_btf), root=root)
    except ExprError as e:
        raise FlagError(f"filter-{root}-expr", str(e)) from None


def skb_metadata(
    config: Config, kernel_btf: Spec | None, root: str = "skb"
) -> tuple[list[Instruction], list[MetadataField], int] | None:
    """--output-skb-metadata compiled against the kernel's BTF: the body of ``set_skb_metadata``, the fields
    the outputs show and the bytes they take in each event; None without expressions."""
    exprs = config.output.skb_metadata if root == "skb" else config.output.xdp_metadata
    if not exprs:
        return None
    from pwru.cexpr import ExprError, compile_metadata

    try:
        return compile_metadata(exprs, _btf_or_kernel(kernel_btf), root=root)
    except ExprError as e:
        raise FlagError(f"output-{root}-metadata", str(e)) from None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Splicer:
    """Translates compiled filters for the kernel program (probe mode): the skb layout from kernel BTF and
    the long-jump probe are asked for only when a filter needs them."""

    def __init__(self, kernel_btf: Spec | None) -> None:
        self._btf = kernel_btf
        self._layout: SkbLayout | None = None

    def layout(self) -> SkbLayout:
        from pwru.ebpf.btf import kernel_btf
        from pwru.filter import SkbLayout

        if self._layout is None:
            try:
                self._layout = SkbLayout.from_btf(self._btf if self._btf is not None else kernel_btf())
            except (OSError, ValueError) as e:
                problem = f"the pcap filter reads skb fields, and the kernel BTF does not say where: {e}"
                raise UserError(problem) from None
        return self._layout

    def __call__(self, compiled: CompiledFilter, link: Link, flag: str | None) -> list[Instruction]:
        from pwru.ebpf import features
        from pwru.filter import FilterTooLarge, TranslationError

        try:
            return compiled.to_ebpf(
                link,
                "probe",
                skb=self.layout() if compiled.needs_skb else None,
                long_jumps=lambda: features.long_jump().available,
            )
        except FilterTooLarge as e:
            problem = f"the filter is too large for this kernel ({e})"
        except TranslationError as e:
            problem = f'invalid pcap filter "{compiled.expr}": {e}'
        raise FlagError(flag, problem) if flag else UserError(problem)


def _tunnel_filter(field: str, expr: str, link: Link, splice: _Splicer) -> list[Instruction] | None:
    """The body of a tunnel filter stub: ``expr`` compiled for ``link`` only (the inner packet from its MAC
    header is Ethernet, from its network header raw IP); None without an expression."""
    from pwru.filter import FilterError, compile_filter

    flag = flags.TABLE.filling(field).name
    try:
        compiled = compile_filter(expr, progress=_say)
    except FilterError as e:
        raise FlagError(flag, str(e)) from None
    if compiled is None:
        return None
    if compiled.classic(link) is None:
        error = compiled.l2_error if link == "l2" else compiled.l3_error
        raise FlagError(flag, f'invalid pcap filter "{expr}": {error}')
    return splice(compiled, link, flag)


#: --output-pcap's per-CPU scratch map, and its value size when the output is off.
PCAP_SCRATCH_MAP = "pcap_scratch"
PCAP_SCRATCH_OFF_SIZE = 8


def size_pcap_scratch(obj: ObjectSpec, config: Config) -> None:
    """Without --output-pcap the scratch records (16 KiB and more per CPU and nesting level) are made tiny: a
    constant (cfg_output_pcap 0) keeps the verifier and the programs from ever reaching them."""
    if config.output.pcap is None:
        obj.maps[PCAP_SCRATCH_MAP].value_size = PCAP_SCRATCH_OFF_SIZE


def schema_of(obj: ObjectSpec) -> Schema:
    if obj.btf is None:
        raise UserError(f"{object_path()} has no BTF: rebuild it with `python3 -m pwru.bpf.build`", exit_code=1)
    return Schema(obj.btf)


# --- run --------------------------------------------------------------------------------------------------


def run(config: Config) -> int:
    # What can be checked on the host is checked before anything is loaded into the kernel.
    resolve.check_privileges()
    resolve.check_libpcap(config)
    ready = ReadyFile(config.ready_file)
    ready.clear_stale()
    _raise_fd_limit()
    t_start = time.monotonic()
    kernel = kernel_context(config)
    kernel.preload_kallsyms()  # names for the events and the kprobe-multi addresses; joined before "ready"
    if config.kernel.backend != "tracepoint":
        kernel.preload_filter_functions()  # what the function backends can probe, read while BTF is parsed
    progs = bpf_progs.Targets()  # --filter-trace-tc/xdp: the traced programs, held open until the end
    try:
        # The C expressions need only the kernel's BTF: a mistake in one is said before discovery and loading
        # (build_object compiles them again, which costs milliseconds).
        skb_expr_filter(config, kernel.spec)
        skb_expr_filter(config, kernel.spec, root="xdp")
        skb_metadata(config, kernel.spec)
        skb_metadata(config, kernel.spec, root="xdp")
        backend = backends.choose(config.kernel.backend, kernel)
        log.debug("backend %s", backend)
        events = config.output.events  # False: a summary alone, only the probes its counts need
        targets = backends.skb_targets(backend, kernel, config.filter.func_allowed) if events else []
        nf_probes = netfilter.run_probes(config, backend, kernel, show=events)
        bpf_progs.check(config, kernel)
        tc_chain.check(config, kernel)
        chain_probes = tc_chain.probes(config)
        wanted_progs = bpf_progs.kinds(config)
        progs = bpf_progs.find(wanted_progs) if wanted_progs else progs
        for prog_id, why in progs.skipped:
            log.warning("BPF program %d not traced: %s", prog_id, why)
        if events and not targets and not any(p.shows for p in nf_probes) and not progs.found and not chain_probes:
            raise UserError("no function or tracepoint to trace: check --filter-func", exit_code=1)
        tracking.check_non_skb_funcs(config, backend, kernel)
        bpfmap.check(config, backend)
        obj, spliced = build_object(config, kernel.spec)
        schema = schema_of(obj)
        for name in tracking.SIZED_MAPS:
            obj.maps[name].max_entries = config.tracking.max_entries
        dumps.prepare(config, kernel.spec, obj, nf_probes)
        size_pcap_scratch(obj, config)
        obj.maps["events"].max_entries = config.output.ring_size * 1024
        plan = Plan()
        skb_side = backends.skb_probes(backend, targets, set(obj.programs), kernel)
        skb_side += bpf_progs.helper_probes(config, backend, kernel, set(obj.programs))
        skb_side += summary.probes(config, kernel.spec, skb_side)
        skb_probes, track_probes = tracking.probes(config, backend, kernel, skb_side)
        plan.add(summary.mark_ends(skb_probes, schema.verdicts))
        plan.add(nf_probes)
        plan.add(track_probes)
        plan.add(nf_rules.probes(config, backend, kernel))
        plan.add(bpf_progs.probes(progs))
        plan.add(chain_probes)
        plan.add(bpfmap.probes(config, backend, kernel))
        ensure_fd_limit(plan)
        reasons = discovery.drop_reasons(kernel.spec, kernel.modules())
        sink = open_sink(config)  # an --output-file that cannot be opened is said before anything is loaded
        pcap_sink = None
        try:
            pcap_sink = open_pcap_sink(config)
            stopper = Stopper()
            with stopper.installed():
                constants = flags.constants(config) | spliced | netfilter.constants(plan.probes, reasons)
                constants |= nf_rules.constants(plan.probes, bool(reasons), kernel)
                coll = Collection(obj, kernel_btf=kernel.spec, constants=constants)
                try:
                    loaded = Loaded(config, backend, kernel, coll, plan, schema, reasons, sink, ready, pcap_sink, progs)
                    return _run_loaded(loaded, stopper, t_start)
                finally:
                    coll.close()
        finally:
            sink.close()  # idempotent: the pipeline closes it first when there was one
            if pcap_sink is not None:
                pcap_sink.close()
    finally:
        progs.close()
        kernel.close()


@dataclass
class Loaded:
    """What a run has once the object is loaded: the parts the attach, read and exit steps share."""

    config: Config
    backend: str
    kernel: KernelContext
    coll: Collection
    plan: Plan
    schema: Schema
    reasons: dict[int, str]
    sink: Sink
    ready: ReadyFile
    pcap_sink: Sink | None = None  # --output-pcap's
    progs: bpf_progs.Targets | None = None  # --filter-trace-tc/xdp's programs found at the start


def _run_loaded(run: Loaded, stopper: Stopper, t_start: float) -> int:
    config, backend, kernel, coll, plan = run.config, run.backend, run.kernel, run.coll, run.plan
    progress = _progress_printer(plan, backend)
    if config.output.bpfmap:
        bpfmap.mark_own(coll)
    t_attach = time.monotonic()
    att = execute(plan, coll, kernel, progress, lambda: stopper.stopped, config.kernel.kprobe_batch)
    attach_time = time.monotonic() - t_attach
    pipeline: Pipeline | None = None
    printed: Callable[[], int] = lambda: 0  # noqa: E731
    reporter: summary.Reporter | None = None
    try:
        if stopper.stopped:
            return 0
        shown = [p for p in att.attached if p.shows]
        if not shown:
            why = "; ".join(f"{p.display_name}: {reason}" for p, reason in att.ignored[:3])
            raise UserError(f"could not attach to anything ({backend}): {why}", exit_code=1)
        ignored = [(p, why) for p, why in att.ignored if p.shows]
        print(f"Attached {counted(Plan(shown))} (ignored {len(ignored)})", file=sys.stderr)
        for p, why in ignored:
            log.debug("ignored %s: %s", p.display_name, why)
        _warn_kinds_all_ignored(plan, shown, ignored)
        keepers = sorted({f"{p.display_name}({p.attach.value})" for p in att.attached if not p.shows})
        if keepers:
            log.debug("probes keeping kernel state only: %s", " ".join(keepers))
        for p, why in att.ignored:
            if not p.shows:  # a hole in what tracking (or attribution) sees: say so, it changes what output means
                log.warning("%s: could not attach %s (%s): %s", _keeps(p), p.display_name, p.attach.value, why)
        pipeline, limit, printed = make_pipeline(
            config, kernel, coll, plan, run.schema, run.reasons, run.sink, pcap_sink=run.pcap_sink
        )
        if config.output.summarises:
            reporter = summary.Reporter(summary_reader(run), config, run.sink)
        watcher = bpf_progs.Watcher.start(config, run.progs, plan, coll, kernel)
        try:
            _read(run, pipeline, limit, stopper, t_start, reporter.tick if reporter else None)
        finally:
            if watcher is not None:
                watcher.close()
    finally:
        _finish(run, att, pipeline, printed, attach_time, reporter)
    return 0


def summary_reader(run: Loaded) -> summary.Reader:
    """The reader of the run's kernel counts (--summary)."""
    assert run.coll.spec.btf is not None
    ksyms = run.kernel.kallsyms

    def function_of(addr: int) -> str:
        sym = ksyms.lookup(addr)
        return f"{addr:#x}" if sym is None else sym.name + (f" [{sym.module}]" if sym.module else "")

    key = RecordLayout(run.coll.spec.btf, summary.KEY_STRUCT)
    maps = run.coll.maps
    return summary.Reader(maps[summary.COUNTS_MAP], maps[summary.FULL_MAP], key, run.schema.verdicts, run.reasons,
                          function_of)  # fmt: skip


def _keeps(p: Probe) -> str:
    """What a probe that shows nothing keeps (for the warning when it cannot be attached)."""
    return "netfilter drop attribution" if p.kind == "nf_hook" else "skb tracking"


def _warn_kinds_all_ignored(plan: Plan, shown: list[Probe], ignored: list[tuple[Probe, str]]) -> None:
    """A kind of probe none of which could be attached (every netfilter hook, say, for want of CAP_SYS_ADMIN to
    enter a namespace) is a hole in what the trace shows: say so with the first reason, not only under --debug."""
    for kind in _kinds(plan):
        failed = [(p, why) for p, why in ignored if p.kind == kind]
        if failed and not any(p.kind == kind for p in shown):
            p, why = failed[0]
            log.warning("none of the %s could be attached (%s: %s)", KIND_NOUNS[kind][1], p.display_name, why)


def make_pipeline(
    config: Config,
    kernel: KernelContext,
    coll: Collection,
    plan: Plan,
    schema: Schema,
    reasons: dict[int, str],
    sink: Sink,
    *,
    pcap_sink: Sink | None = None,
) -> tuple[Pipeline, LimitStage | None, Callable[[], int]]:
    """The stages and outputs the flags ask for, and how many events have been written out so far (what the
    sink took in full, less the header: events still buffered when the output broke were not printed; with
    the pcapng stream alone on standard output, the frames its sink took in full)."""
    stacks = StackStage(coll.maps["stacks"].stack_trace, kernel.kallsyms) if config.output.stack else None
    if config.output.raw is not None:  # the records as they come, nothing decoded (rawfile.py)
        limit = LimitStage(config.output.limit_lines) if config.output.limit_lines else None
        stages: list[Stage] = [s for s in (limit, stacks) if s is not None]
        assert coll.spec.btf is not None
        meta = rawfile.recording_meta(config.output, plan.live_names(), reasons)
        raw = rawfile.RawOutput(FileSink(config.output.raw, "output-raw"), meta, coll.spec.btf.encode(),
                                config.output.stack, plan.live_names)  # fmt: skip
        pipeline = Pipeline(schema, stages, [raw])
        return pipeline, limit, lambda: pipeline.events
    names = Symbols(kernel.kallsyms, plan.live_names(), reasons, schema.probe_kind("index"))
    compiled = (skb_metadata(config, kernel.spec), skb_metadata(config, kernel.spec, "xdp"))
    fields = [f for m in compiled if m is not None for f in m[1]]
    rewrites = tc_chain.stage(plan.probes, schema.probe_kind("index"))
    extra = [rewrites] if rewrites is not None else []
    return build_pipeline(config, names, schema, sink, stacks, fields, pcap_sink, extra)


def build_pipeline(
    config: Config,
    names: Names,
    schema: Schema,
    sink: Sink,
    stacks: Stage | None,
    metadata: Sequence[MetadataField] = (),
    pcap_sink: Sink | None = None,
    extra: Sequence[Stage] = (),
) -> tuple[Pipeline, LimitStage | None, Callable[[], int]]:
    """:func:`make_pipeline` once the numbers have their names (a live run's kernel, or a raw file's record of
    it: ``pwru print``); ``stacks`` fills ``batch.stacks``; ``extra`` stages come after it (the tc chain's
    rewrites)."""
    stages: list[Stage] = []
    dump_stage = dumps.stage(config)
    if dump_stage is not None:
        stages.append(dump_stage)
    map_stage = bpfmap.stage(config)
    if map_stage is not None:
        stages.append(map_stage)
    limit = LimitStage(config.output.limit_lines) if config.output.limit_lines else None
    if limit is not None:
        stages.append(limit)
    if stacks is not None:
        stages.append(stacks)
    stages.extend(extra)
    if config.output.journey:  # one unit per journey, no header
        journeys: list[Output] = [JourneyOutput(config.output, names, sink)]
        if pcap_sink is not None:
            journeys.append(PcapOutput(pcap_sink, names, config.output.pcap_snaplen))
        return Pipeline(schema, stages, journeys), limit, lambda: sink.delivered
    formatter = make_formatter(config, names, NetnsNames() if config.output.netns_names else None, metadata)
    header_units = 1 if formatter.header() else 0
    if not config.output.events:  # a summary alone: no event output (the summary writes to the sink itself)
        return Pipeline(schema, stages, []), limit, lambda: 0
    outputs: list[Output] = []
    lines = not (config.output.pcap_to_stdout and config.output.file is None)  # else the lines go nowhere
    if lines:
        outputs.append(LineOutput(formatter, sink))
    if pcap_sink is not None:
        outputs.append(PcapOutput(pcap_sink, names, config.output.pcap_snaplen))
        if not lines:  # frames, less the section header
            return Pipeline(schema, stages, outputs), limit, lambda: max(0, pcap_sink.delivered - 1)
    return Pipeline(schema, stages, outputs), limit, lambda: max(0, sink.delivered - header_units)


def _warn_unframed(pipeline: Pipeline, coll: Collection) -> None:
    """--output-pcap: say how many events reached the outputs without their packet (the ring buffer was full when
    the packet record was sent; the kernel's count, pcap_lost, also holds those whose events were lost)."""
    for out in pipeline.outputs:
        if isinstance(out, PcapOutput) and out.unframed:
            lost = coll.maps["pcap_lost"].lookup_u64(0) or 0
            log.warning("--output-pcap: %d events have no frame (their packets did not fit the ring)", out.unframed)
            log.debug("--output-pcap: %d packet records lost in the kernel", lost)


def _read(
    run: Loaded,
    pipeline: Pipeline,
    limit: LimitStage | None,
    stopper: Stopper,
    t_start: float,
    tick: Callable[[], None] | None = None,
) -> None:
    reader = RingBufReader(run.coll.maps["events"])
    try:
        if stopper.wakeup_fd >= 0:
            reader.watch(stopper.wakeup_fd)  # a stop signal ends the wait at once
        run.kernel.kallsyms_loaded()  # ready means an event happening now is printed now
        pipeline.start()
        print("Listening for events..", file=sys.stderr)
        log.debug("ready after %.3f s", time.monotonic() - t_start)
        run.ready.signal()
        read_loop(reader, pipeline, lambda: stopper.stopped, limit, pipeline.schema.layout("event").size, tick=tick)
    finally:
        reader.close()


def _finish(
    run: Loaded,
    att: Attachment,
    pipeline: Pipeline | None,
    printed: Callable[[], int],
    attach_time: float,
    reporter: summary.Reporter | None = None,
) -> None:
    config, coll = run.config, run.coll
    t_detach = time.monotonic()
    att.close()
    detach_time = time.monotonic() - t_detach
    try:
        if pipeline is not None:
            pipeline.close()
        if reporter is not None:
            reporter.final()  # after the detach: the counts are final; after the events (their sink closed)
    finally:
        lost = coll.maps["lost"].lookup_u64(0) or 0
        if pipeline is not None:
            _warn_unframed(pipeline, coll)
        untracked = ""
        if config.tracking.skb:
            full = coll.maps["track_full"].lookup_u64(0) or 0
            untracked = f", {full} untracked" + (
                " (the tracked set was full: raise --filter-track-skb-max)" if full else ""
            )
            tracking.report_unfreed(coll.maps["tracked"], att)
        shown = f"{printed()} events " + ("recorded" if config.output.raw is not None else "printed")
        if config.output.journey:
            shown = f"{printed()} journeys printed ({pipeline.events if pipeline is not None else 0} events)"
        print(
            f"pwru: {shown}, {lost} lost{untracked}; attached {len(att.attached)} in "
            f"{attach_time:.2f} s, detached in {detach_time:.2f} s",
            file=sys.stderr,
        )
        run.ready.remove()


class RecordSource(Protocol):
    """Where the read loop takes records from (the ring buffer reader)."""

    size: int  # bytes the source can hold at once

    def read_batch(self, limit: int) -> list[bytes]: ...

    def wait(self, timeout: float) -> object: ...


def read_loop(
    source: RecordSource,
    pipeline: Pipeline,
    stopped: Callable[[], bool],
    limit: LimitStage | None,
    record_size: int,
    batch: int = READ_BATCH,
    tick: Callable[[], None] | None = None,
) -> None:
    """Feed records until stopped or the line limit is reached. After a stop, what the source already holds is
    still delivered, but at most one full source's worth (``source.size // record_size`` records), so a writer
    that keeps filling it cannot hold the exit back. ``tick`` is called at the start of every turn (at least five
    times a second: the source is waited on for 0.2 s at most), for work on a clock (--summary-interval)."""
    drain = -1  # after a stop: records still to deliver (-1: running)
    while drain != 0:
        if tick is not None:
            tick()
        if drain < 0 and stopped():
            drain = max(1, source.size // record_size)
        records = source.read_batch(batch)
        if not records:
            if drain >= 0:
                break
            pipeline.idle()
            source.wait(0.2)
            continue
        if drain > 0:
            if len(records) > drain:
                records = records[:drain]
            drain -= len(records)
        pipeline.feed(records)
        if limit is not None and limit.done:
            break
