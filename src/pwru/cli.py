"""Command line: ``pwru [flags] [pcap-filter ...]`` -> :class:`~pwru.config.Config`, exit codes, errors.

Flags follow pwru's (pflag) conventions: ``--flag value`` or ``--flag=value``; booleans are ``--flag``,
``--flag=true|false`` (also 1/0, t/f) or ``--no-flag``; list flags repeat and/or take commas. Everything that
is not a flag is the pcap filter, joined with spaces; ``--`` ends the flags.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from pwru import __version__
from pwru import config as cfg
from pwru.errors import UserError

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


@dataclass(frozen=True)
class Flag:
    """One command-line flag: ``kind`` is bool, str, uint or list."""

    name: str
    kind: str
    default: object
    help: str
    metavar: str = ""


FLAGS: tuple[Flag, ...] = (
    Flag("help", "bool", False, "display this message and exit"),
    Flag("version", "bool", False, "show pwru version and exit"),
    Flag("backend", "str", "auto", f"tracing backend ({', '.join(cfg.BACKENDS)})", "string"),
    Flag("list-backends", "bool", False, "list the backends and whether this kernel allows them, then exit"),
    Flag("list-funcs", "bool", False, "list the functions and tracepoints that would be traced, then exit"),
    Flag("kernel-btf", "str", "", "specify kernel BTF file", "string"),
    Flag("kmods", "list", [], "list of kernel modules names to attach to", "strings"),
    Flag("all-kmods", "bool", False, "attach to all available kernel modules"),
    Flag(
        "filter-func",
        "str",
        "",
        "filter kernel functions to be probed by name (regular expression matching the whole name)",
        "string",
    ),
    Flag("filter-netns", "str", "", 'filter netns ("/proc/<pid>/ns/net", "inode:<inode>")', "string"),
    Flag("filter-mark", "str", "", "filter skb mark (e.g. 0xa00/0xf00; exact without mask)", "mark[/mask]"),
    Flag("filter-ifname", "str", "", "filter skb ifname in --filter-netns (else the current netns)", "name"),
    Flag("output-meta", "bool", True, "print skb metadata"),
    Flag("output-tuple", "bool", True, "print L4 tuple"),
    Flag("output-tcp-flags", "bool", False, "print TCP flags"),
    Flag("output-stack", "bool", False, "print stack"),
    Flag("output-caller", "bool", False, "print caller function name"),
    Flag("output-json", "bool", False, "output traces in JSON format"),
    Flag("output-limit-lines", "uint", 0, "exit after this many events have been printed (0: no limit)", "N"),
    Flag("output-file", "str", "", "write traces to file (rotates at 100MB by default)", "string"),
    Flag("output-file-max-size", "uint", 100, "max size in MB per file before rotation", "int"),
    Flag("output-file-max-backups", "uint", 0, "max number of rotated files to keep (0: no limit)", "int"),
    Flag("output-file-max-age", "uint", 0, "max age in days to keep rotated files (0: no limit)", "int"),
    Flag("output-file-compress", "bool", False, "compress rotated files with gzip"),
    Flag("timestamp", "str", "none", "print timestamp per skb (current, relative, absolute, none)", "string"),
    Flag("ready-file", "str", "", "create file after all BPF progs are attached", "string"),
    Flag("debug", "bool", False, "enable debug logging"),
)
_BY_NAME = {f.name: f for f in FLAGS}


def usage() -> str:
    """The --help text."""
    lines = [
        "Usage: pwru [options] [pcap-filter]",
        '    Available pcap-filter: see "man 7 pcap-filter"',
        "    Available options:",
    ]
    for f in FLAGS:
        left = f"--{f.name}" + (f" {f.metavar}" if f.metavar else "")
        if f.name == "help":
            left = "-h, " + left
        default = ""
        if f.kind == "bool" and f.default is True:
            default = " (default true)"
        elif f.kind in ("str", "uint") and f.default not in ("", 0):
            default = f' (default "{f.default}")' if f.kind == "str" else f" (default {f.default})"
        lines.append(f"  {left:<34} {f.help}{default}")
    return "\n".join(lines) + "\n"


def _parse_bool(name: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise cfg.FlagError(name, f"invalid boolean {text!r} (use true or false)")


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, object], list[str]]:
    """Split ``argv`` into flag values (by flag name, defaults filled in) and the pcap-filter words."""
    values: dict[str, object] = {f.name: (list(f.default) if f.kind == "list" else f.default) for f in FLAGS}  # type: ignore[call-overload]
    words: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            words += args[i:]
            break
        if arg == "-h":
            values["help"] = True
            continue
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        if not arg.startswith("--"):
            raise UserError(f"{arg}: unknown flag (try --help)")
        name, eq, inline = arg[2:].partition("=")
        negated = False
        if name not in _BY_NAME and name.startswith("no-") and name[3:] in _BY_NAME:
            name, negated = name[3:], True
        flag = _BY_NAME.get(name)
        if flag is None:
            raise UserError(f"--{name}: unknown flag (try --help)")
        if flag.kind == "bool":
            if negated and eq:
                raise cfg.FlagError(name, f"--no-{name} takes no value")
            values[name] = (not negated) if not eq else _parse_bool(name, inline)
            continue
        if negated:
            raise UserError(f"--no-{name}: unknown flag (try --help)")
        if eq:
            text = inline
        elif i < len(args) and not args[i].startswith("--"):
            text = args[i]
            i += 1
        else:
            raise cfg.FlagError(name, "needs a value")
        if flag.kind == "list":
            values[name].append(text)  # type: ignore[attr-defined]
        elif flag.kind == "uint":
            values[name] = cfg.parse_uint(name, text)
        else:
            values[name] = text
    return values, words


def build_config(values: dict[str, object], words: Sequence[str]) -> cfg.Config:
    """Validate parsed flag values into a :class:`~pwru.config.Config`."""

    def s(name: str) -> str:
        return str(values[name])

    def b(name: str) -> bool:
        return bool(values[name])

    def n(name: str) -> int:
        v = values[name]
        assert isinstance(v, int)
        return v

    netns_inode, netns_path = cfg.parse_netns(s("filter-netns"))
    ifname = s("filter-ifname") or None
    ifindex: int | None = None
    if ifname is not None:
        ifindex, netns_inode, netns_path = cfg.resolve_ifname(ifname, netns_inode, netns_path)
    mark, mask = cfg.parse_mark(s("filter-mark")) if s("filter-mark") else (0, 0)
    if n("output-file-max-size") == 0:
        raise cfg.FlagError("output-file-max-size", "must be at least 1 (MB)")
    output_file = cfg.check_output_path("output-file", s("output-file")) if s("output-file") else None
    kernel_btf = cfg.check_existing_file("kernel-btf", s("kernel-btf")) if s("kernel-btf") else None
    ready_file = cfg.check_output_path("ready-file", s("ready-file")) if s("ready-file") else None
    kmods_raw = values["kmods"]
    assert isinstance(kmods_raw, list)
    return cfg.Config(
        pcap_filter=" ".join(words).strip(),
        backend=cfg.parse_backend(s("backend")),
        filter_func=cfg.parse_func_regex(s("filter-func")),
        filter_netns=netns_inode,
        filter_netns_path=netns_path,
        filter_ifname=ifname,
        filter_ifindex=ifindex,
        filter_mark=mark,
        filter_mark_mask=mask,
        output_meta=b("output-meta"),
        output_tuple=b("output-tuple"),
        output_tcp_flags=b("output-tcp-flags"),
        output_stack=b("output-stack"),
        output_caller=b("output-caller"),
        output_json=b("output-json"),
        output_limit_lines=n("output-limit-lines"),
        output_file=output_file,
        output_file_max_size=n("output-file-max-size"),
        output_file_max_backups=n("output-file-max-backups"),
        output_file_max_age=n("output-file-max-age"),
        output_file_compress=b("output-file-compress"),
        timestamp=cfg.parse_choice("timestamp", s("timestamp"), cfg.TIMESTAMP_MODES),
        kmods=cfg.split_list(kmods_raw),
        all_kmods=b("all-kmods"),
        kernel_btf=kernel_btf,
        ready_file=ready_file,
        debug=b("debug"),
        list_backends=b("list-backends"),
        list_funcs=b("list-funcs"),
    )


def parse_args(argv: Sequence[str]) -> cfg.Config:
    """Flags and pcap-filter words -> Config (ignores --help/--version; :func:`main` handles them)."""
    values, words = parse_flags(argv)
    return build_config(values, words)


def _setup_logging(debug: bool) -> None:
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="pwru: %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="pwru: %(levelname)s: %(message)s")


def _dispatch(config: cfg.Config) -> int:
    # Imported lazily: flag errors, --help and --version need none of the BPF machinery.
    run = importlib.import_module("pwru.run")
    if config.list_backends:
        entry = run.list_backends
    elif config.list_funcs:
        entry = run.list_funcs
    else:
        entry = run.run
    return int(entry(config))


def _quiet_stdout() -> None:
    # After EPIPE, point fd 1 at /dev/null so the interpreter's final flush does not complain.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit status (0 ok, 1 internal error, 2 usage, 130 interrupted)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = False
    try:
        values, words = parse_flags(args)
        debug = bool(values["debug"])
        if values["help"]:
            sys.stdout.write(usage())
            return 0
        if values["version"]:
            print(f"pwru {__version__}")
            return 0
        config = build_config(values, words)
        _setup_logging(config.debug)
        return _dispatch(config)
    except UserError as e:
        print(f"pwru: {e}", file=sys.stderr)
        return e.exit_code
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
