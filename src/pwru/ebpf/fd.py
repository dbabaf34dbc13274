"""A kernel object held through one file descriptor (maps, programs): the life cycle they share."""

from __future__ import annotations

import os
from typing import ClassVar, Self


class FDObject:
    """Owns one file descriptor. ``close()`` is idempotent; the object is a context manager.

    The kernel frees the object when nothing else (a link, a program using a map) holds it any more.
    """

    _what: ClassVar[str] = "object"
    name: str

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        """The file descriptor; ValueError once closed."""
        if self._fd < 0:
            raise ValueError(f"{self._what} {self.name or '?'} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Release the descriptor (idempotent)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
