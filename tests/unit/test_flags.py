"""The flag table: parser, --help, Config and kernel constants all come from one declaration per flag."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from pwru import config as cfg
from pwru import flags, netfilter, netns, nf_rules, resolve
from pwru.config import Config, FilterConfig, OutputConfig
from pwru.errors import UserError

BPF_SOURCE = Path(flags.__file__).parent / "bpf" / "pwru.bpf.c"


def _fields_of_config() -> set[str]:
    """Every leaf field of Config: ``section.attr`` for sections, ``attr`` for top-level fields."""
    out: set[str] = set()
    for f in dataclasses.fields(Config):
        if f.name in cfg.SECTIONS:
            out |= {f"{f.name}.{g.name}" for g in dataclasses.fields(cfg.SECTIONS[f.name])}
        else:
            out.add(f.name)
    return out


def test_every_config_field_is_filled_exactly_once() -> None:
    filled: list[str] = [path for f in flags.FLAGS for path in f.fills] + list(resolve.FILLS)
    assert sorted(filled) == sorted(set(filled)), "a field is filled twice"
    assert set(filled) == _fields_of_config()


def test_only_help_and_version_fill_nothing() -> None:
    assert {f.name for f in flags.FLAGS if not f.fills} == {"help", "version"}


def test_defaults_build_the_default_config() -> None:
    assert flags.build_config(flags.parse_argv([])) == Config()


def test_each_flag_default_is_its_fields_default() -> None:
    values = flags.parse_argv([])
    default = Config()
    for f in flags.FLAGS:
        if f.section is None:
            continue
        for path, value in zip(f.fills, f.values(values[f.name]), strict=True):
            obj: object = default
            for part in path.split("."):
                obj = getattr(obj, part)
            assert obj == value, f.name


def test_parsing_touches_no_file_and_no_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsing looked at the host")

    for mod, name in [(os, "stat"), (os, "open"), (os.path, "exists"), (os.path, "isdir"), (netns, "netns_inode")]:
        monkeypatch.setattr(mod, name, forbidden)
    monkeypatch.setattr(netns, "ifindex", forbidden)
    monkeypatch.setattr(netns, "find_netns_path", forbidden)
    c = flags.parse_config(
        [
            "--filter-netns=/no/such/ns",
            "--filter-ifname=nosuchif0",
            "--output-file=/no/such/dir/out",
            "--kernel-btf=/no/such/btf",
            "--ready-file=/no/such/dir/ready",
            "tcp",
        ]
    )
    assert c.filter == FilterConfig(pcap="tcp", netns_path="/no/such/ns", ifname="nosuchif0")
    assert (c.output.file, c.kernel.kernel_btf) == ("/no/such/dir/out", "/no/such/btf")
    assert c.ready_file == "/no/such/dir/ready"


def test_constants_of_the_default_config() -> None:
    assert flags.constants(Config()) == {
        "cfg_netns": 0,
        "cfg_mark": 0,
        "cfg_mark_mask": 0,
        "cfg_ifindex": 0,
        "cfg_output_meta": 1,
        "cfg_output_tuple": 1,
        "cfg_output_stack": 0,
        "cfg_output_caller": 0,
        "cfg_track_skb": 0,
        "cfg_track_stackid": 0,
        "cfg_output_tunnel": 0,
        "cfg_output_skb": 0,
        "cfg_output_shinfo": 0,
        "cfg_output_cb": 0,
        "cfg_percpu_buf": 4096,
        "cfg_output_pcap": 0,
        "cfg_pcap_snaplen": 256,
        "cfg_summary": 0,
        "cfg_emit": 1,
        "cfg_output_journey": 0,
    }


def test_constants_come_from_the_resolved_config() -> None:
    c = resolve.resolve(
        flags.parse_config(
            ["--filter-ifname=lo", "--filter-mark=0xabc/0xf00", "--no-output-meta", "--output-stack", "--output-caller",
             "--filter-non-skb-funcs=fib_table_lookup"]
        )
    )
    assert flags.constants(c) == {
        "cfg_netns": os.stat("/proc/self/ns/net").st_ino,
        "cfg_mark": 0xA00,
        "cfg_mark_mask": 0xF00,
        "cfg_ifindex": 1,
        "cfg_output_meta": 0,
        "cfg_output_tuple": 1,
        "cfg_output_stack": 1,
        "cfg_output_caller": 1,
        "cfg_track_skb": 0,
        "cfg_track_stackid": 1,  # implied by --filter-non-skb-funcs, as in pwru
        "cfg_output_tunnel": 0,
        "cfg_output_skb": 0,
        "cfg_output_shinfo": 0,
        "cfg_output_cb": 0,
        "cfg_percpu_buf": 4096,
        "cfg_output_pcap": 0,
        "cfg_pcap_snaplen": 256,
        "cfg_summary": 0,
        "cfg_emit": 1,
        "cfg_output_journey": 0,
    }
    pcap = resolve.resolve(flags.parse_config(["--output-pcap=-", "--output-pcap-snaplen=1500"]))
    assert (flags.constants(pcap)["cfg_output_pcap"], flags.constants(pcap)["cfg_pcap_snaplen"]) == (1, 1500)
    assert flags.constants(Config(filter=FilterConfig(netns=7)))["cfg_netns"] == 7


def test_constants_exist_in_the_bpf_program() -> None:
    declared = set(re.findall(r"const volatile \w+ (cfg_\w+)", BPF_SOURCE.read_text()))
    names = set(flags.constants(Config()))
    assert names <= declared
    # The rest come with the spliced code (the filters, the C expressions: from run.build_object, which returns
    # exactly these), with the plan's netfilter points (netfilter.constants) or are set per attached program
    # (cfg_tp_*, cfg_probe_id, cfg_ret_pos, cfg_nf_point, cfg_nf_probe_ids, cfg_nf_shown; cfg_emit, which
    # --summary-events sets, is also 0 per load for probes that keep state only).
    from pwru.run import build_object

    spliced = set(build_object(Config())[1])
    assert spliced >= {"cfg_has_pcap", "cfg_has_tunnel_pcap_l2", "cfg_has_skb_expr", "cfg_metadata_size"}
    nf = set(netfilter.constants([], {})) | set(nf_rules.constants([]))
    per_load = {"cfg_probe_id", "cfg_ret_pos", "cfg_nf_point", "cfg_nf_skb_pos", "cfg_nf_priv_pos", "cfg_nf_kind"}
    per_load |= {"cfg_nf_probe_ids", "cfg_nf_shown"}
    assert {n for n in declared - names if not n.startswith("cfg_tp_")} == spliced | nf | per_load


def test_help_lists_every_flag_by_name_as_pwru() -> None:
    """pwru's --help (pflag's PrintDefaults) has no sections: every flag in one list, sorted by name, so that its
    groups are the name prefixes (filter-*, output-*); the help texts start in one column."""
    text = flags.usage()
    lines = text.splitlines()
    assert lines[:3] == [
        "Usage: pwru [options] [pcap-filter]",
        '    Available pcap-filter: see "man 7 pcap-filter"',
        "    Available options:",
    ]
    seen = [m.group(1) for line in lines[3:] if (m := re.match(r"(?:  -h, |      )--([a-z0-9-]+)", line))]
    assert len(seen) == len(lines) - 3  # nothing but flag lines
    assert seen == sorted(f.name for f in flags.FLAGS if f.kind != flags.WORDS)  # every flag, by name
    column = {re.search(r"^.*?--\S+(?: \S+)? +", line).end() for line in lines[3:]}  # type: ignore[union-attr]
    assert len(column) == 1, column
    # pwru's type names for its flags
    assert re.search(r"--filter-kprobe-batch uint +batch size", text)
    assert re.search(r"--set-percpu-buf uint32 +set the size .* \(default 4096\)", text)
    assert re.search(r"--netns-names-max-length uint8 +.*\(default 16\)", text)
    assert re.search(r"--filter-mark mark\[/mask\] ", text) and re.search(r"--output-limit-lines uint ", text)
    assert "  -h, --help" in text and "      --debug" in text
    assert re.search(r"--output-meta +print skb metadata \(default true\)", text)
    assert re.search(r'--backend string +tracing backend .* \(default "auto"\)', text)
    assert re.search(r"--output-file-max-size int +max size in MB per file before rotation \(default 100\)", text)
    assert "--output-json" in text and "(default false)" not in text


def test_table_refuses_drift() -> None:
    base = flags.FLAGS
    with pytest.raises(ValueError, match="declared twice"):
        flags.FlagTable((*base, base[1]))
    dup_field = flags.Flag("json-too", flags.BOOL, False, "x", flags.OUTPUT, "output", "json")
    with pytest.raises(ValueError, match=r"field 'output.json' is set by another flag"):
        flags.TABLE.with_flags(dup_field)
    dup_const = flags.Flag("x", flags.BOOL, False, "x", flags.OUTPUT, None, consts={"cfg_mark": lambda c: 0})
    with pytest.raises(ValueError, match=r"constant 'cfg_mark'"):
        flags.TABLE.with_flags(dup_const)
    with pytest.raises(ValueError, match="unknown section"):
        flags.TABLE.with_flags(flags.Flag("y", flags.BOOL, False, "y", flags.OUTPUT, "outptu", "z"))
    with pytest.raises(ValueError, match="unknown kind"):
        flags.TABLE.with_flags(flags.Flag("y", "float", 0.0, "y", flags.OUTPUT, None))


# --- how to add a flag ---------------------------------------------------------------------------------------
#
# 1. Add the field to its section dataclass in pwru/config.py (here: a TrackingConfig subclass stands in for
#    that edit, so the real Config stays as it is).
# 2. Declare one Flag: name, kind, default, help, group, section + attr, parse function, kernel constants.
# 3. Use config.tracking.follow where it matters. Nothing else changes: parser, --help, Config, constants follow.


@dataclasses.dataclass(frozen=True)
class _Tracking(cfg.TrackingConfig):
    follow: bool = False
    follow_size: int = 0


FOLLOW = flags.Flag(
    "filter-follow-example",
    flags.BOOL,
    False,
    "an example flag",
    flags.FILTERS,
    "tracking",
    "follow",
    consts={"cfg_follow_example": lambda c: int(getattr(c.tracking, "follow", False))},
)
FOLLOW_SIZE = flags.Flag(
    "filter-follow-example-size",
    flags.UINT,
    10000,
    "the size of the example's map",
    flags.FILTERS,
    "tracking",
    "follow_size",
    parse=lambda n: n,
    metavar="uint",
)


def test_how_to_add_a_flag() -> None:
    table = flags.TABLE.with_flags(FOLLOW, FOLLOW_SIZE, sections={**cfg.SECTIONS, "tracking": _Tracking})
    # The parser knows it, in every pflag style.
    c = table.build_config(table.parse_argv(["--filter-follow-example", "--filter-follow-example-size=5", "tcp"]))
    assert c.tracking == _Tracking(follow=True, follow_size=5) and c.filter.pcap == "tcp"
    c = table.build_config(table.parse_argv(["--filter-follow-example=false"]))
    assert c.tracking == _Tracking(follow=False, follow_size=10000)
    assert table.build_config(table.parse_argv(["--filter-follow-example", "--no-filter-follow-example"])) == c
    # --help lists it among the others by name, with its default.
    help_text = table.usage()
    listed = [ln.split()[0] for ln in help_text.splitlines()[3:]]
    assert listed.index("--filter-follow-example") == listed.index("--filter-func") - 2  # sorted by name
    assert re.search(r"--filter-follow-example-size uint +.*\(default 10000\)", help_text)
    # The kernel constant follows the config.
    assert table.constants(c)["cfg_follow_example"] == 0
    on = table.build_config(table.parse_argv(["--filter-follow-example"]))
    assert table.constants(on) == {**flags.constants(Config()), "cfg_follow_example": 1}
    # Bad values are the usual one-line flag errors.
    with pytest.raises(cfg.FlagError, match=r"^--filter-follow-example-size: not a number: 'x'$"):
        table.parse_argv(["--filter-follow-example-size", "x"])
    # The real table does not know it.
    with pytest.raises(UserError, match="unknown flag"):
        flags.parse_argv(["--filter-follow-example"])
    assert flags.build_config(flags.parse_argv([])).output == OutputConfig()
