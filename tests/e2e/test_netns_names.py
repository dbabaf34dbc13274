"""--output-netns-names on real packets: a namespace made with ``ip netns add``, and one only a process holds."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from .conftest import Netns, PwruRun, udp_send

pytestmark = pytest.mark.root

FILTER = "udp and dst port 9999"


def test_names_the_namespace_ip_netns_add_made(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-netns-names", "--filter-netns", netns.path, FILTER)  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1)
    run.stop()
    assert run.returncode == 0, run.stderr
    header, *lines = run.stdout.splitlines()
    assert lines, run.stderr
    col = header.index("NETNS NAME")
    for line in lines:
        assert line.split()[3] == str(netns.inode)
        assert netns.name in line[col - 4 : col + 16], line  # in its column (the name is centred in 16)


def test_json_names_a_process_namespace_by_its_main_process(pwru: object) -> None:
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep 60"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "up\n"
        path = f"/proc/{holder.pid}/ns/net"
        inode = os.stat(path).st_ino
        run: PwruRun = pwru("--output-json", "--output-netns-names", "--filter-netns", path, FILTER)  # type: ignore[operator]
        run.start()
        sender = ("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                  ".sendto(b'pwru', ('127.0.0.1', 9999))")  # fmt: skip
        subprocess.run(["nsenter", "-t", str(holder.pid), "-n", "python3", "-c", sender], check=True, timeout=30)
        time.sleep(0.2)
        run.stop()
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    assert events, run.stderr
    assert {e["netns"] for e in events} == {inode}
    assert {e.get("netns_name") for e in events} == {"sleep"}  # the namespace's only (so main) process
