"""Config: the one frozen object built from the command line, in sections, read by the rest of the tool.

The sections are filled from the flag table in :mod:`pwru.flags`; :mod:`pwru.resolve` then fills what needs the
file system or a network namespace (netns inode, ifindex). The ``parse_*`` helpers here are pure: they turn a
flag's text into a checked value and raise :class:`FlagError` (a :class:`~pwru.errors.UserError` whose message
is ``--flag: problem``) when the text is unusable, without touching files or namespaces.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pwru.errors import UserError

BACKENDS = ("auto", "kprobe-multi", "kprobe", "fentry", "tracepoint")
TIMESTAMP_MODES = ("none", "current", "relative", "absolute")
#: --filter-trace-netfilter: auto is on with the tracepoint backend when the kernel has netfilter links.
NETFILTER_MODES = ("auto", "true", "false")
MEGABYTE = 1024 * 1024
#: --output-ring-size's default, KiB (the object's own size for the ``events`` ring buffer: 4 MiB).
RING_SIZE_DEFAULT = 4096
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
class FuncPattern:
    """--filter-func: an RE2 expression, as pwru's (Go's regexp is RE2): matching takes time linear in the name
    whatever the pattern, so no pattern can make pwru spin on backtracking. It must match the whole name."""

    text: str
    compiled: Any = field(compare=False, repr=False)  # re2._Regexp (the package has no type information)

    def fullmatch(self, name: str) -> Any:
        """The match of the whole ``name``, or None (the interface of ``re.Pattern.fullmatch``)."""
        return self.compiled.fullmatch(name)


@dataclass(frozen=True)
class FilterConfig:
    """Which packets and functions are traced."""

    pcap: str = ""  # the pcap expression (words joined)
    func: FuncPattern | None = None  # --filter-func, must match a whole name
    netns: int | None = None  # inode; --filter-netns, or set by --filter-ifname to the current netns
    netns_path: str | None = None  # a file naming that netns, when known
    ifname: str | None = None
    ifindex: int | None = None  # filled by the resolve step from ifname
    mark: int = 0  # already masked
    mark_mask: int = 0  # 0: no mark filter
    tunnel_pcap_l2: str = ""  # pcap expression on an encapsulated skb's inner packet, from its inner MAC header
    tunnel_pcap_l3: str = ""  # the same from its inner network header
    trace_netfilter: str = "auto"  # one of NETFILTER_MODES
    skb_expr: str = ""  # --filter-skb-expr: a C expression over skb (pwru.cexpr), compiled against kernel BTF
    xdp_expr: str = ""  # --filter-xdp-expr: the same over xdp (struct xdp_buff), for --filter-trace-xdp's events
    trace_tc: bool = False  # --filter-trace-tc: fentry/fexit on every loaded tc program
    trace_xdp: bool = False  # --filter-trace-xdp: on every loaded XDP program
    track_bpf_helpers: bool = False  # --filter-track-bpf-helpers: the kernel functions of skb helpers (kprobes)
    trace_tc_chain: bool = False  # --filter-trace-tc-chain: tcx links first and last on each device (pwru.tc_chain)

    def func_allowed(self, name: str) -> bool:
        """Whether --filter-func lets the function (or tracepoint) ``name`` be traced."""
        return self.func is None or self.func.fullmatch(name) is not None


#: --set-percpu-buf: pwru's default, and the range the kernel takes (a per-CPU map value holds at most 32 KiB,
#: PCPU_MIN_UNIT_SIZE; below 64 bytes nothing but the record's header would fit).
PERCPU_BUF_DEFAULT = 4096
PERCPU_BUF_RANGE = (64, 32768)
#: --netns-names-max-length: pwru's default and least value (a smaller one is raised to it, as pwru does); a
#: uint8 in pwru, so at most 255.
NETNS_NAMES_MAX_LENGTH_DEFAULT = 16
NETNS_NAMES_MIN_LENGTH = 10
NETNS_NAMES_MAX_LENGTH = 255
#: --output-pcap-snaplen: the default, and the most (pwru.h's PWRU_PCAP_SNAPLEN_MAX; a unit test holds them equal).
PCAP_SNAPLEN_DEFAULT = 256
PCAP_SNAPLEN_MAX = 16384
#: --output-journey's bounds (see pwru.output.journey): idle time (ms) before a journey is printed without its
#: end, journeys held at once, hops held per journey.
JOURNEY_TIMEOUT_DEFAULT = 1000
JOURNEY_MAX_DEFAULT = 512
JOURNEY_MAX_HOPS_DEFAULT = 256


@dataclass(frozen=True)
class OutputConfig:
    """What each event shows and where it goes."""

    meta: bool = True
    tuple: bool = True
    tcp_flags: bool = False
    stack: bool = False
    caller: bool = False
    tunnel: bool = False  # the inner packet's tuple of encapsulated skbs
    explain: bool = False  # --output-explain: a drop's explanation (pwru.explain) after its line / in its object
    summary: bool = False  # --summary: skb ends counted in the kernel, a table at exit
    summary_interval: int = 0  # --summary-interval N: the table every N seconds too (0: at exit only)
    summary_events: bool = False  # --summary-events: the per-event output as well
    ring_size: int = RING_SIZE_DEFAULT  # --output-ring-size: the kernel's event ring buffer, KiB
    json: bool = False
    limit_lines: int = 0  # 0: unlimited
    file: str | None = None
    file_max_size: int = 100  # MB (MiB, as lumberjack)
    file_max_backups: int = 0  # 0: keep all
    file_max_age: int = 0  # days, 0: keep all
    file_compress: bool = False
    timestamp: str = "none"
    skb: bool = False  # --output-skb: struct sk_buff printed by the kernel
    shared_info: bool = False  # --output-skb-shared-info: struct skb_shared_info printed by the kernel
    skb_cb: bool = False  # --output-skb-cb: the control block's words (with --output-meta)
    bpfmap: bool = False  # --output-bpfmap: BPF map operations on the skb's behalf (implies tracking.by_stackid)
    percpu_buf: int = PERCPU_BUF_DEFAULT  # --set-percpu-buf: bytes of the kernel's dump buffer
    netns_names: bool = False  # --output-netns-names
    netns_names_max_length: int = NETNS_NAMES_MAX_LENGTH_DEFAULT  # text column width (at least 10)
    xdp_metadata: builtins.tuple[str, ...] = ()  # --output-xdp-metadata: the same over xdp, in XDP events
    skb_metadata: builtins.tuple[str, ...] = ()  # --output-skb-metadata: C expressions over skb shown with each event
    pcap: str | None = None  # --output-pcap: a path, or "-" for standard output
    pcap_snaplen: int = PCAP_SNAPLEN_DEFAULT
    raw: str | None = None  # --output-raw: the records as they come, for `pwru print` (rawfile.py)

    journey: bool = False  # --output-journey: one block per packet (implies tracking.skb, see Config)
    journey_timeout: int = JOURNEY_TIMEOUT_DEFAULT  # ms without an event before a journey is printed anyway
    journey_max: int = JOURNEY_MAX_DEFAULT  # journeys in progress at once
    journey_max_hops: int = JOURNEY_MAX_HOPS_DEFAULT  # hops held per journey before it is printed as cut

    @property
    def pcap_to_stdout(self) -> bool:
        """--output-pcap -: the pcapng stream takes standard output (text/JSON lines only to --output-file)."""
        return self.pcap == "-"

    @property
    def file_max_bytes(self) -> int:
        """--output-file-max-size in bytes."""
        return self.file_max_size * MEGABYTE

    @property
    def summarises(self) -> bool:
        """Whether the run counts skb ends for a summary (--summary, or one of the flags that imply it)."""
        return self.summary or self.summary_interval > 0 or self.summary_events

    @property
    def events(self) -> bool:
        """Whether the run prints events: always, except with a summary and neither --summary-events,
        --output-pcap nor --output-journey (the kernel then writes no event at all, and only the probes the counts
        need are attached)."""
        return not self.summarises or self.summary_events or self.pcap is not None or self.journey


#: --filter-kprobe-batch's default (pwru's).
KPROBE_BATCH_DEFAULT = 10

#: --filter-track-skb-max: the default size of the kernel's tracked set (and of the call-chain maps).
TRACK_MAX_DEFAULT = 16384


@dataclass(frozen=True)
class TrackingConfig:
    """skb tracking: which skbs stay shown after they stop matching the filters (see :mod:`pwru.tracking`)."""

    skb: bool = False  # --filter-track-skb
    by_stackid: bool = False  # --filter-track-skb-by-stackid (implied by non_skb_funcs and --output-bpfmap)
    non_skb_funcs: tuple[str, ...] = ()
    max_entries: int = TRACK_MAX_DEFAULT

    @property
    def stackid(self) -> bool:
        """Whether skbs are tied to their call chains (--filter-track-skb-by-stackid or non-skb functions)."""
        return self.by_stackid or bool(self.non_skb_funcs)


@dataclass(frozen=True)
class KernelConfig:
    """How pwru attaches: backend, kernel modules, kernel BTF."""

    backend: str = "auto"
    kmods: tuple[str, ...] = ()
    all_kmods: bool = False
    kernel_btf: str | None = None
    kprobe_batch: int = KPROBE_BATCH_DEFAULT  # --filter-kprobe-batch: kprobes one attach worker takes in a row


@dataclass(frozen=True)
class Config:
    """Validated settings. Defaults match pwru's flag defaults."""

    filter: FilterConfig = field(default_factory=FilterConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    ready_file: str | None = None
    debug: bool = False
    list_backends: bool = False
    list_funcs: bool = False

    def __post_init__(self) -> None:
        o = self.output
        if o.limit_lines and not o.events:
            raise UserError(
                "--output-limit-lines counts printed events, and a summary without --summary-events prints none "
                "(add --summary-events, or leave --output-limit-lines out)"
            )
        if self.output.journey and not self.tracking.skb:
            # A journey is only whole if every later event of its skb is shown (after NAT, ...): journeys imply
            # --filter-track-skb. Set here, once, so every reader of tracking.skb sees it.
            object.__setattr__(self, "tracking", replace(self.tracking, skb=True))
        if o.bpfmap and not self.tracking.by_stackid:
            # A map operation has no skb argument: it is shown with the skb its call chain works on.
            object.__setattr__(self, "tracking", replace(self.tracking, by_stackid=True))
        if o.raw is not None and o.bpfmap:
            raise UserError("--output-raw with --output-bpfmap: the maps' key and value types are read from the "
                            "kernel while the run lasts, which `pwru print` cannot do later; leave one of them out")
        if o.raw is not None:
            other = [flag for flag, on in (("--output-pcap", o.pcap is not None), ("--output-journey", o.journey),
                     ("--summary", o.summarises), ("--output-skb-metadata", bool(o.skb_metadata)),
                     ("--output-file", o.file is not None)) if on]  # fmt: skip
            if other:
                raise UserError(f"--output-raw writes the records for `pwru print`, which makes the other outputs: "
                                f"leave {other[0]} out when recording (give it to `pwru print`)")  # fmt: skip
        if self.list_backends and self.list_funcs:
            raise UserError("--list-backends and --list-funcs: give one of them (each is a command of its own)")


#: The section dataclass of each sectioned field of :class:`Config`, by field name.
SECTIONS: dict[str, type] = {
    "filter": FilterConfig,
    "output": OutputConfig,
    "tracking": TrackingConfig,
    "kernel": KernelConfig,
}


def parse_choice(flag: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise FlagError(flag, f"invalid value {value!r} (choose from {', '.join(choices)})")
    return value


def parse_backend(value: str) -> str:
    """--backend (an empty value is refused by the parser, see :func:`check_not_empty`)."""
    return parse_choice("backend", value, BACKENDS)


def parse_trace_netfilter(value: str) -> str:
    """--filter-trace-netfilter."""
    return parse_choice("filter-trace-netfilter", value, NETFILTER_MODES)


def check_not_empty(flag: str, text: str) -> str:
    """A value given on the command line: an empty (or blank) one is refused, never read as "unset" (leaving the
    flag out gives its default; cilium/pwru reads an empty --backend, --filter-ifname or --kmods as unset and
    refuses an empty --filter-mark)."""
    if not text.strip():
        raise FlagError(flag, "empty value (leave the flag out for its default)")
    return text


_OCTAL = re.compile(r"0[0-7_]+")


def parse_uint(flag: str, value: str, *, minimum: int = 0, maximum: int = 2**64 - 1) -> int:
    """An unsigned integer within [minimum, maximum], spelled as cilium/pwru's flags read it (Go's
    ``strconv.ParseUint(s, 0, 64)``): decimal, ``0x``/``0o``/``0b`` prefixes, a leading ``0`` for octal,
    ``_`` between digits; no sign, no spaces."""
    if value[:1] == "-" and value[1:].isascii() and value[1:].isdigit():
        raise FlagError(flag, f"{value} is out of range ({minimum}..{maximum})")
    try:
        if not value.isascii() or not value[:1].isdigit() or value != value.strip():
            raise ValueError(value)  # Python's int() would take "+5", " 5 " and other scripts' digits
        n = int(value, 8) if _OCTAL.fullmatch(value) else int(value, 0)
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


def _re2_options() -> Any:
    import re2  # only for --filter-func: its import is a second of start-up in the emulated lab

    options = re2.Options()
    options.log_errors = False  # RE2 would also log the parse error to stderr, lines more than the one message
    return options


def parse_func_regex(value: str) -> FuncPattern | None:
    """--filter-func: an RE2 regular expression that must match the whole function name."""
    if not value:
        return None
    import re2

    try:
        compiled = re2.compile(value, options=_re2_options())
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise FlagError("filter-func", f"invalid regular expression {value!r}: {why}") from None
    return FuncPattern(value, compiled)


def parse_netns(value: str) -> tuple[int | None, str | None]:
    """--filter-netns ``/path/to/ns/net`` or ``inode:N`` -> (inode or None, path or None).

    Only the form is checked: a path's inode is looked up later, by :func:`pwru.resolve.resolve`.
    """
    if not value:
        return None, None
    if value.startswith("inode:"):
        inode = parse_uint("filter-netns", value[len("inode:") :], minimum=1, maximum=0xFFFFFFFF)
        return inode, None
    if not value.startswith("/"):
        raise FlagError("filter-netns", f"invalid value {value!r} (use /proc/<pid>/ns/net or inode:<inode>)")
    return None, value


def parse_ifname(value: str) -> str | None:
    """--filter-ifname: a possible interface name (its index is looked up by :func:`pwru.resolve.resolve`)."""
    if not value:
        return None
    if len(value.encode()) >= IFNAMSIZ or "/" in value or not value.strip():
        raise FlagError("filter-ifname", f"invalid interface name {value!r}")
    return value


def split_list(values: list[str]) -> tuple[str, ...]:
    """A repeated, comma-separated list flag (``--kmods a,b --kmods c``) -> ('a', 'b', 'c')."""
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return tuple(out)
