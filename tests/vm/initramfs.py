"""The lab's tiny initramfs: static busybox, the kernel's own 9p/virtio/overlay modules, and ``/init``.

``/init`` loads the modules (in dependency order, worked out on the host from ``modules.dep``; built-in ones
are skipped), mounts the host's ``/`` (9p tag ``hostroot``, read-only) under a tmpfs overlay, puts the
kernel's modules (tag ``modules``) on ``/usr/lib/modules`` and the writable results share (tag ``results``) on
:data:`GUEST_RESULTS`, then ``switch_root``s into the host's ``/bin/sh`` running ``GUEST_RESULTS/job.sh``.
If anything before that fails, it says so on the console and powers the guest off.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.vm.errors import VMError
from tests.vm.kernels import Kernel

#: Where the results share is mounted inside the guest (the job script lives there too).
GUEST_RESULTS = "/pwru-vm"

#: What the initramfs must load to reach the real root; their dependencies come along.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

BUSYBOX = "/bin/busybox"

_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "pwru-vm: init: $*"; echo o > /proc/sysrq-trigger; sleep 10; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
    insmod "/modules/$m" || echo "pwru-vm: init: insmod $m failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \\
    || fail "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
    || fail "cannot mount the overlay root"
mkdir -p /newroot/usr/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose modules /newroot/usr/lib/modules \\
    || fail "cannot mount the modules share"
mkdir -p /newroot{GUEST_RESULTS}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot{GUEST_RESULTS} \\
    || fail "cannot mount the results share"
[ -f /newroot{GUEST_RESULTS}/job.sh ] || fail "no job script in the results share"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh {GUEST_RESULTS}/job.sh
"""


def _parse_modules_dep(modules_dir: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    return deps


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def boot_module_order(modules_dir: Path, wanted: tuple[str, ...] = BOOT_MODULES) -> list[str]:
    """Paths (relative to ``modules_dir``) to insmod, dependencies first; built-in modules are left out."""
    deps = _parse_modules_dep(modules_dir)
    by_name = {_module_name(p): p for p in deps}
    builtin_text = (modules_dir / "modules.builtin").read_text() if (modules_dir / "modules.builtin").exists() else ""
    builtin = {_module_name(p) for p in builtin_text.split()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists the full closure; the last entries are the deepest, so load those first.
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise VMError(f"module {name} is neither built in nor in modules.dep of {modules_dir}")
        visit(by_name[key])
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        return proc.stdout
    return data


def _check_busybox() -> None:
    if not os.path.isfile(BUSYBOX):
        raise VMError("kernel lab needs the static busybox at /bin/busybox: apt-get install busybox-static")
    proc = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True, check=False)
    if "not a dynamic executable" not in proc.stdout + proc.stderr:
        raise VMError("/bin/busybox is dynamically linked; the initramfs needs busybox-static")
    if shutil.which("cpio") is None:
        raise VMError("kernel lab needs cpio on the host: apt-get install cpio")


def build_initramfs(kernel: Kernel) -> Path:
    """The initramfs for ``kernel``, built once and cached next to the kernel (rebuilt when /init changes)."""
    order = boot_module_order(kernel.modules_dir)
    stamp = hashlib.sha256((_INIT + "\n".join(order)).encode()).hexdigest()[:12]
    target = kernel.tree / f"initramfs-{stamp}.cpio.gz"
    if target.is_file():
        return target
    _check_busybox()
    with tempfile.TemporaryDirectory(prefix="initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot"):
            (root / d).mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        names = []
        for rel in order:
            name = _module_name(rel) + ".ko"
            (root / "modules" / name).write_bytes(_read_module(kernel.modules_dir / rel))
            names.append(name)
        (root / "modules" / "order").write_text("\n".join(names) + "\n")
        init = root / "init"
        init.write_text(_INIT)
        init.chmod(0o755)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        proc = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            input=("\n".join(files) + "\n").encode(),
            cwd=root,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise VMError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
        partial = target.with_suffix(".partial")
        partial.write_bytes(gzip.compress(proc.stdout, compresslevel=6))
        partial.rename(target)
    for old in kernel.tree.glob("initramfs-*.cpio.gz"):
        if old != target:
            old.unlink(missing_ok=True)
    return target
