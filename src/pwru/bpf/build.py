"""Compile the kernel-side C programs (``*.bpf.c`` next to this file) into BPF ELF objects with clang.

Runs when the package is built (``setup.py`` hooks it into ``build_py``) and by hand with
``python3 -m pwru.bpf.build``. The target host never needs a compiler: the wheel carries ``pwru.bpf.o``.

Flags: ``-target bpf`` (little-endian BPF on x86), ``-mcpu=v3`` (ALU32 + JMP32, in the kernel since 5.1, so
fine for the supported 5.10..6.18 range), ``-O2`` (BPF needs an optimising build), ``-g`` (emits ``.BTF`` and
``.BTF.ext``: the CO-RE relocations and the ``struct event`` layout the decoder reads).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pwru.bpf import BPF_DIR, BuildError

LIBBPF_INCLUDE = Path("/usr/include/bpf")
CLANG_ENV = "PWRU_CLANG"


def find_clang() -> str:
    """The clang to use: ``$PWRU_CLANG``, else ``clang`` on ``PATH``, else the newest ``clang-NN``."""
    env = os.environ.get(CLANG_ENV)
    if env:
        found = shutil.which(env)
        if not found:
            raise BuildError(f"${CLANG_ENV}={env} is not an executable")
        return found
    found = shutil.which("clang")
    if found:
        return found
    for version in range(30, 10, -1):
        found = shutil.which(f"clang-{version}")
        if found:
            return found
    raise BuildError("clang not found: install clang (Debian: apt-get install clang) or set $PWRU_CLANG")


def libbpf_include_dir(include_dir: Path = LIBBPF_INCLUDE) -> Path:
    """The directory holding ``bpf/bpf_helpers.h`` (its parent is passed with ``-I``)."""
    if not (include_dir / "bpf_helpers.h").is_file():
        raise BuildError(f"libbpf headers not found ({include_dir}/bpf_helpers.h): install libbpf-dev")
    return include_dir.parent


def compile_command(clang: str, source: Path, output: Path, include_root: Path) -> list[str]:
    """The clang command line compiling one ``.bpf.c`` into ``output``."""
    return [
        clang,
        "-target", "bpf",
        "-mcpu=v3",
        "-O2",
        "-g",
        "-Wall",
        "-Werror",
        "-D__TARGET_ARCH_x86",
        "-I", str(source.parent),
        "-I", str(include_root),
        "-c", str(source),
        "-o", str(output),
    ]  # fmt: skip


def object_for(source: Path) -> Path:
    """``pwru.bpf.c`` -> ``pwru.bpf.o`` in the same directory."""
    return source.with_name(source.name.removesuffix(".c") + ".o")


def build(sources: Sequence[Path] | None = None, *, force: bool = False) -> list[Path]:
    """Compile ``sources`` (default: every ``*.bpf.c`` here) when an object is missing or older than its
    inputs.

    Returns the object paths. Raises :class:`BuildError` with a one-line reason.
    """
    srcs = list(sources) if sources is not None else sorted(BPF_DIR.glob("*.bpf.c"))
    if not srcs:
        raise BuildError(f"no *.bpf.c sources in {BPF_DIR}")
    headers = list(BPF_DIR.glob("*.h"))
    outputs = []
    clang: str | None = None
    include_root: Path | None = None
    for src in srcs:
        out = object_for(src)
        outputs.append(out)
        inputs = [src, *headers]
        if not force and out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
            continue
        clang = clang or find_clang()
        include_root = include_root or libbpf_include_dir()
        tmp = out.with_name(out.name + ".tmp")
        proc = subprocess.run(
            compile_command(clang, src, tmp, include_root), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            detail = proc.stderr.strip() or f"exit status {proc.returncode}"
            raise BuildError(f"clang failed on {src.name}:\n{detail}")
        tmp.replace(out)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python3 -m pwru.bpf.build [--force] [SOURCE...]``."""
    parser = argparse.ArgumentParser(prog="python3 -m pwru.bpf.build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("sources", nargs="*", type=Path, help="*.bpf.c files (default: all in the package)")
    args = parser.parse_args(argv)
    try:
        for out in build(args.sources or None, force=args.force):
            print(out)
    except BuildError as err:
        print(f"pwru.bpf.build: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
