"""--output-netns-names: where names come from, when they are read again, and how the outputs show them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pwru.config import OutputConfig
from pwru.netns_names import NetnsNames
from pwru.output.json import JsonFormatter
from pwru.output.text import TextFormatter
from tests.unit.test_output_text import FakeNames, fmt, make_event

CONTAINER = "4f3c2b1a" * 8


class Host:
    """A fake /proc and /run/netns: every namespace file is a regular file, its inode the namespace's."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.run = root / "run-netns"
        self.run.mkdir()
        self.files: dict[str, Path] = {}
        self.namespace("init")
        self.process(1, "init", "systemd")
        self.process_self("init")

    def namespace(self, key: str) -> int:
        path = self.proc.parent / "ns" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self.files[key] = path
        return os.stat(path).st_ino

    def _link(self, where: Path, key: str) -> None:
        where.parent.mkdir(parents=True, exist_ok=True)
        os.link(self.files[key], where)  # a hard link: the same inode, as a bind mount of the nsfs file

    def process(self, pid: int, key: str, comm: str, cgroup: str = "0::/user.slice\n") -> None:
        self._link(self.proc / str(pid) / "ns" / "net", key)
        (self.proc / str(pid) / "comm").write_text(comm + "\n")
        (self.proc / str(pid) / "cgroup").write_text(cgroup)

    def process_self(self, key: str) -> None:
        self._link(self.proc / "self" / "ns" / "net", key)

    def mount(self, name: str, key: str) -> None:
        self._link(self.run / name, key)


def test_names_from_bind_mounts_and_processes(tmp_path: Path) -> None:
    host = Host(tmp_path)
    blue = host.namespace("blue")
    host.mount("blue", "blue")
    host.process(40, "blue", "dnsmasq")  # a bind-mounted namespace keeps its mount's name
    web = host.namespace("web")
    host.process(900, "web", "nginx", f"0::/system.slice/docker-{CONTAINER}.scope\n")
    host.process(120, "web", "tini", f"0::/system.slice/docker-{CONTAINER}.scope\n")  # lowest pid: main
    sandbox = host.namespace("sandbox")
    host.process(77, "sandbox", "sleep")
    host.process(2, "init", "kthreadd")
    names = NetnsNames(str(host.run), str(host.proc))
    assert names(blue) == "blue"
    assert names(web) == CONTAINER[:12]  # the container id, as docker ps shows it
    assert names(sandbox) == "sleep"  # no container: the main process's comm
    assert names(os.stat(host.files["init"]).st_ino) == ""  # init's namespace is the host's, not named
    assert names.scans == 1


def test_an_unknown_namespace_rereads_at_most_once_a_second(tmp_path: Path) -> None:
    host = Host(tmp_path)
    now = [100.0]
    names = NetnsNames(str(host.run), str(host.proc), clock=lambda: now[0])
    late = host.namespace("late")
    assert names(late) == "" and names.scans == 1
    host.mount("late", "late")
    for _ in range(1000):
        assert names(late) == ""  # within the second: no scan per event
    assert names.scans == 1
    now[0] += 1.0
    assert names(late) == "late" and names.scans == 2
    assert names(late) == "late" and names.scans == 2  # known: no scan
    assert names(0) == "" and names.scans == 2  # no namespace (meta off): never a scan


def test_a_stale_file_under_run_netns_names_nothing(tmp_path: Path) -> None:
    host = Host(tmp_path)
    other_fs = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    if other_fs is None or os.stat(other_fs).st_dev == os.stat(tmp_path).st_dev:
        return
    stale = other_fs / f"pwru-test-stale-{os.getpid()}"
    stale.touch()
    try:
        os.symlink(stale, host.run / "stale")  # stat follows it to a file on another device
        names = NetnsNames(str(host.run), str(host.proc))
        assert names(os.stat(stale).st_ino) == ""
    finally:
        stale.unlink()


def lookup(table: dict[int, str]) -> NetnsNames:
    names = NetnsNames("/nonexistent", "/nonexistent")
    names._names = dict(table)
    names._scanned_at = float("inf")  # never scan
    return names


def test_text_column_as_pwru_centred_and_cut() -> None:
    ev = make_event(netns=7)
    config = OutputConfig(netns_names=True, netns_names_max_length=10)
    f = TextFormatter(config, FakeNames(), lookup({7: "a-very-long-namespace-name"}))
    header, line = f.header(), fmt(f, ev)
    assert " NETNS NAME " in header
    start = header.index("NETNS NAME")
    assert line[start : start + 10] == "a-very-lon"  # cut to the width, as pwru
    assert header.index("TUPLE") == line.index("10.99.0.1")
    short = TextFormatter(OutputConfig(netns_names=True), FakeNames(), lookup({7: "blue"}))
    col = short.header().index(" NETNS NAME") - 2  # the 16 columns, "NETNS NAME" centred in them
    assert fmt(short, ev)[col - 1 : col + 17] == " " + " " * 6 + "blue" + " " * 6 + " "
    unknown = fmt(short, make_event(netns=8))
    # nothing known: a dash keeps the columns countable
    assert unknown[col - 1 : col + 17] == " " + " " * 7 + "-" + " " * 8 + " "


def test_json_netns_name_only_when_known() -> None:
    f = JsonFormatter(OutputConfig(json=True, netns_names=True), FakeNames(), lookup({7: "blue\x1b"}))
    assert json.loads(fmt(f, make_event(netns=7)))["netns_name"] == "blue\\x1b"
    assert "netns_name" not in json.loads(fmt(f, make_event(netns=8)))
    off = JsonFormatter(OutputConfig(json=True), FakeNames(), lookup({7: "blue"}))
    assert "netns_name" not in json.loads(fmt(off, make_event(netns=7)))
