"""The resolve step: after parsing, look up what the flags name on this machine, in one place.

:func:`resolve` takes the pure :class:`~pwru.config.Config` that :func:`pwru.flags.build_config` made and
returns it with the network namespace inode (from a ``--filter-netns`` path), the interface index (from
``--filter-ifname``, looked up inside that namespace, else the current one) and checked file paths. Errors are
the usual one-line :class:`~pwru.config.FlagError` (``--flag: problem``, exit 2).
"""

from __future__ import annotations

import dataclasses
import os
import stat

from pwru import netns
from pwru.config import Config, FlagError

#: Config fields only this step fills (no flag does); the drift test in tests/unit/test_flags.py reads it.
FILLS: tuple[str, ...] = ("filter.ifindex",)


def netns_inode(path: str) -> int:
    """--filter-netns ``path`` -> the inode of the network namespace it names (32 bits, as the kernel side)."""
    try:
        inode = netns.netns_inode(path)
    except netns.NetnsError as e:
        raise FlagError("filter-netns", str(e)) from None
    if inode > 0xFFFFFFFF:
        raise FlagError("filter-netns", f"{path}: inode {inode} does not fit in 32 bits")
    return inode


def resolve_ifname(name: str, netns_inode: int | None, netns_path: str | None) -> tuple[int, int, str | None]:
    """--filter-ifname: look ``name`` up in the --filter-netns namespace, else the current one.

    Returns (ifindex, netns inode, netns path). An ``inode:N`` namespace is found through ``/run/netns`` or a
    process living in it.
    """
    if netns_inode is None:
        netns_path = "/proc/self/ns/net"
        netns_inode = netns.netns_inode(netns_path)
    elif netns_path is None:
        netns_path = netns.find_netns_path(netns_inode)
        if netns_path is None:
            raise FlagError(
                "filter-ifname",
                f"cannot look up {name!r}: no /run/netns entry or process found in netns inode {netns_inode}",
            )
    try:
        index = netns.ifindex(name, netns_path)
    except netns.NetnsError as e:
        raise FlagError("filter-ifname", str(e)) from None
    return index, netns_inode, netns_path


def check_existing_file(flag: str, path: str, max_size: int | None = None) -> str:
    """``path`` when it names an existing regular file (of at most ``max_size`` bytes).

    stat only: a FIFO or a device is refused here, before anything opens it (a FIFO's open would block, and
    /dev/zero never ends).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FlagError(flag, f"{path}: no such file") from None
    except OSError as e:
        raise FlagError(flag, f"{path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FlagError(flag, f"{path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        from pwru.ebpf.btf import file_kind  # here, not at the top: cli loads nothing of pwru.ebpf before dispatch

        raise FlagError(flag, f"{path}: not a regular file ({file_kind(st.st_mode)})")
    if max_size is not None and st.st_size > max_size:
        raise FlagError(flag, f"{path}: {st.st_size} bytes, more than the {max_size >> 20} MiB limit")
    return path


def check_output_path(flag: str, path: str) -> str:
    """``path`` when a file can be created there (its directory exists), and it is not a directory."""
    if os.path.isdir(path):
        raise FlagError(flag, f"{path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FlagError(flag, f"{parent}: no such directory")
    return path


def resolve(config: Config) -> Config:
    """``config`` with the netns inode, ifindex and path checks done; raises :class:`FlagError`."""
    f = config.filter
    inode, path = f.netns, f.netns_path
    if path is not None and inode is None:
        inode = netns_inode(path)
    ifindex = f.ifindex
    if f.ifname is not None:
        ifindex, inode, path = resolve_ifname(f.ifname, inode, path)
    if config.output.file is not None:
        check_output_path("output-file", config.output.file)
    if config.kernel.kernel_btf is not None:
        from pwru.ebpf.btf import MAX_BTF_SIZE  # only when asked: see check_existing_file

        check_existing_file("kernel-btf", config.kernel.kernel_btf, MAX_BTF_SIZE)
    if config.ready_file is not None:
        check_output_path("ready-file", config.ready_file)
    return dataclasses.replace(config, filter=dataclasses.replace(f, netns=inode, netns_path=path, ifindex=ifindex))
