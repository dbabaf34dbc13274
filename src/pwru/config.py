"""Config: the one frozen object built from the command line, validated once, read by the rest of the tool.

The ``parse_*`` helpers turn a flag's text into a checked value and raise :class:`FlagError` (a
:class:`~pwru.errors.UserError` whose message is ``--flag: problem``) when the text is unusable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pwru import netns
from pwru.errors import UserError

BACKENDS = ("auto", "kprobe-multi", "kprobe", "fentry", "tracepoint")
TIMESTAMP_MODES = ("none", "current", "relative", "absolute")
MEGABYTE = 1024 * 1024
IFNAMSIZ = 16
_HEX = re.compile(r"[0-9a-fA-F]+")
_DEC = re.compile(r"[0-9]+")


class FlagError(UserError):
    """An invalid flag value; the message names the flag: ``--flag-name: problem``."""

    def __init__(self, flag: str, problem: str) -> None:
        super().__init__(f"--{flag}: {problem}", exit_code=2)
        self.flag = flag
        self.problem = problem


@dataclass(frozen=True)
class Config:
    """Validated settings. Defaults match pwru's flag defaults."""

    pcap_filter: str = ""
    backend: str = "auto"
    filter_func: re.Pattern[str] | None = None  # must match a whole function name
    filter_netns: int | None = None  # netns inode; set with --filter-netns, or by --filter-ifname
    filter_netns_path: str | None = None  # a file naming that netns, when known
    filter_ifname: str | None = None
    filter_ifindex: int | None = None
    filter_mark: int = 0  # already masked
    filter_mark_mask: int = 0  # 0: no mark filter
    output_meta: bool = True
    output_tuple: bool = True
    output_tcp_flags: bool = False
    output_stack: bool = False
    output_caller: bool = False
    output_json: bool = False
    output_limit_lines: int = 0  # 0: unlimited
    output_file: str | None = None
    output_file_max_size: int = 100  # MB (MiB, as lumberjack)
    output_file_max_backups: int = 0  # 0: keep all
    output_file_max_age: int = 0  # days, 0: keep all
    output_file_compress: bool = False
    timestamp: str = "none"
    kmods: tuple[str, ...] = ()
    all_kmods: bool = False
    kernel_btf: str | None = None
    ready_file: str | None = None
    debug: bool = False
    list_backends: bool = False
    list_funcs: bool = False

    def func_allowed(self, name: str) -> bool:
        """Whether --filter-func lets the function (or tracepoint) ``name`` be traced."""
        return self.filter_func is None or self.filter_func.fullmatch(name) is not None

    @property
    def output_file_max_bytes(self) -> int:
        """--output-file-max-size in bytes."""
        return self.output_file_max_size * MEGABYTE


def parse_choice(flag: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise FlagError(flag, f"invalid value {value!r} (choose from {', '.join(choices)})")
    return value


def parse_backend(value: str) -> str:
    """--backend; an empty value means auto, as in pwru."""
    return parse_choice("backend", value or "auto", BACKENDS)


def parse_uint(flag: str, value: str, *, minimum: int = 0, maximum: int = 2**64 - 1) -> int:
    """A decimal integer within [minimum, maximum]."""
    try:
        n = int(value, 10)
    except ValueError:
        raise FlagError(flag, f"not a number: {value!r}") from None
    if n < minimum or n > maximum:
        raise FlagError(flag, f"{n} is out of range ({minimum}..{maximum})")
    return n


def _parse_u32(flag: str, what: str, text: str) -> int:
    t = text.strip()
    base = 16 if t.lower().startswith("0x") else 10
    digits = t[2:] if base == 16 else t
    if not (_HEX if base == 16 else _DEC).fullmatch(digits):
        raise FlagError(flag, f"invalid {what} {text!r} (hex with 0x, or decimal)")
    n = int(digits, base)
    if n > 0xFFFFFFFF:
        raise FlagError(flag, f"{what} {text!r} does not fit in 32 bits")
    return n


def parse_mark(value: str) -> tuple[int, int]:
    """--filter-mark ``mark[/mask]`` -> (mark & mask, mask); without a mask the match is exact."""
    parts = value.split("/")
    if len(parts) > 2:
        raise FlagError("filter-mark", f"invalid value {value!r}: expected mark[/mask]")
    mark = _parse_u32("filter-mark", "mark", parts[0])
    mask = _parse_u32("filter-mark", "mask", parts[1]) if len(parts) == 2 else 0xFFFFFFFF
    return mark & mask, mask


def parse_func_regex(value: str) -> re.Pattern[str] | None:
    """--filter-func: a regular expression that must match the whole function name."""
    if not value:
        return None
    try:
        return re.compile(value)
    except re.error as e:
        raise FlagError("filter-func", f"invalid regular expression {value!r}: {e}") from None


def parse_netns(value: str) -> tuple[int | None, str | None]:
    """--filter-netns ``/path/to/ns/net`` or ``inode:N`` -> (inode, path or None)."""
    if not value:
        return None, None
    if value.startswith("inode:"):
        inode = parse_uint("filter-netns", value[len("inode:") :], minimum=1, maximum=0xFFFFFFFF)
        return inode, None
    if not value.startswith("/"):
        raise FlagError("filter-netns", f"invalid value {value!r} (use /proc/<pid>/ns/net or inode:<inode>)")
    try:
        inode = netns.netns_inode(value)
    except netns.NetnsError as e:
        raise FlagError("filter-netns", str(e)) from None
    if inode > 0xFFFFFFFF:
        raise FlagError("filter-netns", f"{value}: inode {inode} does not fit in 32 bits")
    return inode, value


def resolve_ifname(name: str, netns_inode: int | None, netns_path: str | None) -> tuple[int, int, str | None]:
    """--filter-ifname: look ``name`` up in the --filter-netns namespace, else the current one.

    Returns (ifindex, netns inode, netns path). An ``inode:N`` namespace is found through ``/run/netns`` or a
    process living in it.
    """
    if len(name.encode()) >= IFNAMSIZ or "/" in name or not name.strip():
        raise FlagError("filter-ifname", f"invalid interface name {name!r}")
    if netns_inode is None:
        netns_path = "/proc/self/ns/net"
        netns_inode = netns.netns_inode(netns_path)
    elif netns_path is None:
        netns_path = netns.find_netns_path(netns_inode)
        if netns_path is None:
            raise FlagError(
                "filter-ifname",
                f"cannot look up {name!r}: no /run/netns entry or process found in netns inode {netns_inode}",
            )
    try:
        index = netns.ifindex(name, netns_path)
    except netns.NetnsError as e:
        raise FlagError("filter-ifname", str(e)) from None
    return index, netns_inode, netns_path


def check_existing_file(flag: str, path: str) -> str:
    """``path`` when it names an existing regular file."""
    if not os.path.exists(path):
        raise FlagError(flag, f"{path}: no such file")
    if os.path.isdir(path):
        raise FlagError(flag, f"{path}: is a directory")
    return path


def check_output_path(flag: str, path: str) -> str:
    """``path`` when a file can be created there (its directory exists), and it is not a directory."""
    if os.path.isdir(path):
        raise FlagError(flag, f"{path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FlagError(flag, f"{parent}: no such directory")
    return path


def split_list(values: list[str]) -> tuple[str, ...]:
    """A repeated, comma-separated list flag (``--kmods a,b --kmods c``) -> ('a', 'b', 'c')."""
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return tuple(out)
