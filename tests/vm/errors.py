"""The kernel lab's one error type."""

from __future__ import annotations


class VMError(RuntimeError):
    """The lab cannot do what was asked (missing host tools, fetch failure, guest did not boot...)."""
