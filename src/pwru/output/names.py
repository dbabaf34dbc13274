"""Names the formatters need, and safe text.

:class:`Names` is what a formatter is given to turn numbers into words (:class:`pwru.symbols.Symbols`
implements it with kallsyms, the probe table and the drop reasons). :class:`ProcessNames` is the process part,
shared by every implementation. :func:`sanitize` makes kernel- or process-provided text safe to print on a terminal.
"""

from __future__ import annotations

import os
from typing import Protocol

PROCESS_WIDTH = 16


class Names(Protocol):
    """Resolves the numbers in a record to names."""

    def probe_name(self, probe_kind: int, probe: int) -> str:
        """The traced function (``ip_rcv``) or tracepoint (``tp:kfree_skb``) a record's header names."""
        ...

    def reason_name(self, reason: int) -> str:
        """The drop reason's enum name (``SKB_DROP_REASON_NO_SOCKET``); an empty string when unknown."""
        ...

    def symbol(self, addr: int) -> str:
        """A kernel address as ``name+0x1c`` (or hex when no symbol covers it)."""
        ...

    def process(self, pid: int, comm: bytes) -> str:
        """The process column: ``exe:pid``, shortened as pwru does (see :class:`ProcessNames`)."""
        ...


def _escape(ch: str) -> str:
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def sanitize(text: str | bytes) -> str:
    """``text`` with every non-printable character (controls, escape sequences' ESC/CSI, bidi overrides,
    line breaks) written as ``\\xNN``/``\\uNNNN``; bytes are decoded as UTF-8 (an invalid byte becomes
    ``\\xNN``) and end at their first NUL, as a C string.
    """
    if isinstance(text, bytes):
        text = text.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def shorten_left(text: str, width: int) -> str:
    """pwru's shortening: keep the last ``width`` characters, the first of them replaced by ``~``."""
    if len(text) <= width:
        return text
    return "~" + text[len(text) - width + 1 :]


class ProcessNames:
    """The PROCESS column: ``/proc/PID/exe`` and the pid (``/usr/bin/curl:621``), cached per pid.

    When the process is gone (or is a kernel thread, or the idle task in a softirq) the kernel-reported
    ``comm`` stands in for the executable. ``width`` shortens the result as pwru does (``~sr/bin/curl:621``);
    0 keeps it whole.
    """

    def __init__(self, width: int = PROCESS_WIDTH, proc: str = "/proc", max_entries: int = 65536) -> None:
        self._width = width
        self._proc = proc
        self._max = max_entries
        self._cache: dict[int, str] = {}

    def exe(self, pid: int) -> str | None:
        """The executable path of ``pid`` (sanitized), or None when it cannot be read."""
        if pid <= 0:
            return None
        try:
            path = os.readlink(f"{self._proc}/{pid}/exe")
        except OSError:
            return None
        return sanitize(os.fsencode(path)) if path else None

    def __call__(self, pid: int, comm: bytes) -> str:
        """The column text for ``pid``; ``comm`` is used when its executable cannot be read."""
        cached = self._cache.get(pid)
        if cached is not None:
            return cached
        name = self.exe(pid) or sanitize(comm) or "<empty>"
        text = f"{name}:{pid}"
        if self._width:
            text = shorten_left(text, self._width)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[pid] = text
        return text

    def forget(self, pid: int) -> None:
        """Drop a cached pid (its process exited and the pid may be reused)."""
        self._cache.pop(pid, None)
