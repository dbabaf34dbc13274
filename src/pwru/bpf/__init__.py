"""The kernel side of pwru: C sources compiled to a BPF object at package build time.

:func:`object_path` locates the compiled object (``pwru.bpf.o``) at run time; :mod:`pwru.bpf.build` makes it.
"""

from __future__ import annotations

from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent


class BuildError(RuntimeError):
    """The BPF object is missing or could not be built (missing tool or headers, or a compile error)."""


def object_path(name: str = "pwru.bpf.o") -> Path:
    """The built object shipped with the package; :class:`BuildError` when it has not been built."""
    path = BPF_DIR / name
    if not path.is_file():
        raise BuildError(
            f"{path} is missing: build it with `python3 -m pwru.bpf.build` (needs clang and libbpf-dev) "
            "or reinstall the package"
        )
    return path


__all__ = ["BPF_DIR", "BuildError", "object_path"]
