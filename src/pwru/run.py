"""The run loop: discover, compile the filter, load, attach, read events, print, and leave nothing behind.

Also the two introspection commands, ``--list-backends`` and ``--list-funcs``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from pwru import backends, discovery
from pwru.bpf import object_path
from pwru.config import Config
from pwru.discovery import Target
from pwru.ebpf import btf
from pwru.ebpf.btf import Spec
from pwru.ebpf.collection import Collection
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.kallsyms import Kallsyms
from pwru.ebpf.maps import Map
from pwru.ebpf.ringbuf import RingBufReader
from pwru.ebpf.syscall import BPFError
from pwru.errors import UserError
from pwru.event import KIND_TRACEPOINT, Event, EventDecoder
from pwru.output import make_formatter, open_sink
from pwru.output.names import ProcessNames

log = logging.getLogger("pwru")

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
#: Records taken from the ring buffer per loop turn: bounds the memory a full ring costs user space (its
#: records, their lines and the encoded output exist at once) without adding turns worth measuring.
READ_BATCH = 2048


# --- introspection ---------------------------------------------------------------------------------------


def list_backends(config: Config) -> int:
    for name in backends.NAMES:
        f = backends.feature_for(name)
        reason = f.reason.removeprefix(f"{f.name}: ")
        print(f"{name:<13} {'available' if f.available else 'unavailable: ' + reason}")
    return 0


def list_funcs(config: Config) -> int:
    spec = kernel_spec(config)
    backend = "kprobe-multi" if config.backend == "auto" else config.backend
    if config.backend == "auto":
        backend = backends.choose("auto")
    targets = backends.targets_for(backend, spec, config, modules_of(config))
    for t in targets:
        print(
            f"{backends.display_name(t)} skb={t.skb_pos}"
            + (f" reason={t.reason_pos}" if t.reason_pos else "")
        )
    what = "tracepoint" if backend == "tracepoint" else "function"
    print(f"{len(targets)} {what}{'' if len(targets) == 1 else 's'} ({backend})")
    return 0


# --- shared set-up ----------------------------------------------------------------------------------------


def kernel_spec(config: Config) -> Spec:
    path = Path(config.kernel_btf) if config.kernel_btf else VMLINUX_BTF
    if not path.exists():
        raise UserError(
            f"no kernel BTF at {path}: the kernel needs CONFIG_DEBUG_INFO_BTF=y, or give --kernel-btf FILE"
        )
    try:
        return btf.kernel_btf() if path == VMLINUX_BTF else Spec.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read kernel BTF {path}: {e}") from None


def modules_of(config: Config) -> list[str]:
    if config.all_kmods:
        return btf.module_names()
    missing = [m for m in config.kmods if m not in btf.module_names()]
    if missing:
        raise UserError(f"--kmods: no BTF for module {', '.join(missing)} (is it loaded?)")
    return list(config.kmods)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: Functions through which the kernel runs a BPF program; they sit on top of every stack the program takes.
_BPF_FRAME_PREFIXES = ("bpf_trace_run", "__bpf_trace_", "bpf_trampoline", "__bpf_prog_enter", "bpf_dispatcher")


class Names:
    """Turns an event's numbers into words: kallsyms for functions, the probe table for tracepoints."""

    def __init__(self, ksyms: Kallsyms, probes: list[Target], reasons: dict[int, str], stacks: Map | None):
        self._ksyms = ksyms
        self._probes = [backends.display_name(t) for t in probes]
        self._reasons = reasons
        self._stacks = stacks
        self._procs = ProcessNames()
        self._func_cache: dict[int, str] = {}

    def func_name(self, event: Event) -> str:
        if event.kind == KIND_TRACEPOINT:
            return self._probes[event.addr] if event.addr < len(self._probes) else f"tp#{event.addr}"
        name = self._func_cache.get(event.addr)
        if name is None:
            sym = self._ksyms.lookup(event.addr)
            name = f"{event.addr:#x}" if sym is None else sym.name + (f"[{sym.module}]" if sym.module else "")
            self._func_cache[event.addr] = name
        return name

    def reason_name(self, reason: int) -> str:
        return self._reasons.get(reason, "")

    def symbol(self, addr: int) -> str:
        sym = self._ksyms.lookup(addr)
        if sym is None:
            return f"{addr:#x}"
        mod = f" [{sym.module}]" if sym.module else ""
        return f"{sym.name}+{sym.offset:#x}{mod}"

    def stack(self, stack_id: int) -> list[int]:
        """The kernel stack of an event, starting at the traced function: the frames of pwru's own program and
        of the BPF machinery that called it (``bpf_trace_run*``, trampolines, ``[bpf]`` symbols) are dropped."""
        if self._stacks is None or stack_id < 0:
            return []
        frames = self._stacks.stack_trace(stack_id)
        for i, addr in enumerate(frames):
            sym = self._ksyms.lookup(addr)
            if sym is None or not (sym.module == "bpf" or sym.name.startswith(_BPF_FRAME_PREFIXES)):
                return frames[i:]
        return frames

    def process(self, pid: int, comm: bytes) -> str:
        return self._procs(pid, comm)


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


def _progress_printer(backend: str, total: int) -> backends.Progress:
    """A progress bar on a terminal; one plain line otherwise."""
    tty = sys.stderr.isatty()
    what = "tracepoints" if backend == "tracepoint" else "functions"
    if not tty:
        print(f"Attaching {total} {what} ({backend})...", file=sys.stderr)
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
        sys.stderr.write(
            f"\rAttaching {what} ({backend}) [{'=' * filled}{' ' * (width - filled)}] {done}/{total_}"
        )
        if done == total_:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress


# --- run --------------------------------------------------------------------------------------------------


def constants_of(config: Config, has_pcap: bool) -> dict[str, int]:
    return {
        "cfg_netns": config.filter_netns or 0,
        "cfg_mark": config.filter_mark,
        "cfg_mark_mask": config.filter_mark_mask,
        "cfg_ifindex": config.filter_ifindex or 0,
        "cfg_has_pcap": int(has_pcap),
        "cfg_output_meta": int(config.output_meta),
        "cfg_output_tuple": int(config.output_tuple),
        "cfg_output_stack": int(config.output_stack),
        "cfg_output_caller": int(config.output_caller),
    }


def build_object(config: Config) -> tuple[ObjectSpec, bool]:
    """The kernel program with the pcap filter spliced into its two stubs (L2 and L3)."""
    from pwru.filter import FilterError, compile_filter

    try:
        compiled = compile_filter(config.pcap_filter)
    except FilterError as e:
        raise UserError(str(e)) from None
    spec = ObjectSpec.load(object_path())
    if compiled is not None:
        spec.replace_function("filter_pcap_l2", compiled.to_ebpf("l2", "probe"))
        spec.replace_function("filter_pcap_l3", compiled.to_ebpf("l3", "probe"))
    return spec, compiled is not None


def _verifier_error(e: BPFError) -> UserError:
    tail = e.log_tail(15)
    msg = f"the kernel's verifier refused the program: {e.strerror}"
    if tail:
        msg += "\n" + tail
    return UserError(msg, exit_code=1)


def run(config: Config) -> int:
    if os.geteuid() != 0:
        raise UserError("must run as root (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)", exit_code=1)
    _raise_fd_limit()
    t_start = time.monotonic()
    spec = kernel_spec(config)
    backend = backends.choose(config.backend)
    log.debug("backend %s", backend)
    modules = modules_of(config)
    targets = backends.targets_for(backend, spec, config, modules)
    if not targets:
        raise UserError("no function or tracepoint to trace: check --filter-func", exit_code=1)
    obj, has_pcap = build_object(config)
    ksyms = Kallsyms.load(lazy=True)  # read when a backend or an event first needs a symbol
    reasons = discovery.drop_reasons(spec, modules)
    stopper = Stopper()
    with stopper.installed():
        try:
            coll = Collection(
                obj,
                kernel_btf=spec,
                constants=constants_of(config, has_pcap),
            )
        except BPFError as e:
            raise _verifier_error(e) from None
        try:
            return _run_loaded(config, backend, obj, coll, targets, ksyms, reasons, stopper, t_start)
        finally:
            coll.close()


def _run_loaded(
    config: Config,
    backend: str,
    obj: ObjectSpec,
    coll: Collection,
    targets: list[Target],
    ksyms: Kallsyms,
    reasons: dict[int, str],
    stopper: Stopper,
    t_start: float,
) -> int:
    progress = _progress_printer(backend, len(targets))
    t_attach = time.monotonic()
    try:
        att = backends.attach(backend, coll, targets, progress, lambda: stopper.stopped)
    except BPFError as e:
        raise _verifier_error(e) from None
    attach_time = time.monotonic() - t_attach
    printed = 0
    try:
        if stopper.stopped:
            return 0
        if not att.attached:
            reasons_ = "; ".join(f"{backends.display_name(t)}: {why}" for t, why in att.ignored[:3])
            raise UserError(f"could not attach to anything ({backend}): {reasons_}", exit_code=1)
        what = "tracepoints" if backend == "tracepoint" else "functions"
        print(f"Attached {len(att.attached)} {what} (ignored {len(att.ignored)})", file=sys.stderr)
        for t, why in att.ignored:
            log.debug("ignored %s: %s", backends.display_name(t), why)
        if backend != "tracepoint" or config.output_stack or config.output_caller:
            ksyms.preload()  # function names for the events, read while waiting for the first ones
        probes = targets if backend == "tracepoint" else []
        names = Names(ksyms, probes, reasons, coll.maps.get("stacks") if config.output_stack else None)
        printed = _read_loop(config, obj, coll, names, stopper, t_start)
    finally:
        t_detach = time.monotonic()
        att.close()
        detach_time = time.monotonic() - t_detach
        lost = lost_events(coll)
        print(
            f"pwru: {printed} events printed, {lost} lost; attached {len(att.attached)} in "
            f"{attach_time:.2f} s, detached in {detach_time:.2f} s",
            file=sys.stderr,
        )
        if config.ready_file:
            Path(config.ready_file).unlink(missing_ok=True)
    return 0


def lost_events(coll: Collection) -> int:
    lost = coll.maps["lost"].lookup(0)
    if isinstance(lost, list):
        return sum(int.from_bytes(v[:8], "little") for v in lost)
    return int.from_bytes(lost[:8], "little") if lost else 0


def _read_loop(
    config: Config, obj: ObjectSpec, coll: Collection, names: Names, stopper: Stopper, t_start: float
) -> int:
    """Print events until stopped (then print what the ring buffer already holds) or the line limit.

    Each turn takes up to :data:`READ_BATCH` raw records and formats them with
    :meth:`~pwru.output.Formatter.format_records` (pieces cached by record bytes; no Event per record).
    """
    if obj.btf is None:
        raise UserError(f"{object_path()} has no BTF: rebuild it with `python3 -m pwru.bpf.build`", exit_code=1)
    decoder = EventDecoder(obj.btf)
    formatter = make_formatter(config, names)
    sink = open_sink(config)
    limit = config.output_limit_lines
    printed = 0
    reader = RingBufReader(coll.maps["events"])
    try:
        header = formatter.header()
        if header:
            sink.write_lines([header])
        print("Listening for events..", file=sys.stderr)
        log.debug("ready after %.3f s", time.monotonic() - t_start)
        if config.ready_file:
            Path(config.ready_file).write_text(str(os.getpid()))
        drain = -1  # after a stop: records still to print, at most what a full ring holds (-1: running)
        while drain != 0:
            if drain < 0 and stopper.stopped:
                drain = max(1, reader.size // decoder.size)
            records = reader.read_batch(READ_BATCH)
            if not records:
                if drain >= 0:
                    break
                sink.flush()
                reader.wait(0.2)
                continue
            if drain > 0:
                drain = max(0, drain - len(records))
            if limit and printed + len(records) > limit:
                records = records[: limit - printed]
            sink.write_lines(formatter.format_records(records, decoder))
            printed += len(records)
            if limit and printed >= limit:
                break
    finally:
        sink.close()
        reader.close()
    return printed
