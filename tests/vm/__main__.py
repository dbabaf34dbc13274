"""Kernel lab command line: ``python3 -m tests.vm {fetch,list,run} ...`` (from the repository root)."""

from __future__ import annotations

import argparse
import sys

from tests.vm.errors import VMError
from tests.vm.kernels import KERNEL_LINES, cache_dir, cached_kernels, fetch_kernel
from tests.vm.runner import run_in_vm


def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.vm", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch (or with --refresh, update) kernels into the cache")
    p_fetch.add_argument("lines", nargs="*", default=list(KERNEL_LINES), help="kernel lines (default: all)")
    p_fetch.add_argument("--refresh", action="store_true", help="look for a newer ABI in the Debian lists")
    sub.add_parser("list", help="show cached kernels")
    p_run = sub.add_parser("run", help="boot a kernel and run a command inside it as root")
    p_run.add_argument("-k", "--kernel", required=True, choices=list(KERNEL_LINES))
    p_run.add_argument("-t", "--timeout", type=float, default=600.0)
    p_run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    p_run.add_argument("-r", "--results", help="host directory for the writable results share")
    p_run.add_argument("-q", "--quiet", action="store_true", help="do not stream the console")
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="command (after --)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for line in args.lines:
                k = fetch_kernel(line, refresh=args.refresh, log=True)
                print(f"{k.line}: {k.kver} ({k.package} {k.version}) in {k.tree}")
            return 0
        if args.cmd == "list":
            print(f"cache: {cache_dir()}")
            for k in cached_kernels():
                print(f"{k.line}: {k.kver} ({k.version}), fetched in {k.fetch_seconds}s")
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command after --")
        result = run_in_vm(
            args.kernel,
            command,
            args.timeout,
            env=_parse_env(args.env),
            results_dir=args.results,
            on_line=None if args.quiet else print,
        )
        print(f"[vm] {result.kernel.kver}: exit {result.exit_code}, {result.timings()}", file=sys.stderr)
        print(f"[vm] results: {result.results_dir}", file=sys.stderr)
        if result.exit_code is None:
            return 124 if result.timed_out else 125
        return result.exit_code
    except VMError as err:
        print(f"pwru-vm: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
