"""The errors of ``pwru.ebpf``: one root, so a caller can tell the library's failures from its own.

* :class:`EBPFError` is the root of everything the library raises on purpose. Each module's own error
  (``AsmError``, ``BTFError``, ``ELFError``, ``CoreError``, ``KallsymsError``, ``AttachError``, ...) derives
  from it, and also from :class:`ValueError` (bad input data) or :class:`OSError` (the kernel said no), as
  callers have long relied on.
* :class:`BPFError` is a failed ``bpf(2)`` command (an :class:`OSError` with ``errno``, the command and any
  kernel log). :class:`SyscallError` is any other failed system call the library makes (``perf_event_open``).
* :class:`VerifierError` is the one case where the kernel's verifier refused a program: its log tail is what a
  user needs to see. A map creation or BTF load failure is a plain :class:`BPFError`, never this.
* :class:`NotSupported` says that the running kernel lacks a feature, and why. It is an :class:`OSError` with
  ``errno`` ``EOPNOTSUPP`` unless a subclass says otherwise.

Misusing an API (an argument of the wrong size or type, a closed object) raises plain :class:`ValueError` or
:class:`TypeError`, as anywhere in Python.
"""

from __future__ import annotations

import errno
import os

__all__ = ["BPFError", "EBPFError", "NotSupported", "SyscallError", "VerifierError"]


class EBPFError(Exception):
    """Root of the errors ``pwru.ebpf`` raises."""


class SyscallError(EBPFError, OSError):
    """A failed system call other than bpf(2): ``errno`` as for any OSError, and the call's name."""

    def __init__(self, err: int, call: str) -> None:
        OSError.__init__(self, err, f"{call}: {os.strerror(err)}")
        self.call = call

    def __str__(self) -> str:
        return str(self.strerror)


class BPFError(EBPFError, OSError):
    """A failed bpf(2) command: ``errno`` as for any OSError, plus the command and any verifier/BTF log."""

    def __init__(self, err: int, cmd: object, log: str = "") -> None:
        name = getattr(cmd, "name", None) or str(cmd)
        OSError.__init__(self, err, f"bpf({name}): {os.strerror(err)}")
        self.cmd = cmd
        self.log = log

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the kernel's log: where it gave up and why."""
        return "\n".join(self.log.rstrip().splitlines()[-lines:])


class VerifierError(BPFError):
    """The verifier refused to load program ``program``; ``log`` holds its log."""

    def __init__(self, err: int, cmd: object, log: str = "", program: str = "") -> None:
        super().__init__(err, cmd, log)
        self.program = program

    def __str__(self) -> str:
        head = f"verifier refused program {self.program or '?'}: {os.strerror(self.errno or 0)}"
        tail = self.log_tail(3)
        return f"{head}\n{tail}" if tail else head


class NotSupported(EBPFError, OSError):
    """The running kernel lacks ``feature``; ``why`` says what is missing (a config option, a version, ...)."""

    def __init__(self, feature: str, why: str, err: int = errno.EOPNOTSUPP) -> None:
        OSError.__init__(self, err, f"{feature}: not supported: {why}")
        self.feature = feature
        self.why = why

    def __str__(self) -> str:
        return str(self.strerror)
