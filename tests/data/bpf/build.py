"""Compile the loader's test objects (``*.bpf.c`` here) with clang into a directory of the caller's choice.

Objects are never committed: tests build them into a temporary directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def have_clang() -> bool:
    return shutil.which("clang") is not None


def compile_object(name: str, outdir: Path) -> Path:
    """Compile ``<name>.bpf.c`` to ``outdir/<name>.o`` (CO-RE, BTF, x86 register names)."""
    out = outdir / f"{name}.o"
    subprocess.run(
        [
            "clang",
            "-g",
            "-O2",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            f"-I{HERE}",
            "-c",
            str(HERE / f"{name}.bpf.c"),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out
