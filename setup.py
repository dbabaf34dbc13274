"""Build hook: compile the kernel-side BPF program before the package files are collected.

All metadata is in pyproject.toml; this file only adds a ``build_py`` step running ``pwru.bpf.build`` (clang),
so that ``pip install .``, ``pip install -e .`` and wheels carry ``pwru/bpf/pwru.bpf.o``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SRC = Path(__file__).resolve().parent / "src"


class BuildWithBPF(build_py):
    """``build_py`` that first compiles ``src/pwru/bpf/*.bpf.c`` into objects next to their sources."""

    def run(self) -> None:
        sys.path.insert(0, str(SRC))
        try:
            from pwru.bpf import BuildError
            from pwru.bpf.build import build
        finally:
            sys.path.remove(str(SRC))
        try:
            for obj in build():
                self.announce(f"built {obj}", level=2)
        except BuildError as err:
            raise SystemExit(f"pwru: cannot build the BPF object: {err}") from None
        super().run()


setup(cmdclass={"build_py": BuildWithBPF})
