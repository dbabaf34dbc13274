"""End-to-end fixtures: network namespaces made by the test, and pwru run as a real process.

The backend under test comes from ``PWRU_TEST_BACKENDS`` (comma-separated; default ``auto``), so the same tests
run on this machine (tracepoints) and inside the kernel lab's VMs (kprobe-multi, kprobe, fentry, tracepoint).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pwru.ebpf.fdinfo import held_ids

BACKENDS = [b for b in os.environ.get("PWRU_TEST_BACKENDS", "auto").split(",") if b]
# Everything inside a VM is about ten times slower.
SLOW = float(os.environ.get("PWRU_TEST_SLOWDOWN", "1"))


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout * SLOW)


@dataclass
class Netns:
    """A network namespace owned by one test; ``exec`` runs a command inside it."""

    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def python(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.exec(sys.executable, "-c", code, timeout=timeout)

    def python_background(self, code: str) -> subprocess.Popen[str]:
        """A Python process left running in the namespace; it is ready once it printed its first line."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline(), "the background process did not start"
        return proc

    def ifindex(self, ifname: str) -> int:
        out = self.exec("cat", f"/sys/class/net/{ifname}/ifindex").stdout
        return int(out)


@pytest.fixture
def netns_factory() -> Iterator[object]:
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns(f"pwt-{uuid.uuid4().hex[:8]}")
        sh("ip", "netns", "add", ns.name)
        made.append(ns)
        ns.exec("ip", "link", "set", "lo", "up")
        return ns

    yield make
    for ns in made:
        sh("ip", "netns", "del", ns.name, check=False)


@pytest.fixture
def netns(netns_factory: object) -> Netns:
    return netns_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture
def veth_pair(netns_factory: object) -> tuple[Netns, Netns]:
    """Two namespaces joined by a veth pair: a0 10.99.0.1/24 + fd99::1 <-> b0 10.99.0.2/24 + fd99::2."""
    a: Netns = netns_factory()  # type: ignore[operator]
    b: Netns = netns_factory()  # type: ignore[operator]
    sh("ip", "link", "add", "a0", "netns", a.name, "type", "veth", "peer", "name", "b0", "netns", b.name)
    for ns, dev, v4, v6 in ((a, "a0", "10.99.0.1/24", "fd99::1/64"), (b, "b0", "10.99.0.2/24", "fd99::2/64")):
        ns.exec("ip", "addr", "add", v4, "dev", dev)
        ns.exec("ip", "addr", "add", v6, "dev", dev, "nodad")
        ns.exec("ip", "link", "set", dev, "up")
    return a, b


def neighbours_known(a: Netns, b: Netns) -> None:
    """Permanent IPv4 and IPv6 neighbour entries both ways on a veth pair: a packet leaves at once, never held
    for address resolution (whose timing decides whether a short run sees it)."""
    for ns, dev, peer, peer_dev, v4, v6 in ((a, "a0", b, "b0", "10.99.0.2", "fd99::2"),
                                             (b, "b0", a, "a0", "10.99.0.1", "fd99::1")):  # fmt: skip
        mac = peer.exec("cat", f"/sys/class/net/{peer_dev}/address").stdout.strip()
        for ip in (v4, v6):
            ns.exec("ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent")


def udp_send(ns: Netns, host: str, port: int, count: int = 1, payload: bytes = b"pwru", interval: float = 0.01) -> None:
    family = "AF_INET6" if ":" in host else "AF_INET"
    ns.python(
        "import socket,time\n"
        f"s=socket.socket(socket.{family}, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}):\n"
        f"    s.sendto({payload!r}, ({host!r}, {port}))\n"
        f"    time.sleep({interval})\n"
    )


def tcp_connect(ns: Netns, host: str, port: int, timeout: float = 1.0) -> None:
    """Try a TCP connection; a dropped SYN just times out."""
    ns.python(
        "import socket\n"
        f"s=socket.socket()\ns.settimeout({timeout})\n"
        "try:\n"
        f"    s.connect(({host!r}, {port}))\n"
        "except OSError:\n"
        "    pass\n",
        timeout=10 + timeout,
    )


@dataclass
class PwruRun:
    """A pwru process: started, waited until ready, stopped; its output collected."""

    args: list[str]
    tmp: Path
    proc: subprocess.Popen[str] | None = None
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def ready_file(self) -> Path:
        return self.tmp / "ready"

    def start(self, ready_timeout: float = 60) -> PwruRun:
        env = dict(os.environ, **self.extra_env)
        cmd = [sys.executable, "-m", "pwru", "--ready-file", str(self.ready_file), *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=self.tmp
        )
        deadline = time.monotonic() + ready_timeout * SLOW
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                self.stdout, self.stderr = self.proc.communicate()
                raise AssertionError(f"pwru exited {self.proc.returncode} before ready:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"pwru not ready in time:\n{self.stderr}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> PwruRun:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate()
            raise AssertionError("pwru did not stop in time") from None
        self.returncode = self.proc.returncode
        return self

    def wait(self, timeout: float = 60) -> PwruRun:
        assert self.proc is not None
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout * SLOW)
        self.returncode = self.proc.returncode
        return self

    def json_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pwru(tmp_path: Path, backend: str) -> Iterator[object]:
    runs: list[PwruRun] = []

    def make(*args: str) -> PwruRun:
        run = PwruRun(["--backend", backend, *args], tmp_path)
        runs.append(run)
        return run

    yield make
    for run in runs:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run pwru to completion (for bad-input and listing tests)."""
    return subprocess.run([sys.executable, "-m", "pwru", *args], capture_output=True, text=True, timeout=timeout * SLOW)


#: Program names of pwru's kernel side (``bpf_prog_info.name`` is the C function name, cut to 15 characters).
PWRU_PROG_PREFIXES = ("kprobe_", "kretprobe_", "fentry_", "fexit_", "tp_skb", "nf_skb", "tc_chain")


def _bpftool_list(kind: str) -> list[dict[str, object]]:
    """``bpftool -j KIND show``. bpftool walks the ids and then opens each: one that goes away in between (a pwru
    starting or being killed meanwhile) makes it exit 255, so a failed listing is tried again a few times."""
    for attempt in range(10):
        r = sh("bpftool", "-j", kind, "show", check=False)
        if r.returncode == 0:
            return json.loads(r.stdout or "[]")  # type: ignore[no-any-return]
        time.sleep(0.05 * (attempt + 1))
    raise AssertionError(f"bpftool {kind} show failed 10 times: {r.stderr.strip()}")


def pwru_bpf_objects() -> set[str]:
    """ids of BPF programs of pwru's kernel side, and of the links that hold them, as bpftool lists them."""
    ids = {p["id"] for p in _bpftool_list("prog") if str(p.get("name", "")).startswith(PWRU_PROG_PREFIXES)}
    links = _bpftool_list("link")
    return {f"prog:{i}" for i in ids} | {f"link:{ln['id']}" for ln in links if ln.get("prog_id") in ids}


def left_behind(before: set[str], timeout: float = 10) -> set[str]:
    """pwru's BPF objects that appeared since ``before`` and are still there after ``timeout`` seconds.

    The kernel frees a program whose last reference went away a little later (RCU, a work queue), so a
    program can show in ``bpftool prog show`` for a moment after pwru exited.
    """
    deadline = time.monotonic() + timeout * SLOW
    while True:
        left = pwru_bpf_objects() - before
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def map_entries(pid: int, name: str) -> int:
    """Entries of BPF map ``name`` held by process ``pid`` (found through its descriptors, so other BPF users on
    the machine, other pwru runs included, do not count)."""
    ids = held_ids(pid, "map_id")
    shown = json.loads(sh("bpftool", "-j", "map", "show").stdout or "[]")
    mine = [m["id"] for m in shown if m["id"] in ids and m.get("name") == name]
    assert len(mine) == 1, (name, mine)
    return len(json.loads(sh("bpftool", "-j", "map", "dump", "id", str(mine[0])).stdout or "[]"))


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with this thread inside the network namespace at ``path``."""
    with open("/proc/thread-self/ns/net") as home, open(path) as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


def wait_ready(proc: subprocess.Popen[str], ready: Path, timeout: float = 300) -> float:
    """Wait until pwru (``proc``) created its ready file; the seconds it took. Fails when pwru exits first."""
    t0 = time.monotonic()
    while not ready.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"pwru exited {proc.returncode} before ready:\n{err}")
        if time.monotonic() - t0 > timeout * SLOW:
            raise AssertionError("pwru not ready in time")
        time.sleep(0.05)
    return time.monotonic() - t0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (``@pytest.mark.soak``, an hour each) run only when ``-m`` names them: ``-m soak``."""
    if "soak" in (config.option.markexpr or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


#: Address space a pwru under test may take (bad-input and fault tests): an input that makes it read without
#: bound (``--kernel-btf /dev/zero``) ends in a MemoryError instead of taking the machine's memory.
PWRU_ADDRESS_SPACE = 2 << 30


@dataclass
class Measured:
    """A pwru process run to completion by :func:`run_measured`: its exit status, output, CPU time and whether
    it had to be killed at the timeout."""

    returncode: int
    stdout: str
    stderr: str
    cpu: float  # user + system seconds of the process itself
    wall: float
    timed_out: bool


def run_measured(
    *args: str,
    timeout: float = 60,
    prefix: tuple[str, ...] = (),
    closed: tuple[int, ...] = (),
    rlimits: dict[int, tuple[int, int]] | None = None,
) -> Measured:
    """Run pwru to completion like :func:`run_cli`, with its surroundings changed: a command it runs under
    (``prefix``: unshare, setpriv...), standard descriptors closed in it (``closed``: 1 for stdout, 2 for stderr),
    resource limits (``rlimits``; RLIMIT_AS always bounded by :data:`PWRU_ADDRESS_SPACE`). Killed after
    ``timeout`` seconds. Its own CPU time comes from wait4(2), so runs can go on in parallel threads."""
    limits = {resource.RLIMIT_AS: (PWRU_ADDRESS_SPACE, PWRU_ADDRESS_SPACE), **(rlimits or {})}

    def child_setup() -> None:
        for which, value in limits.items():
            resource.setrlimit(which, value)
        for fd in closed:
            os.close(fd)

    killed = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        cmd = [*prefix, sys.executable, "-m", "pwru", *args]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=child_setup)

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout * SLOW, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_utime + usage.ru_stime,
            wall,
            killed.is_set(),
        )
