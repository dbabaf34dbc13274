"""The tests' own BPF datapath (tests/data/bpf/datapath.c), compiled with clang at test time and loaded with
bpftool into two namespaces joined by a veth pair:

    ns A: a0 10.99.0.1/24  --veth-->  ns B: b0 10.99.0.2/24 and 10.99.0.3/24

``tc_entry`` on a0's egress tail-calls ``nat_rewrite`` for destinations in ``nat_map`` (10.99.0.9 -> 10.99.0.3);
``xdp_drop`` on b0 drops UDP to port 7001. 10.99.0.9 has a permanent neighbour entry with b0's MAC, so a
datagram to it leaves a0 at once, and arrives at B as one to 10.99.0.3.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import Netns, sh

SOURCE = Path(__file__).resolve().parent.parent / "data" / "bpf" / "datapath.c"
NAT_FROM, NAT_TO, DROP_PORT = "10.99.0.9", "10.99.0.3", 7001
BPFFS = Path("/sys/fs/bpf")


def compile_datapath(out: Path) -> Path:
    """clang -g -O2 -target bpf: the object, with BTF."""
    obj = out / "datapath.o"
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    sh("clang", "-g", "-O2", "-target", "bpf", f"-I{arch_inc}", "-c", str(SOURCE), "-o", str(obj), timeout=120)
    return obj


def nsenter(ns: Netns, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command in the namespace without `ip netns exec`'s fresh /sys (which would hide /sys/fs/bpf)."""
    return sh("nsenter", f"--net={ns.path}", *cmd, check=check)


def _ip_bytes(addr: str) -> list[str]:
    return addr.split(".")


@dataclass
class Datapath:
    a: Netns
    b: Netns
    pins: Path
    obj: Path
    extra_pins: list[Path] = field(default_factory=list)

    def reload_xdp(self) -> None:
        """Load the object again (new program ids, as a datapath reload makes) and put its XDP program on b0 in
        place of the running one."""
        tag = uuid.uuid4().hex[:8]
        pins, maps = BPFFS / f"pwt-dp-{tag}", BPFFS / f"pwt-dp-{tag}-maps"
        self.extra_pins += [pins, maps]
        sh("bpftool", "prog", "loadall", str(self.obj), str(pins), "pinmaps", str(maps), timeout=120)
        nsenter(self.b, "ip", "-force", "link", "set", "dev", "b0", "xdpgeneric", "pinned", str(pins / "xdp_drop"))

    def prog_ids(self) -> dict[str, int]:
        """Program name -> id of the loaded datapath."""
        import json

        ids = {}
        for name in ("tc_entry", "nat_rewrite", "xdp_drop"):
            info = json.loads(sh("bpftool", "-j", "prog", "show", "pinned", str(self.pins / name)).stdout)
            ids[name] = int(info["id"])
        return ids


@contextlib.contextmanager
def datapath(a: Netns, b: Netns, workdir: Path, tc: bool = True, xdp: bool = True) -> Iterator[Datapath]:
    """Load and attach the datapath on the veth pair of ``a`` (a0) and ``b`` (b0); everything pinned is removed
    and everything attached detached at the end (the namespaces' own deletion would do the latter too)."""
    for tool in ("clang", "bpftool", "tc", "nsenter"):
        assert shutil.which(tool), f"{tool} is needed"
    obj = compile_datapath(workdir)
    tag = uuid.uuid4().hex[:8]
    pins, maps = BPFFS / f"pwt-dp-{tag}", BPFFS / f"pwt-dp-{tag}-maps"
    dp: Datapath | None = None
    sh("ip", "-n", b.name, "addr", "add", f"{NAT_TO}/24", "dev", "b0")
    mac = b.exec("cat", "/sys/class/net/b0/address").stdout.strip()
    a.exec("ip", "neigh", "replace", NAT_FROM, "lladdr", mac, "dev", "a0", "nud", "permanent")
    a.exec("ip", "neigh", "replace", NAT_TO, "lladdr", mac, "dev", "a0", "nud", "permanent")
    try:
        sh("bpftool", "prog", "loadall", str(obj), str(pins), "pinmaps", str(maps), timeout=120)
        sh("bpftool", "map", "update", "pinned", str(maps / "jmp"), "key", "0", "0", "0", "0",
           "value", "pinned", str(pins / "nat_rewrite"))  # fmt: skip
        sh("bpftool", "map", "update", "pinned", str(maps / "nat_map"), "key", *_ip_bytes(NAT_FROM),
           "value", *_ip_bytes(NAT_TO))  # fmt: skip
        if tc:
            nsenter(a, "tc", "qdisc", "add", "dev", "a0", "clsact")
            nsenter(a, "tc", "filter", "add", "dev", "a0", "egress", "bpf", "da", "pinned", str(pins / "tc_entry"))
        if xdp:
            nsenter(b, "ip", "link", "set", "dev", "b0", "xdpgeneric", "pinned", str(pins / "xdp_drop"))
        dp = Datapath(a, b, pins, obj)
        yield dp
    finally:
        if xdp:
            nsenter(b, "ip", "link", "set", "dev", "b0", "xdpgeneric", "off", check=False)
        if tc:
            nsenter(a, "tc", "qdisc", "del", "dev", "a0", "clsact", check=False)
        for pinned in (pins, maps, *(dp.extra_pins if dp is not None else ())):
            shutil.rmtree(pinned, ignore_errors=True)
