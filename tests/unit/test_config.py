"""Config validators: values in, checked values out, one-line FlagErrors naming the flag."""

from __future__ import annotations

import os
import re

import pytest

from pwru import config as cfg


def test_defaults_match_pwru() -> None:
    c = cfg.Config()
    assert c.backend == "auto"
    assert c.output_meta and c.output_tuple
    assert not (c.output_tcp_flags or c.output_stack or c.output_caller or c.output_json)
    assert c.output_file_max_size == 100 and c.output_file_max_bytes == 100 * 1024 * 1024
    assert c.timestamp == "none"
    assert (c.filter_mark, c.filter_mark_mask) == (0, 0)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        cfg.Config().debug = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0xa00/0xf00", (0xA00, 0xF00)),
        ("0xabc/0xf00", (0xA00, 0xF00)),  # mark is stored masked
        ("42", (42, 0xFFFFFFFF)),
        ("0XFF", (0xFF, 0xFFFFFFFF)),
        ("10/0xff", (10, 0xFF)),
        ("0xffffffff", (0xFFFFFFFF, 0xFFFFFFFF)),
    ],
)
def test_parse_mark(text: str, expected: tuple[int, int]) -> None:
    assert cfg.parse_mark(text) == expected


@pytest.mark.parametrize("text", ["", "0x", "zz", "1/2/3", "0x100000000", "-1", "1/", "0xg1", "1.5"])
def test_parse_mark_errors(text: str) -> None:
    with pytest.raises(cfg.FlagError) as e:
        cfg.parse_mark(text)
    assert str(e.value).startswith("--filter-mark: ")
    assert "\n" not in str(e.value)


def test_func_regex_matches_whole_name() -> None:
    c = cfg.Config(filter_func=cfg.parse_func_regex("ip_rcv"))
    assert c.func_allowed("ip_rcv")
    assert not c.func_allowed("ip_rcv_core")
    c = cfg.Config(filter_func=cfg.parse_func_regex(".*udp.*"))
    assert c.func_allowed("__udp4_lib_rcv") and not c.func_allowed("ip_rcv")
    assert cfg.Config().func_allowed("anything")
    assert cfg.parse_func_regex("") is None


def test_func_regex_error() -> None:
    with pytest.raises(cfg.FlagError, match=r"^--filter-func: invalid regular expression"):
        cfg.parse_func_regex("ip_(rcv")


def test_backend() -> None:
    assert cfg.parse_backend("") == "auto"
    for b in cfg.BACKENDS:
        assert cfg.parse_backend(b) == b
    with pytest.raises(cfg.FlagError, match=r"^--backend: invalid value 'kprobes'"):
        cfg.parse_backend("kprobes")


def test_parse_uint() -> None:
    assert cfg.parse_uint("x", "12") == 12
    for bad in ("-1", "1e3", "", "0x10"):
        with pytest.raises(cfg.FlagError, match=r"^--x: "):
            cfg.parse_uint("x", bad)


def test_parse_netns_forms() -> None:
    assert cfg.parse_netns("") == (None, None)
    assert cfg.parse_netns("inode:4026531840") == (4026531840, None)
    inode, path = cfg.parse_netns("/proc/self/ns/net")
    assert inode == os.stat("/proc/self/ns/net").st_ino and path == "/proc/self/ns/net"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("inode:", "not a number"),
        ("inode:abc", "not a number"),
        ("inode:0", "out of range"),
        ("inode:4294967296", "out of range"),
        ("4026531840", "invalid value"),
        ("/nonexistent/ns/net", "No such file"),
        ("/proc/self/ns/uts", "not a network namespace"),
        ("/etc/hostname", "not a namespace file"),
    ],
)
def test_parse_netns_errors(text: str, problem: str) -> None:
    with pytest.raises(cfg.FlagError) as e:
        cfg.parse_netns(text)
    assert str(e.value).startswith("--filter-netns: ")
    assert problem in str(e.value)


def test_resolve_ifname_current_netns() -> None:
    index, inode, path = cfg.resolve_ifname("lo", None, None)
    assert index == 1
    assert inode == os.stat("/proc/self/ns/net").st_ino
    assert path is not None


@pytest.mark.parametrize("name", ["nosuchif0", "x" * 16, "a/b", " "])
def test_resolve_ifname_errors(name: str) -> None:
    with pytest.raises(cfg.FlagError, match=r"^--filter-ifname: "):
        cfg.resolve_ifname(name, None, None)


def test_resolve_ifname_inode_without_any_path() -> None:
    with pytest.raises(cfg.FlagError, match=re.escape("no /run/netns entry or process found")):
        cfg.resolve_ifname("lo", 1, None)


def test_split_list() -> None:
    assert cfg.split_list(["a,b", " c ", "", "d,,e"]) == ("a", "b", "c", "d", "e")


def test_file_checks(tmp_path: os.PathLike[str]) -> None:
    f = os.path.join(tmp_path, "btf")
    with open(f, "wb"):
        pass
    assert cfg.check_existing_file("kernel-btf", f) == f
    with pytest.raises(cfg.FlagError, match=r"^--kernel-btf: .*no such file"):
        cfg.check_existing_file("kernel-btf", f + ".missing")
    with pytest.raises(cfg.FlagError, match=r"is a directory"):
        cfg.check_existing_file("kernel-btf", str(tmp_path))
    assert cfg.check_output_path("output-file", f) == f
    with pytest.raises(cfg.FlagError, match=r"^--output-file: .*no such directory"):
        cfg.check_output_path("output-file", os.path.join(tmp_path, "nodir", "out.log"))
