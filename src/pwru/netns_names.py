"""--output-netns-names: network namespace inode -> a name people know it by.

Names come from two places, as cheap as they can be found:

- ``/run/netns/NAME`` bind mounts (``ip netns add NAME``): NAME, as pwru;
- the namespaces of running processes (containers, ``unshare -n``, ...): the namespace's main process, taken to
  be its lowest pid (a container's first process); the container id its cgroup path names (the 64 hex digits
  docker, podman, containerd and CRI-O put in it), shortened to 12 as ``docker ps`` does, else that process's
  ``comm``. The initial namespace (init's) gets no such name: every host process is in it.

Only namespace files (those on the nsfs device) count, so a stale file under /run/netns names nothing. An
inode not known yet makes the tables be read again, at most once per :data:`REFRESH_SECONDS`: one stat per
process, so a busy event stream full of namespaces that have no name costs one scan a second, never one per
event.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

RUN_NETNS = "/run/netns"
PROC = "/proc"
REFRESH_SECONDS = 1.0
#: A container id in a cgroup path (``docker-<id>.scope``, ``/docker/<id>``, ``libpod-<id>``, ``cri-containerd-``).
_CONTAINER_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
CONTAINER_ID_LENGTH = 12


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _read(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


class NetnsNames:
    """inode -> name, read from the host (see the module's text); ``__call__`` gives ``""`` when there is none."""

    def __init__(
        self,
        run_netns: str = RUN_NETNS,
        proc: str = PROC,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_netns = run_netns
        self._proc = proc
        self._refresh = refresh_seconds
        self._clock = clock
        self._names: dict[int, str] = {}
        self._scanned_at: float | None = None
        self.scans = 0  # how many times the tables were read (for tests)

    def __call__(self, inode: int) -> str:
        name = self._names.get(inode)
        if name is not None:
            return name
        if inode and (self._scanned_at is None or self._clock() - self._scanned_at >= self._refresh):
            self.scan()
            return self._names.get(inode, "")
        return ""

    def scan(self) -> None:
        """Read the names again (bind mounts, then processes)."""
        self._scanned_at = self._clock()
        self.scans += 1
        own = _stat(f"{self._proc}/self/ns/net")
        nsfs = own.st_dev if own is not None else None
        names: dict[int, str] = {}
        try:
            entries = sorted(os.listdir(self._run_netns))
        except OSError:
            entries = []
        for entry in entries:
            st = _stat(os.path.join(self._run_netns, entry))
            if st is not None and (nsfs is None or st.st_dev == nsfs):
                names.setdefault(st.st_ino, entry)
        init = _stat(f"{self._proc}/1/ns/net")
        main: dict[int, int] = {}  # netns inode -> its lowest pid
        try:
            pids = sorted(int(p) for p in os.listdir(self._proc) if p.isdigit())
        except OSError:
            pids = []
        for pid in pids:
            st = _stat(f"{self._proc}/{pid}/ns/net")
            if st is None or (nsfs is not None and st.st_dev != nsfs):
                continue
            if st.st_ino in names or (init is not None and st.st_ino == init.st_ino):
                continue
            main.setdefault(st.st_ino, pid)
        for inode, pid in main.items():
            name = self._process_name(pid)
            if name:
                names[inode] = name
        self._names = names

    def _process_name(self, pid: int) -> str:
        found = _CONTAINER_ID.search(_read(f"{self._proc}/{pid}/cgroup"))
        if found:
            return found.group(1)[:CONTAINER_ID_LENGTH]
        return _read(f"{self._proc}/{pid}/comm", 64).strip()
