"""The errors of ``pwru.ebpf``: one root, so a caller can tell the library's failures from its own.

* :class:`EBPFError` is the root of everything the library raises on purpose.
* :class:`BPFError` is a failed ``bpf(2)`` command (an :class:`OSError` with ``errno``, the command and any
  kernel log).
* :class:`VerifierError` is the one case where the kernel's verifier refused a program: its log tail is what a
  user needs to see. A map creation or BTF load failure is a plain :class:`BPFError`, never this.
* :class:`NotSupported` says that the running kernel lacks a feature, and why.
"""

from __future__ import annotations

import os


class EBPFError(Exception):
    """Root of the errors ``pwru.ebpf`` raises."""


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


class NotSupported(EBPFError):
    """The running kernel lacks ``feature``; ``why`` says what is missing (a config option, a version, ...)."""

    def __init__(self, feature: str, why: str) -> None:
        super().__init__(f"{feature}: not supported: {why}")
        self.feature = feature
        self.why = why
