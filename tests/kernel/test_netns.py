"""--filter-netns / --filter-ifname against a network namespace the test creates (root)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pwru import cli, netns
from pwru.config import FlagError


@dataclass
class Netns:
    name: str
    path: str
    inode: int
    pid: int  # a process living in it
    ifindex: int  # of the veth named "pwrut0" inside


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ns() -> Iterator[Netns]:
    name = f"pwrut-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", name)
    proc: subprocess.Popen[bytes] | None = None
    try:
        # Two interfaces so the one we look for does not get index 1 or 2 by accident of creation order.
        _ip("-n", name, "link", "add", "pwrut9", "type", "veth", "peer", "name", "pwrut8")
        _ip("-n", name, "link", "add", "pwrut0", "type", "veth", "peer", "name", "pwrut1")
        ifindex = int(_ip("-n", name, "-o", "link", "show", "pwrut0").split(":", 1)[0])
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
        path = f"/run/netns/{name}"
        inode = os.stat(path).st_ino
        for _ in range(200):  # wait until the child has entered the namespace
            try:
                if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == inode:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        yield Netns(name, path, inode, proc.pid, ifindex)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        _ip("netns", "del", name)


pytestmark = pytest.mark.root


def test_filter_netns_proc_path_resolves_to_inode(ns: Netns) -> None:
    c = cli.parse_args(["--filter-netns", f"/proc/{ns.pid}/ns/net"])
    assert c.filter.netns == ns.inode
    assert c.filter.netns != os.stat("/proc/self/ns/net").st_ino
    assert cli.parse_args(["--filter-netns", ns.path]).filter.netns == ns.inode


def test_filter_ifname_inside_the_netns(ns: Netns) -> None:
    before = netns.current_netns_inode()
    c = cli.parse_args(["--filter-netns", f"/proc/{ns.pid}/ns/net", "--filter-ifname", "pwrut0"])
    assert (c.filter.ifindex, c.filter.netns, c.filter.ifname) == (ns.ifindex, ns.inode, "pwrut0")
    assert netns.current_netns_inode() == before  # the main thread never moved


def test_filter_ifname_with_inode_spec(ns: Netns) -> None:
    c = cli.parse_args([f"--filter-netns=inode:{ns.inode}", "--filter-ifname=pwrut0"])
    assert (c.filter.ifindex, c.filter.netns) == (ns.ifindex, ns.inode)


def test_filter_ifname_missing_in_that_netns(ns: Netns) -> None:
    # An interface of the host's namespace (not "lo", which every namespace has) is not in ours.
    host_names = [n for _, n in socket.if_nameindex() if n != "lo"]
    host_only = host_names[0] if host_names else "pwrut-absent"
    with pytest.raises(FlagError, match=r"^--filter-ifname: no interface named"):
        cli.parse_args(["--filter-netns", ns.path, "--filter-ifname", host_only])
    with pytest.raises(FlagError, match=r"^--filter-ifname: no interface named 'pwrut0'"):
        cli.parse_args(["--filter-ifname", "pwrut0"])  # not in the current namespace


def test_run_in_netns_returns_and_raises(ns: Netns) -> None:
    assert netns.run_in_netns(ns.path, netns.current_netns_inode) == ns.inode

    def fail() -> int:
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        netns.run_in_netns(ns.path, fail)
    assert netns.find_netns_path(ns.inode) in (ns.path, f"/proc/{ns.pid}/ns/net")


def test_all_netns_lists_each_namespace_once_by_its_name(ns: Netns) -> None:
    found = netns.all_netns()
    inodes = [r.inode for r in found]
    assert len(inodes) == len(set(inodes))
    mine = [r for r in found if r.inode == ns.inode]
    assert mine == [netns.NetnsRef(ns.inode, ns.path)]  # named, though a process lives in it too
    assert netns.current_netns_inode() in inodes


def test_run_in_netns_checks_the_inode_when_given(ns: Netns) -> None:
    assert netns.run_in_netns(ns.path, netns.current_netns_inode, inode=ns.inode) == ns.inode
    with pytest.raises(netns.NetnsError, match=f"no longer names netns inode {ns.inode + 1}"):
        netns.run_in_netns(ns.path, netns.current_netns_inode, inode=ns.inode + 1)
