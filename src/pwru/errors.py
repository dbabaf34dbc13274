"""Errors a user caused or can fix: printed as one line (``pwru: <message>``), exit status 2 by default."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unsupported environment. ``str(e)`` is the whole message; no traceback is shown."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
