"""Kernel BTF objects (vmlinux and modules) as file descriptors, found by name through ``BPF_BTF_GET_NEXT_ID``.

Programs attaching to a module's function or tracepoint (fentry, tp_btf) name the module's BTF object with
``attach_btf_obj_fd`` at load time.
"""

from __future__ import annotations

import ctypes
import os

from pwru.ebpf import syscall
from pwru.ebpf.errors import EBPFError
from pwru.ebpf.syscall import BtfInfo, Cmd


class KernelBTFNotFound(EBPFError, LookupError):
    """No kernel BTF object has the name asked for (the module is not loaded, or has no BTF)."""


def btf_fd_of_module(name: str) -> int:
    """An fd of the kernel BTF object named ``name`` (a module, or ``vmlinux``).

    Raises :class:`KernelBTFNotFound` (a LookupError) when there is none.
    """
    btf_id = 0
    while True:
        next_id = syscall.get_next_id(Cmd.BTF_GET_NEXT_ID, btf_id)
        if next_id is None:
            raise KernelBTFNotFound(f"no kernel BTF object named {name!r}")
        btf_id = next_id
        try:
            fd = syscall.get_fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id)
        except OSError:
            continue  # gone meanwhile
        buf = ctypes.create_string_buffer(64)
        info = BtfInfo(name=ctypes.addressof(buf), name_len=len(buf))
        syscall.obj_get_info_by_fd(fd, info)
        if info.kernel_btf and buf.value.decode(errors="replace") == name:
            return fd
        os.close(fd)


def raw_btf(btf_id: int) -> bytes:
    """The bytes of the BTF object ``btf_id`` (a program's or map's BTF, or a kernel one), as the kernel holds it."""
    fd = syscall.get_fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id)
    try:
        info = BtfInfo()
        syscall.obj_get_info_by_fd(fd, info)
        buf = ctypes.create_string_buffer(info.btf_size)
        again = BtfInfo(btf=ctypes.addressof(buf), btf_size=info.btf_size)
        syscall.obj_get_info_by_fd(fd, again)
        return buf.raw[: again.btf_size]
    finally:
        os.close(fd)
