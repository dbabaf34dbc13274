"""Stock Debian kernels for the kernel lab: fetched through apt with private state, cached on disk.

Each supported kernel line maps to one Debian suite. The newest ABI of the generic ``amd64`` flavour is picked
by ``apt-cache`` on package lists kept in a temporary directory (the machine's own apt sources, lists and
caches are never touched), downloaded with ``apt-get download``, unpacked with ``dpkg-deb -x`` and indexed
with ``depmod``. A cached kernel is reused until a refresh is asked for.

Cache layout (``$PWRU_VM_CACHE``, default ``~/.cache/pwru-vm``)::

    kernels/<line>/kernel.json           which package/ABI is current for the line
    kernels/<line>/<kver>/boot/vmlinuz-<kver>
    kernels/<line>/<kver>/lib/modules/<kver>/...   (depmod'ed; 6.12's usr/lib/modules moved here)
    kernels/<line>/<kver>/initramfs-<hash>.cpio.gz built by :mod:`tests.vm.initramfs`
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.vm.errors import VMError

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class KernelLine:
    """A kernel series the lab can boot, and what we expect it to allow."""

    line: str
    suite: str
    #: pwru backends this stock kernel supports (the guest tests check exactly this set).
    backends: tuple[str, ...]


KERNEL_LINES: dict[str, KernelLine] = {
    "5.10": KernelLine("5.10", "bullseye", ("kprobe", "fentry", "tracepoint")),
    "6.1": KernelLine("6.1", "bookworm", ("kprobe", "fentry", "tracepoint")),
    "6.12": KernelLine("6.12", "trixie", ("kprobe-multi", "kprobe", "fentry", "tracepoint")),
}

#: Every backend a guest test knows how to probe.
ALL_BACKENDS = ("kprobe-multi", "kprobe", "fentry", "tracepoint")


@dataclass(frozen=True)
class Kernel:
    """One unpacked, depmod'ed kernel in the cache."""

    line: str
    kver: str
    package: str
    version: str
    root: str
    fetched_at: float
    fetch_seconds: float

    @property
    def tree(self) -> Path:
        """The unpacked package (``boot/``, ``lib/modules/``)."""
        return Path(self.root)

    @property
    def vmlinuz(self) -> Path:
        return self.tree / "boot" / f"vmlinuz-{self.kver}"

    @property
    def modules_root(self) -> Path:
        """The directory shared with the guest as its ``/usr/lib/modules``."""
        return self.tree / "lib" / "modules"

    @property
    def modules_dir(self) -> Path:
        return self.modules_root / self.kver


def cache_dir() -> Path:
    """The lab's cache directory (``$PWRU_VM_CACHE`` or ``~/.cache/pwru-vm``)."""
    return Path(os.environ.get("PWRU_VM_CACHE") or Path.home() / ".cache" / "pwru-vm")


def line_of(name: str) -> KernelLine:
    """The :class:`KernelLine` for ``"5.10"``, ``"6.1"`` or ``"6.12"``; a clear error otherwise."""
    try:
        return KERNEL_LINES[name]
    except KeyError:
        raise VMError(f"unknown kernel line {name!r}; known: {', '.join(KERNEL_LINES)}") from None


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise VMError(
            f"kernel lab needs {', '.join(missing)} on the host; install the Debian packages "
            "qemu-system-x86 busybox-static cpio kmod xz-utils (see tests/vm/README.md)"
        )


class _PrivateApt:
    """apt-get/apt-cache with sources, lists and caches in a temporary directory."""

    def __init__(self, suite: str, workdir: Path) -> None:
        self.workdir = workdir
        sources = workdir / "sources.list"
        sources.write_text(
            f"deb [signed-by={KEYRING}] {DEBIAN_MIRROR} {suite} main\n"
            f"deb [signed-by={KEYRING}] {DEBIAN_MIRROR} {suite}-updates main\n"
            f"deb [signed-by={KEYRING}] {DEBIAN_SECURITY} {suite}-security main\n"
        )
        lists = workdir / "lists"
        (lists / "partial").mkdir(parents=True)
        cache = workdir / "cache"
        (cache / "archives" / "partial").mkdir(parents=True)
        self.options = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={lists}",
            "-o", f"Dir::Cache={cache}",
            "-o", "Dir::Etc::Preferences=/dev/null",
            "-o", "Dir::Etc::PreferencesParts=/dev/null",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Architecture=amd64",
            "-o", "APT::Architectures::=amd64",
        ]  # fmt: skip

    def run(self, tool: str, *args: str) -> str:
        proc = subprocess.run(
            [tool, *self.options, *args], cwd=self.workdir, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise VMError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout


def _natural_key(text: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def image_packages(line: str, search_output: str) -> list[str]:
    """The generic amd64 image packages of ``line`` in ``apt-cache search`` output, newest first.

    Debian names them ``linux-image-5.10.0-NN-amd64``, ``linux-image-6.1.0-NN-amd64`` and
    ``linux-image-6.12.NN+debNN-amd64``; the ABI number grows with each upload, so a natural sort of the names
    orders them. Meta packages, ``-unsigned``, ``-dbg``, cloud and rt flavours are left out.
    """
    pattern = re.compile(rf"^linux-image-{re.escape(line)}(\.0-[0-9]+|\.[0-9]+\+deb[0-9]+)-amd64$")
    names = [ln.split(" ", 1)[0] for ln in search_output.splitlines()]
    candidates = sorted({n for n in names if pattern.match(n)}, key=_natural_key, reverse=True)
    if not candidates:
        raise VMError(f"no linux-image-{line}.*-amd64 package found in the Debian lists")
    return candidates


def _load_current(line: str) -> Kernel | None:
    meta = cache_dir() / "kernels" / line / "kernel.json"
    try:
        data = json.loads(meta.read_text())
        kernel = Kernel(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not (kernel.vmlinuz.is_file() and (kernel.modules_dir / "modules.dep").is_file()):
        return None
    return kernel


def cached_kernels() -> list[Kernel]:
    """The kernels already in the cache, one per line."""
    return [k for k in (_load_current(line) for line in KERNEL_LINES) if k is not None]


def _normalise_tree(tree: Path, kver: str) -> None:
    """Put modules under ``lib/modules/<kver>`` (trixie ships them in ``usr/lib/modules``) and run depmod."""
    target = tree / "lib" / "modules" / kver
    if not target.is_dir():
        usr = tree / "usr" / "lib" / "modules" / kver
        if not usr.is_dir():
            raise VMError(f"no modules directory for {kver} in the package")
        target.parent.mkdir(parents=True, exist_ok=True)
        usr.rename(target)
    vmlinuz = tree / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise VMError(f"package has no boot/vmlinuz-{kver}")
    proc = subprocess.run(["depmod", "-b", str(tree), kver], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VMError(f"depmod -b {tree} {kver} failed:\n{proc.stderr[-2000:]}")


def fetch_kernel(name: str, *, refresh: bool = False, log: bool = False) -> Kernel:
    """The cached kernel of line ``name``, fetched when absent (or when ``refresh`` asks for the newest).

    With ``refresh``, the Debian lists are read again and a newer ABI, if any, replaces the current one.
    """
    kline = line_of(name)
    if not refresh:
        current = _load_current(kline.line)
        if current is not None:
            return current
    _need("apt-get", "apt-cache", "dpkg-deb", "depmod")
    started = time.monotonic()
    base = cache_dir() / "kernels" / kline.line
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apt-", dir=base) as tmp:
        apt = _PrivateApt(kline.suite, Path(tmp))
        if log:
            print(f"[vm] {kline.line}: apt-get update ({kline.suite})", flush=True)
        apt.run("apt-get", "-q", "update")
        packages = image_packages(
            kline.line, apt.run("apt-cache", "search", "--names-only", f"^linux-image-{kline.line}")
        )
        current = _load_current(kline.line)
        errors: list[str] = []
        for package in packages[:4]:  # the newest that the mirror really serves
            kver = package.removeprefix("linux-image-")
            if current is not None and current.kver == kver:
                return current
            if log:
                print(f"[vm] {kline.line}: downloading {package}", flush=True)
            try:
                apt.run("apt-get", "-q", "download", package)
                break
            except VMError as err:
                errors.append(str(err))
        else:
            raise VMError(f"no {kline.line} kernel package could be downloaded:\n" + "\n".join(errors))
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise VMError(f"apt-get download {package} left {len(debs)} .deb files")
        version = debs[0].name.split("_")[1].replace("%3a", ":")
        tree = base / kver
        if tree.exists():
            shutil.rmtree(tree)
        staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=base))
        try:
            proc = subprocess.run(
                ["dpkg-deb", "-x", str(debs[0]), str(staging)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise VMError(f"dpkg-deb -x {debs[0].name} failed:\n{proc.stderr[-2000:]}")
            _normalise_tree(staging, kver)
            staging.rename(tree)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    kernel = Kernel(
        line=kline.line,
        kver=kver,
        package=package,
        version=version,
        root=str(tree),
        fetched_at=time.time(),
        fetch_seconds=round(time.monotonic() - started, 1),
    )
    (base / "kernel.json").write_text(json.dumps(asdict(kernel), indent=2) + "\n")
    for old in base.iterdir():  # drop older ABIs of this line
        if old.is_dir() and old.name != kver and not old.name.startswith(("apt-", "unpack-")):
            shutil.rmtree(old, ignore_errors=True)
    if log:
        print(f"[vm] {kline.line}: {kver} ready in {kernel.fetch_seconds}s", flush=True)
    return kernel
