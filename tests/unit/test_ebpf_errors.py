"""pwru.ebpf's error model, the BPF_PROG_LOAD attribute for a target program, and the library's isolation
(none of these need a kernel)."""

from __future__ import annotations

import ctypes
import errno
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pwru.ebpf
from pwru.ebpf import btf, prog, syscall
from pwru.ebpf.asm import AsmError
from pwru.ebpf.btf import BTFError
from pwru.ebpf.btf_kernel import KernelBTFNotFound
from pwru.ebpf.collection import ConstantError
from pwru.ebpf.core import CoreError
from pwru.ebpf.elf import ELFError
from pwru.ebpf.errors import BPFError, EBPFError, NotSupported, SyscallError, VerifierError
from pwru.ebpf.kallsyms import KallsymsError
from pwru.ebpf.link import AttachError, AttachNotSupported
from pwru.ebpf.syscall import AttachType, Cmd, ProgType


@pytest.mark.parametrize(
    ("cls", "also"),
    [
        (AsmError, ValueError),
        (BTFError, ValueError),
        (ConstantError, ValueError),
        (CoreError, ValueError),
        (ELFError, ValueError),
        (KallsymsError, ValueError),
        (BPFError, OSError),
        (VerifierError, BPFError),
        (SyscallError, OSError),
        (AttachError, OSError),
        (NotSupported, OSError),
        (KernelBTFNotFound, LookupError),
    ],
)
def test_every_library_error_has_one_root(cls: type[Exception], also: type[Exception]) -> None:
    assert issubclass(cls, EBPFError) and issubclass(cls, also)


def test_bpf_error_is_still_importable_from_syscall() -> None:
    assert syscall.BPFError is BPFError
    e = BPFError(errno.EINVAL, Cmd.MAP_CREATE)
    assert e.errno == errno.EINVAL and e.strerror == "bpf(MAP_CREATE): Invalid argument" and e.log == ""


def test_not_supported_says_what_and_why() -> None:
    e = NotSupported("kprobe", "CONFIG_KPROBES off")
    assert (e.feature, e.why, e.errno) == ("kprobe", "CONFIG_KPROBES off", errno.EOPNOTSUPP)
    assert str(e) == "kprobe: not supported: CONFIG_KPROBES off"
    a = AttachNotSupported(errno.ENOENT, "kprobe", "do_unlinkat", "no kprobe PMU")
    assert isinstance(a, NotSupported) and isinstance(a, AttachError)
    assert (a.errno, a.kind, a.feature, a.why) == (errno.ENOENT, "kprobe", "kprobe", "no kprobe PMU")


def test_a_kernel_without_btf_is_not_supported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(btf, "KERNEL_BTF_DIR", tmp_path)
    btf.kernel_btf.cache_clear()
    try:
        with pytest.raises(NotSupported, match="CONFIG_DEBUG_INFO_BTF") as e:
            btf.kernel_btf()
        assert e.value.feature == "kernel BTF" and isinstance(e.value, OSError)
    finally:
        btf.kernel_btf.cache_clear()


class _FakeKernel:
    """Stands in for bpf(2): records each command's attribute bytes, answers with a real (dummy) fd or
    the errno and log it was told to."""

    def __init__(self, err: int = 0, log: str = "") -> None:
        self.calls: list[tuple[Cmd, bytes]] = []
        self.err, self.log = err, log

    def __call__(self, cmd: Cmd, attr: ctypes.Structure, log: Any = None) -> int:
        self.calls.append((cmd, ctypes.string_at(ctypes.addressof(attr), ctypes.sizeof(attr))))
        if self.err:
            raise BPFError(self.err, cmd, self.log if log is not None else "")
        return os.open(os.devnull, os.O_RDONLY)


_RET0 = bytes.fromhex("b700000000000000" "9500000000000000")
_ATTACH_BTF_ID = syscall.ProgLoadAttr.attach_btf_id.offset
_ATTACH_TARGET = syscall.ProgLoadAttr.attach_target.offset


def test_attach_prog_fd_goes_in_the_shared_union_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (_ATTACH_BTF_ID, _ATTACH_TARGET) == (108, 112)  # include/uapi/linux/bpf.h, BPF_PROG_LOAD
    kernel = _FakeKernel()
    monkeypatch.setattr(syscall, "bpf", kernel)
    kw: dict[str, Any] = {"expected_attach_type": AttachType.TRACE_FEXIT, "attach_btf_id": 77}
    with prog.Program.load(ProgType.TRACING, _RET0, name="t_fexit", attach_prog_fd=0x1234, **kw) as p:
        assert p.attach_btf_id == 77
    ((cmd, raw),) = kernel.calls
    assert cmd == Cmd.PROG_LOAD
    assert raw[_ATTACH_BTF_ID : _ATTACH_BTF_ID + 8] == (77).to_bytes(4, "little") + (0x1234).to_bytes(4, "little")
    assert raw[68:72] == int(AttachType.TRACE_FEXIT).to_bytes(4, "little")  # expected_attach_type
    assert raw[48:56] == b"t_fexit\0"
    with prog.Program.load(ProgType.TRACING, _RET0, attach_btf_obj_fd=0x99, **kw):
        pass
    assert kernel.calls[1][1][_ATTACH_TARGET : _ATTACH_TARGET + 4] == (0x99).to_bytes(4, "little")
    with pytest.raises(ValueError, match="share one slot"):
        prog.Program.load(ProgType.TRACING, _RET0, attach_btf_obj_fd=3, attach_prog_fd=4, **kw)


@pytest.mark.parametrize(
    ("err", "log", "verifier"),
    [
        (errno.EACCES, "0: (bf) r0 = r2\nR2 !read_ok\n", True),
        (errno.EINVAL, "last insn is not an exit or jmp\n", True),
        (errno.EACCES, "", True),  # EACCES is the verifier's own errno
        (errno.EPERM, "", False),  # lockdown: refused before the verifier ran
        (errno.EINVAL, "", False),  # an attribute the kernel does not know
    ],
)
def test_which_load_refusals_are_verifier_errors(
    monkeypatch: pytest.MonkeyPatch, err: int, log: str, verifier: bool
) -> None:
    monkeypatch.setattr(syscall, "bpf", _FakeKernel(err, log))
    with pytest.raises(BPFError) as e:
        prog.Program.load(ProgType.SOCKET_FILTER, _RET0, name="t_refused")
    assert isinstance(e.value, VerifierError) is verifier
    assert e.value.errno == err and e.value.log == log
    if verifier:
        assert isinstance(e.value, VerifierError) and e.value.program == "t_refused"


def test_the_library_imports_nothing_of_pwru_outside_it() -> None:
    """In a fresh interpreter, ``pwru.ebpf`` and every submodule load no other ``pwru`` module and no
    third-party package but pyelftools."""
    names = sorted(m.name for m in pkgutil.walk_packages(pwru.ebpf.__path__, "pwru.ebpf."))
    assert "pwru.ebpf.errors" in names and "pwru.ebpf.collection" in names
    code = (
        "import importlib, sys\n"
        "before = set(sys.modules)\n"
        f"for name in ['pwru.ebpf', *{names!r}]:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    loaded = out.stdout.split()
    assert set(names) <= set(loaded)
    pwru_outside = [m for m in loaded if m.startswith("pwru.") and not m.startswith("pwru.ebpf")]
    assert pwru_outside == []
    tops = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"pwru", "elftools"}
    assert sorted(t for t in tops if not t.startswith("_")) == []
