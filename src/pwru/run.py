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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from pwru import backends, discovery, flags, netfilter, tracking
from pwru.bpf import object_path
from pwru.config import Config, FlagError
from pwru.ebpf.collection import Collection
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.ringbuf import RingBufReader
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.output import make_formatter, open_sink
from pwru.pipeline import LineOutput, Pipeline
from pwru.probes import Attachment, Plan, Probe, Progress, execute
from pwru.records import Schema
from pwru.stages import LimitStage, StackStage, Stage
from pwru.symbols import Symbols

if TYPE_CHECKING:
    from pwru.ebpf.asm import Instruction
    from pwru.ebpf.btf import Spec
    from pwru.filter import CompiledFilter, Link, SkbLayout

log = logging.getLogger("pwru")

#: Records taken from the ring buffer per loop turn: bounds the memory a full ring costs user space (its
#: records, their lines and the encoded output exist at once) without adding turns worth measuring.
READ_BATCH = 2048
#: How the progress and summary lines name each kind of probe (``Probe.kind``).
KIND_NOUNS = {"func": "functions", "tracepoint": "tracepoints", "nf_hook": "netfilter hooks",
              "bpf_prog": "BPF programs", "helper": "helpers"}  # fmt: skip


def kernel_context(config: Config) -> KernelContext:
    k = config.kernel
    return KernelContext(k.kernel_btf, k.kmods, k.all_kmods)


# --- introspection ---------------------------------------------------------------------------------------


def list_backends(config: Config) -> int:
    kernel = kernel_context(config)
    for name in backends.NAMES:
        f = backends.feature_for(name, kernel)
        reason = f.reason.removeprefix(f"{f.name}: ")
        print(f"{name:<13} {'available' if f.available else 'unavailable: ' + reason}")
    return 0


def list_funcs(config: Config) -> int:
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


class Stopper:
    """SIGINT/SIGTERM set a flag the loops check; nothing is torn down inside a signal handler."""

    def __init__(self) -> None:
        self.stopped = False
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.stopped = True
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[Stopper]:
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _kinds(plan: Plan) -> list[str]:
    """The kinds of probe in the plan, in plan order."""
    return list(dict.fromkeys(p.kind for p in plan.probes))


def counted(plan: Plan, probes: list[Probe] | None = None) -> str:
    """``30 tracepoints and 40 netfilter hooks``: ``probes`` (the whole plan by default) by the plan's kinds."""
    chosen = plan.probes if probes is None else probes
    return " and ".join(f"{sum(p.kind == k for p in chosen)} {KIND_NOUNS[k]}" for k in _kinds(plan))


def _progress_printer(plan: Plan, backend: str) -> Progress:
    """A progress bar on a terminal; one plain line otherwise."""
    tty = sys.stderr.isatty()
    what = " and ".join(KIND_NOUNS[k] for k in _kinds(plan))
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
    return spec, {"cfg_has_pcap": int(compiled is not None), **spliced}


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


def schema_of(obj: ObjectSpec) -> Schema:
    if obj.btf is None:
        raise UserError(f"{object_path()} has no BTF: rebuild it with `python3 -m pwru.bpf.build`", exit_code=1)
    return Schema(obj.btf)


# --- run --------------------------------------------------------------------------------------------------


def run(config: Config) -> int:
    if os.geteuid() != 0:
        raise UserError("must run as root (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)", exit_code=1)
    _raise_fd_limit()
    t_start = time.monotonic()
    kernel = kernel_context(config)
    try:
        backend = backends.choose(config.kernel.backend, kernel)
        log.debug("backend %s", backend)
        targets = backends.skb_targets(backend, kernel, config.filter.func_allowed)
        nf_probes = netfilter.run_probes(config, backend, kernel)
        if not targets and not nf_probes:
            raise UserError("no function or tracepoint to trace: check --filter-func", exit_code=1)
        tracking.check_non_skb_funcs(config, backend, kernel)
        obj, spliced = build_object(config, kernel.spec)
        schema = schema_of(obj)
        for name in tracking.SIZED_MAPS:
            obj.maps[name].max_entries = config.tracking.max_entries
        plan = Plan()
        skb_probes, track_probes = tracking.probes(
            config, backend, kernel, backends.skb_probes(backend, targets, set(obj.programs), kernel)
        )
        plan.add(skb_probes)
        plan.add(nf_probes)
        plan.add(track_probes)
        reasons = discovery.drop_reasons(kernel.spec, kernel.modules())
        stopper = Stopper()
        with stopper.installed():
            constants = flags.constants(config) | spliced
            coll = Collection(obj, kernel_btf=kernel.spec, constants=constants)
            try:
                return _run_loaded(config, backend, kernel, coll, plan, schema, reasons, stopper, t_start)
            finally:
                coll.close()
    finally:
        kernel.close()


def _run_loaded(
    config: Config,
    backend: str,
    kernel: KernelContext,
    coll: Collection,
    plan: Plan,
    schema: Schema,
    reasons: dict[int, str],
    stopper: Stopper,
    t_start: float,
) -> int:
    progress = _progress_printer(plan, backend)
    t_attach = time.monotonic()
    att = execute(plan, coll, kernel, progress, lambda: stopper.stopped)
    attach_time = time.monotonic() - t_attach
    pipeline: Pipeline | None = None
    try:
        if stopper.stopped:
            return 0
        shown = [p for p in att.attached if p.shows]
        if not shown:
            why = "; ".join(f"{p.display_name}: {reason}" for p, reason in att.ignored[:3])
            raise UserError(f"could not attach to anything ({backend}): {why}", exit_code=1)
        ignored = [(p, why) for p, why in att.ignored if p.shows]
        print(f"Attached {counted(plan, shown)} (ignored {len(ignored)})", file=sys.stderr)
        for p, why in ignored:
            log.debug("ignored %s: %s", p.display_name, why)
        keepers = sorted({f"{p.display_name}({p.attach.value})" for p in att.attached if not p.shows})
        if keepers:
            log.debug("skb tracking probes: %s", " ".join(keepers))
        for p, why in att.ignored:
            if not p.shows:  # a hole in what tracking sees: say so, it changes what the output means
                log.warning("skb tracking: could not attach %s (%s): %s", p.display_name, p.attach.value, why)
        if backend != "tracepoint" or config.output.stack or config.output.caller:
            kernel.kallsyms.preload()  # function names for the events, read while waiting for the first ones
        pipeline, limit = make_pipeline(config, kernel, coll, plan, schema, reasons)
        _read(config, coll, pipeline, limit, stopper, t_start)
    finally:
        _finish(config, att, coll, pipeline, attach_time)
    return 0


def make_pipeline(
    config: Config, kernel: KernelContext, coll: Collection, plan: Plan, schema: Schema, reasons: dict[int, str]
) -> tuple[Pipeline, LimitStage | None]:
    """The stages and outputs the flags ask for."""
    stages: list[Stage] = []
    limit = LimitStage(config.output.limit_lines) if config.output.limit_lines else None
    if limit is not None:
        stages.append(limit)
    if config.output.stack:
        stages.append(StackStage(coll.maps["stacks"].stack_trace, kernel.kallsyms))
    names = Symbols(kernel.kallsyms, plan.names(), reasons, schema.probe_kind("index"))
    output = LineOutput(make_formatter(config, names), open_sink(config))
    return Pipeline(schema, stages, [output]), limit


def _read(
    config: Config, coll: Collection, pipeline: Pipeline, limit: LimitStage | None, stopper: Stopper, t_start: float
) -> None:
    reader = RingBufReader(coll.maps["events"])
    try:
        pipeline.start()
        print("Listening for events..", file=sys.stderr)
        log.debug("ready after %.3f s", time.monotonic() - t_start)
        if config.ready_file:
            Path(config.ready_file).write_text(str(os.getpid()))
        read_loop(reader, pipeline, lambda: stopper.stopped, limit, pipeline.schema.layout("event").size)
    finally:
        reader.close()


def _finish(config: Config, att: Attachment, coll: Collection, pipeline: Pipeline | None, attach_time: float) -> None:
    t_detach = time.monotonic()
    att.close()
    detach_time = time.monotonic() - t_detach
    try:
        if pipeline is not None:
            pipeline.close()
    finally:
        lost = coll.maps["lost"].lookup_u64(0) or 0
        printed = pipeline.events if pipeline is not None else 0
        untracked = ""
        if config.tracking.skb:
            full = coll.maps["track_full"].lookup_u64(0) or 0
            untracked = f", {full} untracked" + (
                " (the tracked set was full: raise --filter-track-skb-max)" if full else ""
            )
            tracking.report_unfreed(coll.maps["tracked"], att)
        print(
            f"pwru: {printed} events printed, {lost} lost{untracked}; attached {len(att.attached)} in "
            f"{attach_time:.2f} s, detached in {detach_time:.2f} s",
            file=sys.stderr,
        )
        if config.ready_file:
            Path(config.ready_file).unlink(missing_ok=True)


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
) -> None:
    """Feed records until stopped or the line limit is reached. After a stop, what the source already holds is
    still delivered, but at most one full source's worth (``source.size // record_size`` records), so a writer
    that keeps filling it cannot hold the exit back."""
    drain = -1  # after a stop: records still to deliver (-1: running)
    while drain != 0:
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
