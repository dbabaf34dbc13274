"""The resolve step: netns inode, ifindex and file checks, after parsing (the only step that looks at the host)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pwru import flags, resolve
from pwru.config import Config, FilterConfig, FlagError, KernelConfig, OutputConfig

SELF_NS = "/proc/self/ns/net"


def _inode() -> int:
    return os.stat(SELF_NS).st_ino


def test_default_config_is_unchanged() -> None:
    assert resolve.resolve(Config()) == Config()


def test_netns_path_becomes_inode() -> None:
    c = resolve.resolve(Config(filter=FilterConfig(netns_path=SELF_NS)))
    assert (c.filter.netns, c.filter.netns_path, c.filter.ifindex) == (_inode(), SELF_NS, None)


def test_inode_spec_alone_is_kept() -> None:
    c = resolve.resolve(Config(filter=FilterConfig(netns=12345)))
    assert (c.filter.netns, c.filter.netns_path) == (12345, None)


def test_ifname_in_current_netns_sets_netns() -> None:
    c = resolve.resolve(Config(filter=FilterConfig(ifname="lo")))
    assert (c.filter.ifindex, c.filter.netns, c.filter.netns_path) == (1, _inode(), SELF_NS)
    assert resolve.resolve(c) == c  # idempotent


def test_parse_then_resolve_is_what_cli_does() -> None:
    pure = flags.parse_config(["--filter-netns", SELF_NS, "--filter-ifname=lo"])
    assert (pure.filter.netns, pure.filter.ifindex) == (None, None)  # parsing looked nothing up
    c = resolve.resolve(pure)
    assert (c.filter.netns, c.filter.ifindex, c.filter.ifname) == (_inode(), 1, "lo")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/nonexistent/ns/net", "No such file"),
        ("/proc/self/ns/uts", "not a network namespace"),
        ("/etc/hostname", "not a namespace file"),
    ],
)
def test_netns_path_errors(path: str, problem: str) -> None:
    with pytest.raises(FlagError) as e:
        resolve.resolve(Config(filter=FilterConfig(netns_path=path)))
    assert str(e.value).startswith(f"--filter-netns: {path}") and problem in str(e.value)
    assert "\n" not in str(e.value)


def test_resolve_ifname_current_netns() -> None:
    index, inode, path = resolve.resolve_ifname("lo", None, None)
    assert (index, inode, path) == (1, _inode(), SELF_NS)


def test_resolve_ifname_missing() -> None:
    with pytest.raises(FlagError, match=r"^--filter-ifname: no interface named 'nosuchif0' in /proc/self/ns/net$"):
        resolve.resolve(Config(filter=FilterConfig(ifname="nosuchif0")))


def test_resolve_ifname_inode_without_any_path() -> None:
    with pytest.raises(FlagError, match=re.escape("no /run/netns entry or process found in netns inode 1")):
        resolve.resolve(Config(filter=FilterConfig(netns=1, ifname="lo")))


def test_file_checks(tmp_path: Path) -> None:
    f = str(tmp_path / "btf")
    Path(f).write_bytes(b"")
    assert resolve.check_existing_file("kernel-btf", f) == f
    with pytest.raises(FlagError, match=r"^--kernel-btf: .*no such file"):
        resolve.check_existing_file("kernel-btf", f + ".missing")
    with pytest.raises(FlagError, match=r"is a directory"):
        resolve.check_existing_file("kernel-btf", str(tmp_path))
    assert resolve.check_output_path("output-file", f) == f
    with pytest.raises(FlagError, match=r"^--output-file: .*no such directory"):
        resolve.check_output_path("output-file", str(tmp_path / "nodir" / "out.log"))
    with pytest.raises(FlagError, match=r"^--output-file: .*is a directory"):
        resolve.check_output_path("output-file", str(tmp_path))


def test_resolve_checks_paths(tmp_path: Path) -> None:
    ok = Config(
        output=OutputConfig(file=str(tmp_path / "out")),
        kernel=KernelConfig(kernel_btf="/proc/self/status"),
        ready_file=str(tmp_path / "ready"),
    )
    assert resolve.resolve(ok) == ok
    missing = str(tmp_path / "no" / "x")
    with pytest.raises(FlagError, match=r"^--output-file: "):
        resolve.resolve(Config(output=OutputConfig(file=missing)))
    with pytest.raises(FlagError, match=r"^--ready-file: "):
        resolve.resolve(Config(ready_file=missing))
    with pytest.raises(FlagError, match=r"^--kernel-btf: "):
        resolve.resolve(Config(kernel=KernelConfig(kernel_btf=missing)))


def test_output_pcap_path_is_checked_and_may_not_be_output_file(tmp_path: Path) -> None:
    ok = resolve.resolve(Config(output=OutputConfig(pcap=str(tmp_path / "p.pcapng"))))
    assert ok.output.pcap == str(tmp_path / "p.pcapng")
    assert resolve.resolve(Config(output=OutputConfig(pcap="-"))).output.pcap_to_stdout
    with pytest.raises(FlagError, match=r"^--output-pcap: /nonexistent: no such directory"):
        resolve.resolve(Config(output=OutputConfig(pcap="/nonexistent/p.pcapng")))
    same = str(tmp_path / "same")
    with pytest.raises(FlagError, match=r"^--output-pcap: .*same: is --output-file too"):
        resolve.resolve(Config(output=OutputConfig(pcap=same, file=str(tmp_path / "." / "same"))))


def test_pcap_stream_refuses_a_terminal() -> None:
    main, other = os.openpty()
    try:
        with pytest.raises(FlagError, match=r"^--output-pcap: standard output is a terminal"):
            resolve.check_pcap_stdout(other)
        r, w = os.pipe()
        resolve.check_pcap_stdout(w)  # a pipe is what it is for
        os.close(r)
        os.close(w)
    finally:
        os.close(main)
        os.close(other)
