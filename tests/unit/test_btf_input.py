"""--kernel-btf and BTF files: only a regular file of bounded size is read; anything else is one clear line.

``--kernel-btf /dev/zero`` used to read until the OOM killer came, and a FIFO blocked pwru forever. The tests
that run pwru or the reader do it in a child process under an address-space limit and a timeout, so that a
regression fails the test instead of taking the machine down.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pwru.config import Config, FlagError, KernelConfig
from pwru.ebpf import btf, elf
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.resolve import check_existing_file, resolve

SRC = str(Path(__file__).resolve().parents[2] / "src")
CHILD_MEMORY = 1 << 30  # far above what pwru needs to print an error, far below what /dev/zero would take
CHILD_SECONDS = 60


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    """``python args...`` with this checkout first on the path, bounded in memory and time."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        env=env,
        preexec_fn=_limit_memory,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "btf.fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    """A sparse file just over the limit (no disk used)."""
    path = tmp_path / "huge.btf"
    with path.open("wb") as f:
        f.truncate(btf.MAX_BTF_SIZE + 1)
    return path


def _cases(fifo: Path, huge: Path, tmp_path: Path) -> dict[str, tuple[str, str]]:
    return {
        "dev-zero": ("/dev/zero", "not a regular file (a character device)"),
        "fifo": (str(fifo), "not a regular file (a FIFO)"),
        "directory": (str(tmp_path), "is a directory"),
        "too-large": (str(huge), f"{btf.MAX_BTF_SIZE + 1} bytes, more than the {btf.MAX_BTF_SIZE >> 20} MiB limit"),
    }


@pytest.mark.parametrize("case", ["dev-zero", "fifo", "directory", "too-large"])
def test_pwru_refuses_kernel_btf(case: str, fifo: Path, huge: Path, tmp_path: Path) -> None:
    path, why = _cases(fifo, huge, tmp_path)[case]
    proc = run_child("-m", "pwru", "--kernel-btf", path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"pwru: --kernel-btf: {path}: {why}\n"
    assert proc.stdout == ""


@pytest.mark.parametrize("case", ["dev-zero", "fifo", "directory", "too-large"])
def test_resolve_refuses_kernel_btf(case: str, fifo: Path, huge: Path, tmp_path: Path) -> None:
    path, why = _cases(fifo, huge, tmp_path)[case]
    with pytest.raises(FlagError) as e:
        resolve(Config(kernel=KernelConfig(kernel_btf=path)))
    assert str(e.value) == f"--kernel-btf: {path}: {why}"


def test_check_existing_file_unreadable_parent(tmp_path: Path) -> None:
    with pytest.raises(FlagError, match=r"no such file"):
        check_existing_file("kernel-btf", str(tmp_path / "missing"))
    with pytest.raises(FlagError, match=r"Not a directory"):
        check_existing_file("kernel-btf", "/dev/null/x")


@pytest.mark.parametrize("case", ["dev-zero", "fifo", "too-large"])
def test_spec_load_refuses(case: str, fifo: Path, huge: Path, tmp_path: Path) -> None:
    """The library itself (Collection takes a --kernel-btf path too): in a child, as it could hang or OOM."""
    path, why = _cases(fifo, huge, tmp_path)[case]
    code = (
        "import sys\nfrom pwru.ebpf import btf\n"
        "try:\n    btf.Spec.load(sys.argv[1])\nexcept btf.BTFError as e:\n    print(e)\n"
    )
    proc = run_child("-c", code, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{path}: {why}\n"


def test_kernel_context_says_why(fifo: Path, tmp_path: Path) -> None:
    """KernelContext is the second line of defence (after resolve), with the same words."""
    with pytest.raises(UserError, match=r"^cannot read kernel BTF /dev/zero: not a regular file \(a character"):
        _ = KernelContext("/dev/zero").spec
    with pytest.raises(UserError, match=r"^cannot read kernel BTF .*btf.fifo: not a regular file \(a FIFO\)$"):
        _ = KernelContext(str(fifo)).spec
    junk = tmp_path / "junk.btf"
    junk.write_bytes(b"not btf at all, not even close")
    with pytest.raises(UserError, match=r"^cannot read kernel BTF .*junk.btf: bad BTF magic"):
        _ = KernelContext(str(junk)).spec


def test_read_regular_file_enforces_the_bound_on_what_is_read(tmp_path: Path) -> None:
    """/proc and /sys files report a size of 0 or a page: the bound applies to the bytes read, too."""
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(btf.BTFError, match=r"^/proc/self/maps: more than the 0 MiB limit$"):
        btf.read_regular_file("/proc/self/maps", 16, btf.BTFError)
    small = tmp_path / "small"
    small.write_bytes(b"x" * 16)
    assert btf.read_regular_file(small, 16, btf.BTFError) == b"x" * 16
    with pytest.raises(btf.BTFError, match=r"more than"):
        btf.read_regular_file(small, 15, btf.BTFError)
    with pytest.raises(FileNotFoundError):
        btf.read_regular_file(tmp_path / "missing", 16, btf.BTFError)


def test_object_load_refuses_non_regular_files(fifo: Path) -> None:
    proc = run_child(
        "-c",
        "import sys\nfrom pwru.ebpf import elf\n"
        "try:\n    elf.ObjectSpec.load(sys.argv[1])\nexcept elf.ELFError as e:\n    print(e)\n",
        str(fifo),
    )
    assert proc.stdout == f"{fifo}: not a regular file (a FIFO)\n", proc.stderr
    assert elf.MAX_OBJECT_SIZE >= btf.MAX_BTF_SIZE
