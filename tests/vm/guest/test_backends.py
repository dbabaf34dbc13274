"""Inside each lab kernel: exactly the backends the matrix announces in ``PWRU_TEST_BACKENDS`` work.

A backend "works" when its program loads, attaches and counts loopback UDP packets; one that the kernel lacks
must be refused by the kernel at load or attach time (never silently attach and count nothing).
"""

from __future__ import annotations

import errno
import os
import platform
import socket

import pytest

from tests.vm.guest import probes
from tests.vm.kernels import ALL_BACKENDS, KERNEL_LINES

PACKETS = 20
#: How the kernel says "not here" (BPFError, or OSError from perf_event_open): unknown attach type,
#: no CONFIG_FPROBE, ENOTSUPP (524) from inside BPF.
REFUSALS = {errno.EINVAL, errno.EOPNOTSUPP, 524, errno.ENOENT}


def announced_backends() -> set[str]:
    env = os.environ.get("PWRU_TEST_BACKENDS")
    if env:
        return {b.strip() for b in env.split(",") if b.strip()}
    return set(KERNEL_LINES[os.environ["PWRU_VM_KERNEL"]].backends)


def send_udp(count: int) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        for _ in range(count):
            tx.sendto(b"pwru-lab", rx.getsockname())
        for _ in range(count):
            rx.recv(64)


def test_running_the_lab_kernel() -> None:
    assert platform.release() == os.environ["PWRU_VM_KVER"]
    assert os.path.exists("/sys/kernel/btf/vmlinux")
    assert os.path.isdir("/sys/fs/bpf") and os.path.ismount("/sys/fs/bpf")
    assert os.path.ismount("/sys/kernel/debug")


def test_announced_backends_match_the_kernel_line() -> None:
    assert announced_backends() == set(KERNEL_LINES[os.environ["PWRU_VM_KERNEL"]].backends)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backend(backend: str) -> None:
    if backend in announced_backends():
        with probes.counting(backend) as count:
            before = count()
            send_udp(PACKETS)
            seen = count() - before
        assert seen >= PACKETS, f"{backend}: program ran {seen} times for {PACKETS} loopback packets"
    else:
        with pytest.raises(OSError) as refused, probes.counting(backend):
            pass
        assert refused.value.errno in REFUSALS, refused.value
