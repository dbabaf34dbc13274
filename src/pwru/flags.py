"""Every command-line flag, declared once: the parser, ``--help``, :class:`~pwru.config.Config` and the kernel
constants all come from :data:`FLAGS`.

A :class:`Flag` names its kind (how its text is read), default, help text and category, the Config field(s)
it fills (``section`` + ``attr``), the function that turns its raw value into those fields' values, and the BPF
constants (``cfg_*`` in pwru.bpf.c) it sets, each computed from the final, resolved Config.

Parsing follows pwru's (pflag) conventions: ``--flag value`` or ``--flag=value``; booleans are ``--flag``,
``--flag=true|false`` (also 1/0, t/f) or ``--no-flag``; list flags repeat and/or take commas. An empty value
(``--backend ''``) is an error: leaving the flag out is how to get its default. Every word that
is not a flag goes to the one ``words`` entry (the pcap filter, joined with spaces); ``--`` ends the flags.
Nothing here touches the file system or a namespace: :func:`pwru.resolve.resolve` does that afterwards.

Adding a flag: add its field to a section dataclass in :mod:`pwru.config`, declare one :class:`Flag` below
(with ``consts`` if the kernel side reads it), and use the field. The parser, ``--help``,
:func:`build_config` and :func:`constants` pick it up; ``tests/unit/test_flags.py`` checks that the table and
the dataclasses agree. :meth:`FlagTable.with_flags` builds an extended table (used by that test).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pwru import config as cfg
from pwru.config import Config, FlagError
from pwru.errors import UserError

#: Kinds: how a flag's text becomes its raw value (what :attr:`Flag.parse` then receives).
BOOL = "bool"  # bool: --flag, --no-flag, --flag=true|false
STR = "str"  # str: the last value given
UINT = "uint"  # int: a decimal >= 0, checked while parsing
LIST = "list"  # list[str]: every value given, in order (commas are split by the parse function)
WORDS = "words"  # list[str]: the words that are not flags (at most one such entry; not a --flag)
KINDS = (BOOL, STR, UINT, LIST, WORDS)

#: Flag categories (for readers of the table; --help lists flags by name, as pwru's, without sections).
FILTERS, OUTPUT, KERNEL, GENERAL = "Filters", "Output", "Kernel", "General"
GROUPS = (FILTERS, OUTPUT, KERNEL, GENERAL)

#: A parse/validate function: the flag's raw value -> its field's value (a tuple when it fills several).
Parse = Callable[[Any], Any]
#: A kernel constant's value, computed from the final (resolved) Config.
KConst = Callable[[Config], int]

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


@dataclass(frozen=True, eq=False)
class Flag:
    """One flag (or the pcap-filter words) and everything derived from it.

    ``section`` is a :class:`Config` section (``"filter"``, ``"output"``, ...), ``""`` for a top-level Config
    field, or None for a flag that fills nothing (``--help``, ``--version``: :func:`pwru.cli.main` acts on
    them). ``attr`` is the field it fills, or a tuple of fields; then ``parse`` returns a tuple of values.
    ``parse`` None keeps the raw value. ``consts`` maps each BPF constant the flag sets to its value.
    ``group`` is its category (one of :data:`GROUPS`); ``--help`` lists every flag by name, as pwru does.
    """

    name: str
    kind: str
    default: object
    help: str
    group: str
    section: str | None
    attr: str | tuple[str, ...] = ()
    parse: Parse | None = None
    consts: Mapping[str, KConst] = field(default_factory=dict)
    metavar: str = ""

    @property
    def attrs(self) -> tuple[str, ...]:
        """The Config fields this flag fills, in ``parse``'s order."""
        return (self.attr,) if isinstance(self.attr, str) else self.attr

    @property
    def fills(self) -> tuple[str, ...]:
        """Dotted paths of the fields it fills (``"filter.mark"``; ``"debug"`` for a top-level field)."""
        if self.section is None:
            return ()
        return tuple(f"{self.section}.{a}" if self.section else a for a in self.attrs)

    def initial(self) -> object:
        """The raw value before any argument is read (a fresh list for list kinds)."""
        if self.kind in (LIST, WORDS):
            assert isinstance(self.default, list | tuple)
            return list(self.default)
        return self.default

    def values(self, raw: object) -> tuple[object, ...]:
        """The raw value -> one value per field in :attr:`attrs`; raises :class:`FlagError`."""
        value = raw if self.parse is None else self.parse(raw)
        if len(self.attrs) == 1:
            return (value,)
        assert isinstance(value, tuple) and len(value) == len(self.attrs), self.name
        return value


def _parse_bool(name: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise FlagError(name, f"invalid boolean {text!r} (use true or false)")


@dataclass(frozen=True, eq=False)
class FlagTable:
    """A checked set of flags and the Config sections they fill: parser, help, Config and constants."""

    flags: tuple[Flag, ...]
    sections: Mapping[str, type] = field(default_factory=lambda: dict(cfg.SECTIONS))

    def __post_init__(self) -> None:
        names: set[str] = set()
        fills: set[str] = set()
        consts: set[str] = set()
        for f in self.flags:
            if f.name in names:
                raise ValueError(f"flag {f.name!r} declared twice")
            if f.kind not in KINDS or f.group not in GROUPS:
                raise ValueError(f"flag {f.name!r}: unknown kind {f.kind!r} or group {f.group!r}")
            if f.section not in (None, "", *self.sections):
                raise ValueError(f"flag {f.name!r}: unknown section {f.section!r}")
            if f.section is not None and not f.attrs:
                raise ValueError(f"flag {f.name!r}: a section but no attr")
            for what, seen, new in (("field", fills, f.fills), ("constant", consts, tuple(f.consts))):
                for item in new:
                    if item in seen:
                        raise ValueError(f"flag {f.name!r}: {what} {item!r} is set by another flag too")
                    seen.add(item)
            names.add(f.name)
        if sum(f.kind == WORDS for f in self.flags) > 1:
            raise ValueError("at most one flag takes the words")

    def with_flags(self, *flags: Flag, sections: Mapping[str, type] | None = None) -> FlagTable:
        """This table plus ``flags`` (and, if given, other section dataclasses): how a new flag is tried out."""
        return FlagTable(self.flags + flags, dict(self.sections if sections is None else sections))

    def filling(self, path: str) -> Flag:
        """The flag that fills the Config field ``path`` (``"filter.mark"``), for messages about its value."""
        return next(f for f in self.flags if path in f.fills)

    def by_name(self, name: str) -> Flag | None:
        """The ``--name`` flag, or None (the words entry is not a ``--flag``)."""
        for f in self.flags:
            if f.name == name and f.kind != WORDS:
                return f
        return None

    @property
    def words(self) -> Flag | None:
        """The entry that takes the words that are not flags."""
        return next((f for f in self.flags if f.kind == WORDS), None)

    def parse_argv(self, argv: Sequence[str]) -> dict[str, object]:
        """``argv`` -> every flag's raw value by name (defaults filled in); the words under the words entry."""
        values: dict[str, object] = {f.name: f.initial() for f in self.flags}
        words: list[str] = []
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                words += args[i:]
                break
            if arg == "-h" and self.by_name("help") is not None:
                values["help"] = True
                continue
            if not arg.startswith("-") or arg == "-":
                words.append(arg)
                continue
            if not arg.startswith("--"):
                raise UserError(f"{arg}: unknown flag (try --help)")
            name, eq, inline = arg[2:].partition("=")
            flag = self.by_name(name)
            negated = False
            if flag is None and name.startswith("no-"):
                flag = self.by_name(name[3:])
                if flag is not None:
                    name, negated = name[3:], True
            if flag is None:
                raise UserError(f"--{name}: unknown flag (try --help)")
            if flag.kind == BOOL:
                if negated and eq:
                    raise FlagError(name, f"--no-{name} takes no value")
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
                raise FlagError(name, "needs a value")
            # An empty value is refused, not read as "unset" (a list's empty items are dropped, so "," is too).
            cfg.check_not_empty(name, text.replace(",", "") if flag.kind == LIST else text)
            if flag.kind == LIST:
                current = values[name]
                assert isinstance(current, list)
                current.append(text)
            elif flag.kind == UINT:
                values[name] = cfg.parse_uint(name, text)
            else:
                values[name] = text
        w = self.words
        if w is not None:
            values[w.name] = words
        elif words:
            raise UserError(f"{words[0]}: unexpected argument")
        return values

    def build_config(self, values: Mapping[str, object]) -> Config:
        """Raw values (from :meth:`parse_argv`) -> a validated, not yet resolved :class:`Config`."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {name: {} for name in self.sections}
        for f in self.flags:
            if f.section is None:
                continue
            target = top if f.section == "" else sections[f.section]
            target.update(zip(f.attrs, f.values(values[f.name]), strict=True))
        return Config(**top, **{name: cls(**sections[name]) for name, cls in self.sections.items()})

    def constants(self, config: Config) -> dict[str, int]:
        """Every kernel constant the flags set, from the final (resolved) ``config``."""
        return {name: int(value(config)) for f in self.flags for name, value in f.consts.items()}

    def usage(self) -> str:
        """The --help text as pwru's: every flag in one list sorted by name (pflag sorts them, so pwru's groups
        are its name prefixes: ``filter-*``, ``output-*``), pflag-like lines with the help text in one column."""
        w = self.words
        lines = ["Usage: pwru [options]" + (f" [{w.name}]" if w else "")]
        if w is not None:
            lines.append(f"    Available {w.name}: {w.help}")
        lines.append("    Available options:")
        members = sorted((f for f in self.flags if f.kind != WORDS), key=lambda f: f.name)
        width = max((len(_usage_left(f)) for f in members), default=0) + 2
        lines += [_usage_line(f, width) for f in members]
        return "\n".join(lines) + "\n"


def _usage_left(f: Flag) -> str:
    return ("  -h, " if f.name == "help" else "      ") + f"--{f.name}" + (f" {f.metavar}" if f.metavar else "")


def _usage_line(f: Flag, width: int) -> str:
    left = _usage_left(f)
    default = ""
    if f.kind == BOOL and f.default is True:
        default = " (default true)"
    elif f.kind == STR and f.default != "":
        default = f' (default "{f.default}")'
    elif f.kind == UINT and f.default != 0:
        default = f" (default {f.default})"
    return f"{left:<{width}} {f.help}{default}"


# --- parse functions ------------------------------------------------------------------------------------------


def _optional(value: str) -> str | None:
    return value or None


def _join(words: list[str]) -> str:
    return " ".join(words).strip()


def _mark(value: str) -> tuple[int, int]:
    return cfg.parse_mark(value) if value else (0, 0)


def _timestamp(value: str) -> str:
    return cfg.parse_choice("timestamp", value, cfg.TIMESTAMP_MODES)


def _shown(part: str, journey: bool = False) -> dict[str, KConst]:
    """``cfg_output_<part>``: whether the kernel side fills that part of the event (a boolean output flag; with
    ``journey`` also when --output-journey needs it: the journey shows devices and tuple changes)."""
    return {f"cfg_output_{part}": lambda c: int(getattr(c.output, part) or (journey and c.output.journey))}


def _journey_bound(flag: str, maximum: int) -> Parse:
    def parse(value: int) -> int:
        if not 1 <= value <= maximum:
            raise FlagError(flag, f"{value} is out of range (1..{maximum})")
        return value

    return parse


def _metadata_exprs(values: list[str], flag: str = "output-skb-metadata") -> list[str]:
    """--output-skb-metadata's (--output-xdp-metadata's) expressions (comma-separated as well, as pwru's string
    slice)."""
    exprs = [e.strip() for v in values for e in v.split(",")]
    if any(not e for e in exprs):
        raise FlagError(flag, "empty expression")
    return exprs


def _max_size(value: int) -> int:
    if value == 0:
        raise FlagError("output-file-max-size", "must be at least 1 (MB)")
    return value


def _kprobe_batch(value: int) -> int:
    if value == 0:
        raise FlagError("filter-kprobe-batch", "must be greater than 0")
    return value


def _percpu_buf(value: int) -> int:
    low, high = cfg.PERCPU_BUF_RANGE
    if not low <= value <= high:
        raise FlagError("set-percpu-buf", f"{value} is out of range ({low}..{high} bytes)")
    return value


def _netns_names_max_length(value: int) -> int:
    if value > cfg.NETNS_NAMES_MAX_LENGTH:
        raise FlagError("netns-names-max-length", f"{value} is out of range (at most {cfg.NETNS_NAMES_MAX_LENGTH})")
    return max(value, cfg.NETNS_NAMES_MIN_LENGTH)  # pwru raises a smaller value to its least


def _pcap_snaplen(value: int) -> int:
    if not 1 <= value <= cfg.PCAP_SNAPLEN_MAX:
        raise FlagError("output-pcap-snaplen", f"{value} is out of range (1..{cfg.PCAP_SNAPLEN_MAX})")
    return value


def _summary_interval(value: str) -> int:
    """A str flag, so that an explicit 0 is told from the flag left out (0: no interval)."""
    return cfg.parse_uint("summary-interval", value, minimum=1, maximum=1 << 31) if value else 0


def _ring_size(value: int) -> int:
    page_kib = max(1, os.sysconf("SC_PAGE_SIZE") // 1024)
    if value < page_kib or value > 1 << 20 or value & (value - 1):
        raise FlagError("output-ring-size", f"{value} KiB: a power of two from {page_kib} (the page size) to {1 << 20}")
    return value


def _track_max(value: int) -> int:
    if not 1 <= value <= 1 << 24:
        raise FlagError("filter-track-skb-max", f"{value} is out of range (1..{1 << 24})")
    return value


# --- the table --------------------------------------------------------------------------------------------------

FLAGS: tuple[Flag, ...] = (
    Flag("pcap-filter", WORDS, [], 'see "man 7 pcap-filter"', FILTERS, "filter", "pcap", parse=_join),
    # Filters
    Flag(
        "filter-func",
        STR,
        "",
        "filter kernel functions to be probed by name (RE2 regular expression matching the whole name)",
        FILTERS,
        "filter",
        "func",
        parse=cfg.parse_func_regex,
        metavar="string",
    ),
    Flag(
        "filter-track-skb",
        BOOL,
        False,
        "trace a packet even if it does not match given filters (e.g., after NAT or tunnel decapsulation)",
        FILTERS,
        "tracking",
        "skb",
        consts={"cfg_track_skb": lambda c: c.tracking.skb},
    ),
    Flag(
        "filter-track-skb-by-stackid",
        BOOL,
        False,
        "trace a packet even after it is kfreed (e.g., traffic going through bridge)",
        FILTERS,
        "tracking",
        "by_stackid",
        consts={"cfg_track_stackid": lambda c: c.tracking.stackid},
    ),
    Flag(
        "filter-non-skb-funcs",
        LIST,
        [],
        "filter non-skb kernel functions to be probed (--filter-track-skb-by-stackid will be enabled)",
        FILTERS,
        "tracking",
        "non_skb_funcs",
        parse=cfg.split_list,
        metavar="strings",
    ),
    Flag(
        "filter-track-skb-max",
        UINT,
        cfg.TRACK_MAX_DEFAULT,
        "most skbs tracked at once (those beyond are counted and reported at exit)",
        FILTERS,
        "tracking",
        "max_entries",
        parse=_track_max,
        metavar="uint",
    ),
    Flag(
        "filter-kprobe-batch",
        UINT,
        cfg.KPROBE_BATCH_DEFAULT,
        "batch size for kprobe attaching (the kprobe backend's; the others ignore it)",
        FILTERS,
        "kernel",
        "kprobe_batch",
        parse=_kprobe_batch,
        metavar="uint",
    ),
    Flag(
        "filter-netns",
        STR,
        "",
        'filter netns ("/proc/<pid>/ns/net", "inode:<inode>")',
        FILTERS,
        "filter",
        ("netns", "netns_path"),
        parse=cfg.parse_netns,
        consts={"cfg_netns": lambda c: c.filter.netns or 0},
        metavar="string",
    ),
    Flag(
        "filter-mark",
        STR,
        "",
        "filter skb mark (e.g. 0xa00/0xf00; exact without mask)",
        FILTERS,
        "filter",
        ("mark", "mark_mask"),
        parse=_mark,
        consts={"cfg_mark": lambda c: c.filter.mark, "cfg_mark_mask": lambda c: c.filter.mark_mask},
        metavar="mark[/mask]",
    ),
    Flag(
        "filter-trace-netfilter",
        STR,
        "auto",
        "also observe packets at the first and last priority of each netfilter hook, in every netns "
        f"({', '.join(cfg.NETFILTER_MODES)}; auto: with the tracepoint backend when the kernel has netfilter links; "
        "unless false they are attached, unseen, to name the hook of netfilter drops)",
        FILTERS,
        "filter",
        "trace_netfilter",
        parse=cfg.parse_trace_netfilter,
        metavar="string",
    ),
    Flag("filter-trace-tc", BOOL, False, "trace TC bpf progs (their entry and, with the verdict, exit)", FILTERS,
         "filter", "trace_tc"),
    Flag("filter-trace-xdp", BOOL, False, "trace XDP bpf progs (their entry and, with the verdict, exit)", FILTERS,
         "filter", "trace_xdp"),
    Flag("filter-track-bpf-helpers", BOOL, False, "trace BPF helper functions (those taking an skb, found in kernel "
         "BTF; the caller column names the BPF program, tail-called ones too)", FILTERS, "filter",
         "track_bpf_helpers"),
    Flag("filter-trace-tc-chain", BOOL, False, "show each skb before and after each device's tc chain (tcx links "
         "first and last on ingress and egress; no fentry needed, unlike --filter-trace-tc)", FILTERS, "filter",
         "trace_tc_chain"),
    Flag(
        "filter-ifname",
        STR,
        "",
        "filter skb ifname in --filter-netns (else the current netns)",
        FILTERS,
        "filter",
        "ifname",
        parse=cfg.parse_ifname,
        consts={"cfg_ifindex": lambda c: c.filter.ifindex or 0},
        metavar="string",
    ),
    # The tunnel filters' constants (cfg_has_tunnel_pcap_*) come with the spliced code, from run.build_object.
    Flag(
        "filter-tunnel-pcap-l2",
        STR,
        "",
        "pcap expression for vxlan/geneve tunnel (l2)",
        FILTERS,
        "filter",
        "tunnel_pcap_l2",
        metavar="string",
    ),
    Flag(
        "filter-tunnel-pcap-l3",
        STR,
        "",
        "pcap expression for vxlan/geneve tunnel (l3)",
        FILTERS,
        "filter",
        "tunnel_pcap_l3",
        metavar="string",
    ),
    # cfg_has_skb_expr comes with the spliced code, from run.build_object.
    Flag(
        "filter-skb-expr",
        STR,
        "",
        "filter skb with a C expression over struct sk_buff, like 'skb->dev->ifindex == 1 && skb->len > 100'",
        FILTERS,
        "filter",
        "skb_expr",
        metavar="string",
    ),
    # cfg_has_xdp_expr comes with the spliced code, from run.build_object.
    Flag(
        "filter-xdp-expr",
        STR,
        "",
        "filter xdp (--filter-trace-xdp) with a C expression over struct xdp_buff, like "
        "'xdp->rxq->dev->ifindex == 9'",
        FILTERS,
        "filter",
        "xdp_expr",
        metavar="string",
    ),
    # Output
    Flag("output-meta", BOOL, True, "print skb metadata", OUTPUT, "output", "meta", consts=_shown("meta", True)),
    Flag("output-tuple", BOOL, True, "print L4 tuple", OUTPUT, "output", "tuple", consts=_shown("tuple", True)),
    Flag(
        "output-tunnel",
        BOOL,
        False,
        "print encapsulated tunnel header data",
        OUTPUT,
        "output",
        "tunnel",
        consts=_shown("tunnel"),
    ),
    Flag("output-tcp-flags", BOOL, False, "print TCP flags", OUTPUT, "output", "tcp_flags"),
    Flag(
        "output-skb", BOOL, False, "print skb", OUTPUT, "output", "skb",
        consts={"cfg_output_skb": lambda c: c.output.skb},
    ),
    Flag(
        "output-skb-shared-info", BOOL, False, "print skb shared info", OUTPUT, "output", "shared_info",
        consts={"cfg_output_shinfo": lambda c: c.output.shared_info},
    ),
    Flag(
        "output-skb-cb", BOOL, False, "print skb->cb", OUTPUT, "output", "skb_cb",
        consts={"cfg_output_cb": lambda c: c.output.skb_cb and c.output.meta},
    ),
    Flag(
        "output-bpfmap", BOOL, False,
        "print function arguments related to bpf maps (--filter-track-skb-by-stackid will be enabled)",
        OUTPUT, "output", "bpfmap",
    ),
    Flag(
        "set-percpu-buf",
        UINT,
        cfg.PERCPU_BUF_DEFAULT,
        "set the size of buffers to print skb data (used by --output-skb and --output-skb-shared-info)",
        OUTPUT,
        "output",
        "percpu_buf",
        parse=_percpu_buf,
        consts={"cfg_percpu_buf": lambda c: c.output.percpu_buf},
        metavar="uint32",
    ),
    Flag("output-netns-names", BOOL, False, "print netns names where possible", OUTPUT, "output", "netns_names"),
    Flag(
        "netns-names-max-length",
        UINT,
        cfg.NETNS_NAMES_MAX_LENGTH_DEFAULT,
        "maximum number of chars to print per netns name (when not outputting JSON) (min 10)",
        OUTPUT,
        "output",
        "netns_names_max_length",
        parse=_netns_names_max_length,
        metavar="uint8",
    ),
    Flag("output-stack", BOOL, False, "print stack", OUTPUT, "output", "stack", consts=_shown("stack")),
    Flag(
        "output-caller",
        BOOL,
        False,
        "print caller function name",
        OUTPUT,
        "output",
        "caller",
        consts=_shown("caller"),
    ),
    Flag("output-json", BOOL, False, "output traces in JSON format", OUTPUT, "output", "json"),
    # cfg_metadata_size comes with the spliced code, from run.build_object.
    Flag(
        "output-skb-metadata",
        LIST,
        [],
        'print skb metadata: C expressions over skb (e.g., "skb->mark", "skb->dev->name"), 16 at most',
        OUTPUT,
        "output",
        "skb_metadata",
        parse=lambda v: tuple(_metadata_exprs(v)),
        metavar="strings",
    ),
    Flag(
        "output-xdp-metadata",
        LIST,
        [],
        'print xdp metadata (--filter-trace-xdp): C expressions over xdp (e.g., "xdp->rxq->queue_index"), 16 at most',
        OUTPUT,
        "output",
        "xdp_metadata",
        parse=lambda v: tuple(_metadata_exprs(v, "output-xdp-metadata")),
        metavar="strings",
    ),
    Flag(
        "output-journey",
        BOOL,
        False,
        "print one block per packet when its skb is freed: its hops with the time between them, tuple changes "
        "(NAT, encapsulation), clones, and the verdict (delivered, sent, dropped and why, consumed); implies "
        "--filter-track-skb; with --output-json one object per journey",
        OUTPUT,
        "output",
        "journey",
        consts={"cfg_output_journey": lambda c: c.output.journey},
    ),
    Flag(
        "output-journey-timeout",
        UINT,
        cfg.JOURNEY_TIMEOUT_DEFAULT,
        "print a journey whose packet had no event for this many milliseconds without waiting for its end",
        OUTPUT,
        "output",
        "journey_timeout",
        parse=_journey_bound("output-journey-timeout", 3_600_000),
        metavar="ms",
    ),
    Flag(
        "output-journey-max",
        UINT,
        cfg.JOURNEY_MAX_DEFAULT,
        "most journeys held at once; beyond, the one idle longest is printed early, marked cut",
        OUTPUT,
        "output",
        "journey_max",
        parse=_journey_bound("output-journey-max", 1 << 20),
        metavar="N",
    ),
    Flag(
        "output-journey-max-hops",
        UINT,
        cfg.JOURNEY_MAX_HOPS_DEFAULT,
        "most hops held per journey; beyond, the hops so far are printed, marked cut, and the journey goes on",
        OUTPUT,
        "output",
        "journey_max_hops",
        parse=_journey_bound("output-journey-max-hops", 1 << 16),
        metavar="N",
    ),
    Flag(
        "output-explain",
        BOOL,
        False,
        "after each drop, what its reason means and what to check next (JSON: an explanation key)",
        OUTPUT,
        "output",
        "explain",
    ),
    Flag(
        "summary",
        BOOL,
        False,
        "count in the kernel how the selected skbs end (dropped, by reason and where; consumed) and print a table "
        "at exit, to the output (stdout or --output-file; JSON with --output-json); no events are printed or even "
        "written by the kernel unless --summary-events",
        OUTPUT,
        "output",
        "summary",
        consts={"cfg_summary": lambda c: c.output.summarises},
    ),
    Flag(
        "summary-interval",
        STR,
        "",
        "also print the summary every N seconds (implies --summary)",
        OUTPUT,
        "output",
        "summary_interval",
        parse=_summary_interval,
        metavar="N",
    ),
    Flag(
        "summary-events",
        BOOL,
        False,
        "with --summary, print the events too (the table then goes to stderr; implies --summary)",
        OUTPUT,
        "output",
        "summary_events",
        consts={"cfg_emit": lambda c: c.output.events},
    ),
    Flag(
        "output-ring-size",
        UINT,
        cfg.RING_SIZE_DEFAULT,
        "size of the kernel's event ring buffer in KiB (a power of two); events that do not fit are counted lost",
        OUTPUT,
        "output",
        "ring_size",
        parse=_ring_size,
        metavar="KiB",
    ),
    Flag(
        "output-limit-lines",
        UINT,
        0,
        "exit after this many events have been printed (0: no limit)",
        OUTPUT,
        "output",
        "limit_lines",
        metavar="uint",
    ),
    Flag(
        "output-file",
        STR,
        "",
        "write traces to file (rotates at 100MB by default)",
        OUTPUT,
        "output",
        "file",
        parse=_optional,
        metavar="string",
    ),
    Flag(
        "output-file-max-size",
        UINT,
        100,
        "max size in MB per file before rotation",
        OUTPUT,
        "output",
        "file_max_size",
        parse=_max_size,
        metavar="int",
    ),
    Flag(
        "output-file-max-backups",
        UINT,
        0,
        "max number of rotated files to keep (0: no limit)",
        OUTPUT,
        "output",
        "file_max_backups",
        metavar="int",
    ),
    Flag(
        "output-file-max-age",
        UINT,
        0,
        "max age in days to keep rotated files (0: no limit)",
        OUTPUT,
        "output",
        "file_max_age",
        metavar="int",
    ),
    Flag("output-file-compress", BOOL, False, "compress rotated files with gzip", OUTPUT, "output", "file_compress"),
    Flag(
        "output-pcap",
        STR,
        "",
        'write each event\'s packet bytes as pcapng to this file ("-": standard output, where the text or JSON '
        "lines then do not go: they go to --output-file when given)",
        OUTPUT,
        "output",
        "pcap",
        parse=_optional,
        consts={"cfg_output_pcap": lambda c: c.output.pcap is not None},
        metavar="string",
    ),
    Flag(
        "output-raw",
        STR,
        "",
        "write the kernel's records as they come to this file, at ring-buffer speed, for `pwru print FILE "
        "[output flags]` to format later (text, JSON, any --timestamp, limit, explanations)",
        OUTPUT,
        "output",
        "raw",
        parse=_optional,
        metavar="string",
    ),
    Flag(
        "output-pcap-snaplen",
        UINT,
        cfg.PCAP_SNAPLEN_DEFAULT,
        f"most bytes of each packet --output-pcap captures (1..{cfg.PCAP_SNAPLEN_MAX})",
        OUTPUT,
        "output",
        "pcap_snaplen",
        parse=_pcap_snaplen,
        consts={"cfg_pcap_snaplen": lambda c: c.output.pcap_snaplen},
        metavar="int",
    ),
    Flag(
        "timestamp",
        STR,
        "none",
        "print timestamp per skb (current, relative, absolute, none)",
        OUTPUT,
        "output",
        "timestamp",
        parse=_timestamp,
        metavar="string",
    ),
    # Kernel
    Flag(
        "backend",
        STR,
        "auto",
        f"tracing backend ({', '.join(cfg.BACKENDS)})",
        KERNEL,
        "kernel",
        "backend",
        parse=cfg.parse_backend,
        metavar="string",
    ),
    Flag(
        "list-backends",
        BOOL,
        False,
        "list the backends and whether this kernel allows them, then exit",
        KERNEL,
        "",
        "list_backends",
    ),
    Flag(
        "list-funcs",
        BOOL,
        False,
        "list the functions and tracepoints that would be traced, then exit",
        KERNEL,
        "",
        "list_funcs",
    ),
    Flag(
        "kernel-btf",
        STR,
        "",
        "specify kernel BTF file",
        KERNEL,
        "kernel",
        "kernel_btf",
        parse=_optional,
        metavar="string",
    ),
    Flag(
        "kmods",
        LIST,
        [],
        "list of kernel modules names to attach to",
        KERNEL,
        "kernel",
        "kmods",
        parse=cfg.split_list,
        metavar="strings",
    ),
    Flag("all-kmods", BOOL, False, "attach to all available kernel modules", KERNEL, "kernel", "all_kmods"),
    # General
    Flag("help", BOOL, False, "display this message and exit", GENERAL, None),
    Flag("version", BOOL, False, "show pwru version and exit", GENERAL, None),
    Flag(
        "ready-file",
        STR,
        "",
        "create file after all BPF progs are attached",
        GENERAL,
        "",
        "ready_file",
        parse=_optional,
        metavar="string",
    ),
    Flag("debug", BOOL, False, "enable debug logging", GENERAL, "", "debug"),
)

#: The table pwru uses.
TABLE = FlagTable(FLAGS)


def parse_argv(argv: Sequence[str]) -> dict[str, object]:
    """``argv`` -> every flag's raw value by name (see :meth:`FlagTable.parse_argv`); pure."""
    return TABLE.parse_argv(argv)


def build_config(values: Mapping[str, object]) -> Config:
    """Raw values -> a validated Config, not yet resolved (see :func:`pwru.resolve.resolve`); pure."""
    return TABLE.build_config(values)


def parse_config(argv: Sequence[str]) -> Config:
    """``argv`` -> a validated Config, not yet resolved; ignores --help/--version."""
    return TABLE.build_config(TABLE.parse_argv(argv))


def usage() -> str:
    """The --help text."""
    return TABLE.usage()


def constants(config: Config) -> dict[str, int]:
    """Every kernel constant the flags set (all but the ``cfg_has_*pcap*`` that come with the spliced filters),
    from the final (resolved) ``config``."""
    return TABLE.constants(config)
