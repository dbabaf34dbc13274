"""Network namespaces: inode of a netns file, finding a netns by inode, listing them all, running code inside one.

The process never moves its main thread: :func:`run_in_netns` enters the namespace in a short-lived thread
(``setns(2)`` changes only the calling thread) and returns that thread's result.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace a nsfs file is

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class NetnsError(Exception):
    """A namespace file that cannot be used; ``str(e)`` says why in a few words."""


def _check_net_fd(fd: int, path: str) -> None:
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL):
            raise NetnsError(f"{path} is not a namespace file") from None
        raise NetnsError(f"{path}: {e.strerror}") from None
    if kind != CLONE_NEWNET:
        raise NetnsError(f"{path} is not a network namespace")


#: How a file that should name a namespace is opened: O_NONBLOCK so that a FIFO (or a device that waits for a
#: peer) given by mistake is refused by the type check instead of blocking the open forever; O_NOCTTY so that
#: a terminal never becomes the controlling one. Neither changes anything for an nsfs file.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def netns_inode(path: str) -> int:
    """Inode number of the network namespace file ``path`` (``/proc/PID/ns/net``, ``/run/netns/NAME``)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise NetnsError(f"{path}: {e.strerror}") from None
    try:
        _check_net_fd(fd, path)
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def current_netns_inode() -> int:
    """Inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@dataclass(frozen=True)
class NetnsRef:
    """A network namespace by inode, and a file that names it (to enter it)."""

    inode: int
    path: str


def _candidate_paths() -> list[str]:
    """Files that may name a network namespace: ``/run/netns`` entries (by name), then every process's."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += [os.path.join("/run/netns", n) for n in sorted(os.listdir("/run/netns"))]
    with contextlib.suppress(OSError):
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        candidates += [f"/proc/{p}/ns/net" for p in pids]
    return candidates


def find_netns_path(inode: int) -> str | None:
    """A file naming the network namespace with this inode (``/run/netns`` entry or a process's), or None."""
    for path in _candidate_paths():
        try:
            if os.stat(path).st_ino == inode:
                return path
        except OSError:
            continue
    return None


def all_netns() -> list[NetnsRef]:
    """Every network namespace present now: the named ones (``/run/netns``) and those of running processes, one
    entry per inode, named by its ``/run/netns`` file when it has one (it outlives any process), else by the
    lowest pid living in it. A file that vanished meanwhile (a process exited) is passed over."""
    seen: dict[int, NetnsRef] = {}
    for path in _candidate_paths():
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        if inode not in seen:
            seen[inode] = NetnsRef(inode, path)
    return list(seen.values())


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(path: str, fn: Callable[[], T], inode: int | None = None) -> T:
    """Call ``fn()`` in a new thread that has entered the network namespace ``path``; return its result.

    With ``inode``, ``path`` must still name that namespace (a ``/proc/PID`` path names another one once the
    pid is reused), else :class:`NetnsError`. Exceptions raised by ``fn`` (or by entering the namespace) are
    raised here. The calling thread's namespace is never changed. When it is the namespace already, ``fn`` runs
    in the calling thread.
    """
    try:
        target = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise NetnsError(f"{path}: {e.strerror}") from None
    result: list[T] = []
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            try:
                _setns(target)
            except OSError as e:
                raise NetnsError(f"cannot enter {path}: {e.strerror}") from None
            result.append(fn())
        except BaseException as e:
            failure.append(e)

    try:
        _check_net_fd(target, path)
        if inode is not None and os.fstat(target).st_ino != inode:
            raise NetnsError(f"{path} no longer names netns inode {inode}")
        if os.fstat(target).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
            return fn()  # already there: entering needs CAP_SYS_ADMIN, which a run with CAP_BPF alone lacks
        thread = threading.Thread(target=worker, name="pwru-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(target)
    if failure:
        raise failure[0]
    return result[0]


def ifindex(name: str, netns_path: str | None = None) -> int:
    """Index of interface ``name`` in the namespace ``netns_path`` (the current one when None).

    Raises :class:`NetnsError` when the interface does not exist there.
    """

    def lookup() -> int:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            where = f" in {netns_path}" if netns_path else ""
            raise NetnsError(f"no interface named {name!r}{where}") from None

    if netns_path is None:
        return lookup()
    if netns_inode(netns_path) == current_netns_inode():
        return lookup()
    return run_in_netns(netns_path, lookup)
