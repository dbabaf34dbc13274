"""The kernel one run traces, read once: vmlinux and module BTF, kallsyms, feature probes, module BTF fds.

Everything here is parsed or opened on first use and kept for the run; :meth:`KernelContext.close` releases
the file descriptors it owns (module BTF objects that fentry/fexit/tp_btf loads name).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from pwru import discovery
from pwru.ebpf import btf, features
from pwru.ebpf.btf import Spec
from pwru.ebpf.btf_kernel import btf_fd_of_module
from pwru.ebpf.kallsyms import Kallsyms
from pwru.errors import UserError

VMLINUX_BTF = btf.KERNEL_BTF_DIR / "vmlinux"


class KernelContext:
    """What one run knows about the running kernel. Built and read on the main thread; attach threads only call
    :meth:`module_btf_fd`, which locks."""

    def __init__(self, kernel_btf: str | None = None, kmods: tuple[str, ...] = (), all_kmods: bool = False) -> None:
        self._btf_path = Path(kernel_btf) if kernel_btf else VMLINUX_BTF
        self._kmods = kmods
        self._all_kmods = all_kmods
        self._spec: Spec | None = None
        self._module_specs: dict[str, Spec] = {}
        self._module_fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()
        self._ksyms: Kallsyms | None = None
        self._ksyms_loading: threading.Thread | None = None
        self._features: dict[str, features.Feature] = {}
        self._ftrace: tuple[set[str] | None, BaseException | None] | None = None
        self._ftrace_thread: threading.Thread | None = None
        self._ftrace_lock = threading.Lock()

    # -- BTF --

    @property
    def spec(self) -> Spec:
        """vmlinux BTF (or --kernel-btf), parsed once."""
        if self._spec is None:
            path = self._btf_path
            if not path.exists():
                raise UserError(
                    f"no kernel BTF at {path}: the kernel needs CONFIG_DEBUG_INFO_BTF=y, or give --kernel-btf FILE"
                )
            try:
                # Spec.load reads only a regular file, and at most btf.MAX_BTF_SIZE bytes of it.
                self._spec = btf.kernel_btf() if path == VMLINUX_BTF else Spec.load(path)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read kernel BTF {path}: {_detail(e, path)}") from None
        return self._spec

    def module_names(self) -> list[str]:
        """The modules this run traces: --kmods, or all with BTF for --all-kmods."""
        available = btf.module_names()
        if self._all_kmods:
            return available
        missing = [m for m in self._kmods if m not in available]
        if missing:
            raise UserError(f"--kmods: no BTF for module {', '.join(missing)} (is it loaded?)")
        return list(self._kmods)

    def module_spec(self, name: str) -> Spec:
        """A module's split BTF on top of :attr:`spec`, parsed once."""
        spec = self._module_specs.get(name)
        if spec is None:
            path = btf.KERNEL_BTF_DIR / name
            try:
                spec = Spec.load(path, base=self.spec)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read the BTF of module {name} ({path}): {_detail(e, path)}") from None
            self._module_specs[name] = spec
        return spec

    def modules(self) -> list[tuple[str, Spec]]:
        """``(name, split BTF)`` of every module this run traces (the form discovery takes)."""
        return [(m, self.module_spec(m)) for m in self.module_names()]

    def module_btf_fd(self, module: str | None) -> int | None:
        """The kernel BTF object fd of ``module`` (None for vmlinux), opened once and owned by this context."""
        if module is None:
            return None
        with self._fd_lock:
            fd = self._module_fds.get(module)
            if fd is None:
                fd = self._module_fds[module] = btf_fd_of_module(module)
            return fd

    # -- symbols and features --

    @property
    def kallsyms(self) -> Kallsyms:
        """/proc/kallsyms, read lazily (on the first lookup, or :meth:`Kallsyms.preload`)."""
        if self._ksyms is None:
            self._ksyms = Kallsyms.load(lazy=True)
        return self._ksyms

    def preload_kallsyms(self) -> None:
        """Start reading /proc/kallsyms in the background (most of it is the kernel formatting the text, which
        overlaps the start-up's own work); :meth:`kallsyms_loaded` waits for it."""
        if self._ksyms_loading is None:
            self._ksyms_loading = self.kallsyms.preload()

    def kallsyms_loaded(self) -> None:
        """Wait for :meth:`preload_kallsyms`'s read, so that no event after "ready" waits for the table: the first
        symbol look-up would otherwise stall the reader while the ring fills (130 ms here, seconds under
        emulation)."""
        if self._ksyms_loading is not None:
            self._ksyms_loading.join()

    def preload_filter_functions(self) -> None:
        """Start reading ftrace's ``available_filter_functions`` in the background: the kernel formats tens of
        thousands of lines (0.8 s of a 9 s start under emulation), which then overlaps BTF parsing and
        discovery; :meth:`filter_functions` waits for it."""
        with self._ftrace_lock:
            if self._ftrace_thread is None and self._ftrace is None:
                self._ftrace_thread = threading.Thread(target=self._read_ftrace, name="ftrace-functions", daemon=True)
                self._ftrace_thread.start()

    def _read_ftrace(self) -> None:
        try:
            self._ftrace = (discovery.read_filter_functions(), None)
        except BaseException as e:  # handed to the caller of filter_functions, never lost on the thread
            self._ftrace = (None, e)

    def filter_functions(self) -> set[str] | None:
        """ftrace's ``available_filter_functions`` (None when unreadable), read once: the preload's result, or
        read now."""
        with self._ftrace_lock:
            thread = self._ftrace_thread
        if thread is not None:
            thread.join()
        with self._ftrace_lock:
            if self._ftrace is None:
                self._read_ftrace()
            assert self._ftrace is not None
            names, error = self._ftrace
        if error is not None:
            raise error
        return names

    def feature(self, name: str, probe: Callable[[], features.Feature]) -> features.Feature:
        """The result of feature probe ``probe`` (named ``name``), run once per context."""
        f = self._features.get(name)
        if f is None:
            f = self._features[name] = probe()
        return f

    def close(self) -> None:
        """Close the module BTF fds this context opened; idempotent."""
        with self._fd_lock:
            fds, self._module_fds = list(self._module_fds.values()), {}
        for fd in fds:
            os.close(fd)


def _detail(e: Exception, path: Path) -> str:
    """The error's text without the path the message around it names already."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return text.removeprefix(f"{path}: ")
