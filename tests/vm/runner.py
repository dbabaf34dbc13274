"""Boot a stock kernel under QEMU (TCG) and run one command inside it as root.

The guest's root file system is the host's own ``/`` (read-only 9p under a tmpfs overlay), so the command sees
the same repository, Python and virtual environment at the same paths; it runs in the caller's working
directory with the caller's ``PATH``. A writable 9p share (``results_dir`` on the host, :data:`GUEST_RESULTS`
in the guest) carries files back. The guest powers itself off when the command ends; the host kills QEMU
after ``timeout`` seconds regardless.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm.errors import VMError
from tests.vm.initramfs import GUEST_RESULTS, build_initramfs
from tests.vm.kernels import Kernel, fetch_kernel

QEMU = "qemu-system-x86_64"
START_MARK = "PWRU-VM-START"
EXIT_MARK = "PWRU-VM-EXIT"

#: Host environment variables handed to the guest command (plus every ``PWRU_*``).
PASSED_ENV = (
    "PATH",
    "HOME",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "LANG",
    "LC_ALL",
    "TZ",
)

DEFAULT_MEMORY = os.environ.get("PWRU_VM_MEMORY", "2G")
DEFAULT_SMP = int(os.environ.get("PWRU_VM_SMP", "2"))

_JOB = """set -u
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
{run_tmpfs}
mount -t debugfs debugfs /sys/kernel/debug
[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up 2>/dev/null || busybox ip link set lo up
hostname pwru-vm
ulimit -l unlimited
{exports}
cd {cwd} || {{ echo "pwru-vm: no directory {cwd} in the guest"; echo o > /proc/sysrq-trigger; }}
echo "{start} $(uname -r)"
( {command} )
rc=$?
echo "$rc" > {results}/exit_code
echo "{exit} $rc"
sync
echo o > /proc/sysrq-trigger
# Wait for the power-off without touching the file system (the 9p devices are going away).
while :; do :; done
"""


@dataclass
class VMResult:
    """What one guest run produced."""

    kernel: Kernel
    #: The guest command's exit status; None when it never finished (boot failure, timeout).
    exit_code: int | None
    #: Everything the guest wrote on its serial console (kernel messages and the command's output).
    console: str
    #: Host directory that was the guest's writable results share (``console.log`` is written there live).
    results_dir: Path
    timed_out: bool = False
    #: Seconds from QEMU start to the command starting, command run, and command end to QEMU exit.
    boot_seconds: float | None = None
    job_seconds: float | None = None
    shutdown_seconds: float | None = None
    total_seconds: float = 0.0
    qemu_cmdline: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def timings(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}s"

        return (
            f"boot {f(self.boot_seconds)}, job {f(self.job_seconds)}, "
            f"shutdown {f(self.shutdown_seconds)}, total {f(self.total_seconds)}"
        )


def check_host() -> None:
    """Raise :class:`VMError` naming what is missing for booting guests on this host."""
    if shutil.which(QEMU) is None:
        raise VMError(
            f"{QEMU} not found: install the Debian packages qemu-system-x86 busybox-static cpio kmod "
            "xz-utils (or set PWRU_VM=0 to skip the kernel lab)"
        )


def guest_env(extra: Mapping[str, str] | None, kernel: Kernel) -> dict[str, str]:
    """The environment of the guest command: basics from the host, ``PWRU_*``, lab markers, then ``extra``."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PWRU_")})
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        {
            "TERM": "dumb",
            "USER": "root",
            "PWRU_VM_GUEST": "1",
            "PWRU_VM_KERNEL": kernel.line,
            "PWRU_VM_KVER": kernel.kver,
            "PWRU_VM_RESULTS": GUEST_RESULTS,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra or {})
    return env


def _job_script(command: Sequence[str] | str, cwd: str, env: Mapping[str, str]) -> str:
    cmd = command if isinstance(command, str) else shlex.join(command)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    # A fresh /run (network namespaces live in /run/netns) unless the work tree itself is under it.
    under_run = cwd == "/run" or cwd.startswith("/run/")
    return _JOB.format(
        run_tmpfs="" if under_run else "mount -t tmpfs tmpfs /run",
        exports=exports,
        cwd=shlex.quote(cwd),
        command=cmd,
        results=GUEST_RESULTS,
        start=START_MARK,
        exit=EXIT_MARK,
    )


def qemu_command(kernel: Kernel, initramfs: Path, results_dir: Path, memory: str, smp: int) -> list[str]:
    """The QEMU command line for one guest run."""
    append = "console=ttyS0,115200 panic=-1 loglevel=4 mitigations=off rdinit=/init"
    append += " " + os.environ.get("PWRU_VM_APPEND", "")
    return [
        QEMU,
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", str(smp), "-m", memory,
        "-display", "none", "-serial", "stdio", "-monitor", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", append,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={kernel.modules_root},mount_tag=modules,security_model=none,readonly=on",
        "-virtfs", f"local,path={results_dir},mount_tag=results,security_model=none",
    ]  # fmt: skip


def run_in_vm(
    kernel: str | Kernel,
    command: Sequence[str] | str,
    timeout: float = 600.0,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    memory: str = DEFAULT_MEMORY,
    smp: int = DEFAULT_SMP,
    on_line: Callable[[str], None] | None = None,
) -> VMResult:
    """Boot ``kernel`` (a line such as ``"6.1"``, fetched if needed) and run ``command`` in it as root.

    ``command`` is an argv list or a shell string; it runs in ``cwd`` (default: the current directory) with
    :func:`guest_env`. ``results_dir`` (default: a new temporary directory) is writable from the guest at
    ``$PWRU_VM_RESULTS``. ``on_line`` sees each console line as it arrives. Never raises for guest failures:
    look at ``exit_code``/``timed_out``; raises :class:`VMError` when the host cannot run guests at all.
    """
    check_host()
    k = kernel if isinstance(kernel, Kernel) else fetch_kernel(kernel)
    initramfs = build_initramfs(k)
    workdir = str(Path(cwd) if cwd is not None else Path.cwd())
    results = Path(results_dir) if results_dir is not None else Path(tempfile.mkdtemp(prefix="pwru-vm-"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "exit_code").unlink(missing_ok=True)
    (results / "job.sh").write_text(_job_script(command, workdir, guest_env(env, k)))
    argv = qemu_command(k, initramfs, results, memory, smp)

    lines: list[str] = []
    marks: dict[str, float] = {}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    console_log = (results / "console.log").open("w", buffering=1)

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            now = time.monotonic()
            if line.startswith(START_MARK):
                marks.setdefault("start", now)
            elif line.startswith(EXIT_MARK):
                marks.setdefault("exit", now)
            lines.append(line)
            console_log.write(line + "\n")
            if on_line is not None:
                on_line(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ended = time.monotonic()
    thread.join(timeout=5)

    exit_code: int | None = None
    try:
        exit_code = int((results / "exit_code").read_text().strip())
    except (OSError, ValueError):
        for line in reversed(lines):  # the console marker, should the share write have been lost
            if line.startswith(EXIT_MARK):
                parts = line.split()
                exit_code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                break
    if timed_out:
        lines.append(f"pwru-vm: host timeout after {timeout:.0f}s, QEMU killed")
    if timed_out:
        console_log.write(f"pwru-vm: host timeout after {timeout:.0f}s, QEMU killed\n")
    console_log.close()
    start, stop = marks.get("start"), marks.get("exit")
    return VMResult(
        kernel=k,
        exit_code=exit_code,
        console="\n".join(lines),
        results_dir=results,
        timed_out=timed_out,
        boot_seconds=None if start is None else start - started,
        job_seconds=None if start is None or stop is None else stop - start,
        shutdown_seconds=None if stop is None else ended - stop,
        total_seconds=ended - started,
        qemu_cmdline=argv,
    )
