"""Command line: ``pwru [flags] [pcap-filter ...]`` -> :class:`~pwru.config.Config`, dispatch, exit codes.

The flags are declared in :mod:`pwru.flags`; :func:`main` parses them, builds the Config, resolves it
(:func:`pwru.resolve.resolve`) and dispatches to ``pwru.run``. This module is the only place where errors become
messages and exit statuses: :class:`~pwru.errors.UserError` (its own code, 2 by default), the errors of
``pwru.ebpf`` (1), Ctrl-C (130), EPIPE (141), anything else an internal error (1, traceback with ``--debug``).
It also makes sure descriptors 0-2 are open before anything else is (see :func:`guard_standard_fds`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from pwru import __version__, flags, resolve
from pwru.config import Config
from pwru.ebpf.errors import BPFError, EBPFError, NotSupported, VerifierError
from pwru.errors import UserError

#: Lines of a kernel log (verifier, BTF load) shown after the message.
LOG_TAIL_LINES = 15


def parse_args(argv: Sequence[str]) -> Config:
    """Flags and pcap-filter words -> the resolved Config (ignores --help/--version; :func:`main` acts on them)."""
    return resolve.resolve(flags.parse_config(argv))


def _setup_logging(debug: bool) -> None:
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="pwru: %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="pwru: %(levelname)s: %(message)s")


def _dispatch(config: Config) -> int:
    # Imported lazily: flag errors, --help and --version need none of the BPF machinery.
    run = importlib.import_module("pwru.run")
    if config.list_backends:
        entry = run.list_backends
    elif config.list_funcs:
        entry = run.list_funcs
    else:
        entry = run.run
    return int(entry(config))


def guard_standard_fds() -> frozenset[int]:
    """Put /dev/null on each of descriptors 0, 1 and 2 that is closed, and return those that were.

    Otherwise the first file or BPF object pwru opens takes the number, and output or messages meant for the
    terminal are written into it. Python starts with ``sys.stdout`` / ``sys.stderr`` None when it found them
    closed (``print(file=None)`` then writes to stdout): they are made again on the new descriptors. Whether a
    closed standard output is an error depends on the command (:func:`pwru.resolve.check_stdout`); a closed
    standard error only loses the messages, the exit status still tells.
    """
    closed: set[int] = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 -- it lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
    return frozenset(closed)


def _writes_stdout(config: Config) -> bool:
    """Whether the command writes to standard output: listings, events without --output-file, --output-pcap -."""
    return config.list_backends or config.list_funcs or config.output.file is None or config.output.pcap_to_stdout


def _quiet_stdout() -> None:
    # After EPIPE, point fd 1 at /dev/null so the interpreter's final flush does not complain.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def ebpf_message(e: EBPFError) -> str:
    """What the user reads for an error of ``pwru.ebpf`` (without the ``pwru: `` prefix); may span lines."""
    if isinstance(e, VerifierError):
        program = f" {e.program}" if e.program else ""
        msg = f"the kernel's verifier refused the program{program}: {e.strerror}"
    elif isinstance(e, NotSupported):
        msg = f"{e.feature}: not supported on this kernel: {e.why}"
    elif isinstance(e, BPFError):
        msg = e.strerror or str(e)  # "bpf(MAP_CREATE): Operation not permitted", without OSError's "[Errno N]"
    else:
        msg = str(e)
    tail = e.log_tail(LOG_TAIL_LINES) if isinstance(e, BPFError) else ""
    return f"{msg}\n{tail}" if tail else msg


def _print_recording(args: list[str], closed: frozenset[int]) -> int:
    """``pwru print FILE [output flags]``: a recording of --output-raw, formatted (see :mod:`pwru.rawfile`). The
    words after the flags are the file (where a pcap filter would be)."""
    values = flags.parse_argv(args)
    if values["help"]:
        resolve.check_stdout(1 in closed)
        sys.stdout.write("usage: pwru print FILE [output flags]: format a recording of --output-raw FILE\n")
        return 0
    config = flags.build_config(values)
    path = config.filter.pcap
    if not path or " " in path:
        raise UserError("print: give one recording file (written by --output-raw FILE)")
    recording = [f.name for f in flags.TABLE.flags
                 if values[f.name] != f.initial() and f.section not in ("output", None) and f.kind != flags.WORDS
                 and f.name != "debug"]  # fmt: skip
    if recording:
        raise UserError(f"print: --{recording[0]} applies when recording (only output flags apply to printing)")
    config = dataclasses.replace(config, filter=dataclasses.replace(config.filter, pcap=""))
    if config.output.file is not None:
        resolve.check_output_path("output-file", config.output.file)
    else:
        resolve.check_stdout(1 in closed)
    _setup_logging(config.debug)
    from pwru import rawfile

    return rawfile.replay(path, config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit status (0 ok, 1 error, 2 usage, 130 interrupted, 141 EPIPE)."""
    args = sys.argv[1:] if argv is None else list(argv)
    closed = guard_standard_fds()
    debug = False
    try:
        if args[:1] == ["print"]:  # pwru print FILE: a recording of --output-raw (pwru.rawfile)
            return _print_recording(args[1:], closed)
        if args[:1] == ["k8s"]:  # pwru k8s: pwru on Kubernetes nodes (pwru.k8s; its flags pass pwru's through)
            return int(importlib.import_module("pwru.k8s.runner").main(args[1:]))
        values = flags.parse_argv(args)
        debug = bool(values["debug"])
        if values["help"] or values["version"]:
            resolve.check_stdout(1 in closed)
            sys.stdout.write(flags.usage() if values["help"] else f"pwru {__version__}\n")
            return 0
        config = resolve.resolve(flags.build_config(values))
        if _writes_stdout(config):
            resolve.check_stdout(1 in closed)
            if config.output.pcap_to_stdout and not (config.list_backends or config.list_funcs):
                resolve.check_pcap_stdout()
        _setup_logging(config.debug)
        return _dispatch(config)
    except UserError as e:
        print(f"pwru: {e}", file=sys.stderr)
        return e.exit_code
    except EBPFError as e:
        if debug:
            traceback.print_exc()
        print(f"pwru: {ebpf_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except Exception as e:
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"pwru: internal error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1


def entry() -> None:
    """The ``pwru`` command: :func:`main`, then the process ends without the interpreter's teardown. Everything
    of ours is closed by then (links, maps, sinks: `main` returns after that); what remains is freeing every
    object one by one (the object's instructions, kernel BTF, kallsyms), 0.1 s here and about a second under
    emulation, which a user waits for after Ctrl-C."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 141
    except (OSError, ValueError):
        pass
    os._exit(code)
