"""Faults: pwru killed or interrupted at any point, two at once, a disk that fills up, a flood that overruns the
ring buffer, and a long run (the soak). Real kernel, namespaces and traffic made here; each test checks that
nothing of pwru's stays in the kernel (bpftool's program and link lists, via ``left_behind``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SLOW, Netns, PwruRun, left_behind, pwru_bpf_objects, sh, udp_send

pytestmark = pytest.mark.root

PORT = 9999
FILTER = f"udp and dst port {PORT}"
SUMMARY = re.compile(r"pwru: (\d+) events? printed, (\d+) lost")


def pwru_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pwru", *args]


def flood(ns: Netns, count: int, port: int = PORT) -> subprocess.Popen[str]:
    """``count`` UDP datagrams to a closed port of the namespace's loopback, as fast as Python sends them
    (``count`` 0: until killed). Started in the background; it printed its first line once sending."""
    loop = "itertools.count()" if count == 0 else f"range({count})"
    return ns.python_background(
        "import itertools,socket\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "print('sending', flush=True)\n"
        f"for _ in {loop}:\n"
        f"    s.sendto(b'pwru', ('127.0.0.1', {port}))\n"
    )


def summary(stderr: str) -> tuple[int, int]:
    """(printed, lost) from pwru's closing line."""
    m = SUMMARY.search(stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def wait_stable(path: Path, quiet: float = 1.0, timeout: float = 120) -> None:
    """Until ``path`` has stopped growing for ``quiet`` seconds: pwru has written every event it took."""
    deadline = time.monotonic() + timeout * SLOW
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet * SLOW:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} still growing after {timeout} s")


def start_up_times(netns: Netns, tmp_path: Path) -> tuple[float, float]:
    """(seconds until pwru's first program is in the kernel, seconds until it is ready), from one run."""
    before = pwru_bpf_objects()
    run = PwruRun(["--filter-netns", netns.path, FILTER], tmp_path)
    t0 = time.monotonic()
    proc = subprocess.Popen(pwru_cmd("--ready-file", str(run.ready_file), "--filter-netns", netns.path, FILTER),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    loaded = ready = 0.0
    try:
        while not ready and time.monotonic() - t0 < 60 * SLOW:
            if not loaded and pwru_bpf_objects() - before:
                loaded = time.monotonic() - t0
            if run.ready_file.exists():
                ready = time.monotonic() - t0
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(timeout=30 * SLOW)
    assert 0 < loaded <= ready, (loaded, ready)
    return loaded, ready


# --- SIGKILL --------------------------------------------------------------------------------------------------


def test_sigkill_at_points_of_start_up_leaves_nothing(netns: Netns, tmp_path: Path) -> None:
    """Killed at 10 points of start-up (timed by a first run): 5 from the interpreter's start through BTF parsing,
    before the first program load; 5 over loading and attaching, each counted from the moment the run's first
    program is in the kernel (so they land there however long the start before it takes on a loaded machine)."""
    before = pwru_bpf_objects()
    loaded, ready = start_up_times(netns, tmp_path)
    for i in range(10):
        proc = subprocess.Popen(pwru_cmd("--filter-netns", netns.path, FILTER), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        if i < 5:
            delay = loaded * i / 5
            time.sleep(delay)
        else:
            deadline = time.monotonic() + 60 * SLOW
            while not pwru_bpf_objects() - before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert proc.poll() is None, "pwru exited before being killed"
            delay = (ready - loaded) * (i - 5) / 4
            time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30 * SLOW)
        assert left_behind(before) == set(), f"left in the kernel after SIGKILL at point {i} (+{delay:.3f} s)"


def test_sigkill_while_tracing_a_flood_leaves_nothing(netns: Netns, tmp_path: Path) -> None:
    before = pwru_bpf_objects()
    run = PwruRun(["--output-file", str(tmp_path / "out"), "--filter-netns", netns.path, FILTER], tmp_path)
    sender = flood(netns, 0)
    try:
        run.start()
        time.sleep(1.0)
        assert (tmp_path / "out").stat().st_size > 0, "no events from the flood"
        run.stop(signal.SIGKILL)
    finally:
        sender.kill()
        sender.wait()
    assert run.returncode == -signal.SIGKILL
    assert left_behind(before) == set()


# --- SIGINT during attach -------------------------------------------------------------------------------------


def test_sigint_during_attach_exits_clean(netns: Netns) -> None:
    """Ctrl-C as soon as pwru says it is attaching (the tracepoint backend's ~30 tracepoints and the netfilter
    points take a few hundred ms): the attach stops, what was attached is detached, exit 0 (a stop asked for
    by a signal is a normal end; cli.main's 130 is for an interrupt outside the run loop)."""
    before = pwru_bpf_objects()
    for _ in range(3):
        proc = subprocess.Popen(pwru_cmd("--backend", "tracepoint", "--filter-netns", netns.path, FILTER),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        said = [proc.stderr.readline()]
        while said[-1] and not said[-1].startswith("Attaching"):
            said.append(proc.stderr.readline())
        proc.send_signal(signal.SIGINT)
        err = "".join(said) + proc.communicate(timeout=30 * SLOW)[1]
        assert said[-1].startswith("Attaching"), err
        assert proc.returncode in (0, 130), err
        assert "Traceback" not in err and "internal error" not in err, err
        assert "Listening" not in err, "the SIGINT did not land during the attach"
        assert left_behind(before) == set()


# --- two instances --------------------------------------------------------------------------------------------


def _two_runs(netns: Netns, tmp_path: Path) -> tuple[PwruRun, PwruRun]:
    runs = []
    for name in ("one", "two"):
        d = tmp_path / name
        d.mkdir()
        runs.append(PwruRun(["--output-json", "--filter-netns", netns.path, FILTER], d).start())
    udp_send(netns, "127.0.0.1", PORT, count=5)
    for run in runs:
        run.stop()
    return runs[0], runs[1]


def test_two_instances_at_once(netns: Netns, tmp_path: Path) -> None:
    before = pwru_bpf_objects()
    one, two = _two_runs(netns, tmp_path)
    assert left_behind(before) == set()
    for run in (one, two):
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        drops = [e for e in run.json_events() if "NO_SOCKET" in str(e.get("func"))]
        assert len(drops) == 5, run.stderr
    # The tracepoints: both instances see the same functions.
    tps = [{str(e["func"]) for e in r.json_events() if not str(e["func"]).startswith("nf:")} for r in (one, two)]
    assert tps[0] == tps[1]


def test_two_instances_both_see_the_netfilter_points(netns: Netns, tmp_path: Path) -> None:
    one, two = _two_runs(netns, tmp_path)
    nf = [{str(e["func"]) for e in r.json_events() if str(e["func"]).startswith("nf:")} for r in (one, two)]
    assert nf[0], one.stderr
    assert nf[0] == nf[1], two.stderr


# --- a full disk ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> object:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "pwru-test", str(mnt))
    yield mnt
    sh("umount", "-l", str(mnt), check=False)


def test_full_disk_under_output_file(netns: Netns, small_disk: Path, tmp_path: Path) -> None:
    """A 1 MB tmpfs filled by the output (a flood): pwru ends by itself, non-zero, with one clear line."""
    before = pwru_bpf_objects()
    run = PwruRun(["--output-file", str(small_disk / "out"), "--filter-netns", netns.path, FILTER], tmp_path)
    sender = flood(netns, 0)
    try:
        try:
            run.start()
            run.wait(timeout=60)
        except AssertionError:
            # It may fill the disk and end before its ready file is seen (polled every 50 ms): what it said is kept
            assert run.proc is not None and run.proc.returncode is not None, run.stderr
            run.returncode = run.proc.returncode
    finally:
        sender.kill()
        sender.wait()
        if run.proc is not None and run.proc.poll() is None:
            run.stop()
    assert left_behind(before) == set()
    assert run.returncode not in (0, None), run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("pwru: ") and not SUMMARY.match(ln)]
    assert len(errors) == 1, run.stderr
    assert "No space left" in errors[0] and "internal error" not in errors[0], errors[0]


# --- a flood, every event accounted for -----------------------------------------------------------------------


def events_per_datagram(netns: Netns, tmp_path: Path) -> int:
    """Events one datagram gives (every datagram to the closed port takes the same path), from a slow run."""
    n = 20
    run = PwruRun(["--output-json", "--filter-netns", netns.path, FILTER], tmp_path).start()
    udp_send(netns, "127.0.0.1", PORT, count=n, interval=0.02)
    run.stop()
    events = run.json_events()
    assert events and len(events) % n == 0, (len(events), run.stderr)
    assert summary(run.stderr) == (len(events), 0)
    return len(events) // n


def test_flood_every_event_is_printed_or_counted_lost(netns: Netns, tmp_path: Path) -> None:
    """printed + lost = due, where due = datagrams sent x events per datagram. The flood is sent all at once, so
    the ring buffer overruns (events lost, and counted); pwru is stopped only once its output stopped growing."""
    (tmp_path / "slow").mkdir()
    per = events_per_datagram(netns, tmp_path / "slow")
    before = pwru_bpf_objects()
    sent = 20000
    out = tmp_path / "events.json"
    run = PwruRun(["--output-json", "--output-file", str(out), "--filter-netns", netns.path, FILTER], tmp_path)
    run.start()
    sender = flood(netns, sent)
    sender.wait(timeout=120 * SLOW)
    assert sender.returncode == 0
    wait_stable(out)
    run.stop()
    assert run.returncode == 0, run.stderr
    assert left_behind(before) == set()
    printed, lost = summary(run.stderr)
    print(f"flood: {sent} datagrams x {per} events = {sent * per} due; {printed} printed, {lost} lost")
    lines = out.read_text().splitlines()
    assert printed == len(lines)
    assert all(json.loads(ln)["tuple"]["dport"] == PORT for ln in lines[:100])
    assert printed + lost == sent * per, f"printed {printed} + lost {lost} != {sent} x {per}"


# --- the soak -------------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.soak
def test_soak_rss_stays_flat(netns: Netns, tmp_path: Path) -> None:
    """An hour (``PWRU_SOAK_SECONDS``) under steady traffic (about 2000 datagrams a second, each traced): pwru's
    RSS sampled every minute (``PWRU_SOAK_SAMPLE``); after a warm-up (the first sample), the mean of the last
    third of the samples is within 10 % of the first third's. The figures go to stdout (``-s`` shows them)."""
    seconds = float(os.environ.get("PWRU_SOAK_SECONDS", "3600"))
    every = float(os.environ.get("PWRU_SOAK_SAMPLE", "60"))
    before = pwru_bpf_objects()
    run = PwruRun(["--output-json", "--output-file", str(tmp_path / "out"), "--output-file-max-size", "10",
                   "--output-file-max-backups", "1", "--filter-netns", netns.path, FILTER], tmp_path)  # fmt: skip
    sender = netns.python_background(
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "print('sending', flush=True)\n"
        "while True:\n"
        "    for _ in range(20):\n"
        f"        s.sendto(b'pwru', ('127.0.0.1', {PORT}))\n"
        "    time.sleep(0.01)\n"
    )
    samples: list[int] = []
    try:
        run.start()
        assert run.proc is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(min(every, max(0.0, seconds - (time.monotonic() - t0))))
            assert run.proc.poll() is None, "pwru ended during the soak"
            samples.append(rss_kib(run.proc.pid))
            print(f"soak t={time.monotonic() - t0:7.0f} s rss={samples[-1]} KiB", flush=True)
    finally:
        sender.kill()
        sender.wait()
        if run.proc is not None:
            run.stop()
    assert run.returncode == 0, run.stderr
    assert left_behind(before) == set()
    printed, lost = summary(run.stderr)
    steady = samples[1:]  # the first minute is the warm-up
    assert len(steady) >= 3, f"too short a soak for thirds: {samples}"
    third = len(steady) // 3
    first, last = statistics.mean(steady[:third]), statistics.mean(steady[-third:])
    print(f"soak: {len(samples)} samples, first third {first:.0f} KiB, last third {last:.0f} KiB "
          f"({(last - first) / first:+.1%}); {printed} events printed, {lost} lost")  # fmt: skip
    assert printed > 0
    assert abs(last - first) <= 0.10 * first, samples


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True  # dead, only waiting for its parent
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_big_filters_compiler_dies_with_pwru(sig: signal.Signals) -> None:
    """A 1,000-term filter takes libpcap minutes in a child process (pwru.filter.pcap.compile_cbpf_bounded):
    Ctrl-C or SIGKILL of pwru ends the child too, never a compiler left burning a CPU for minutes."""
    expr = " or ".join(f"port {i}" for i in range(1, 1001))
    proc = subprocess.Popen(pwru_cmd(*expr.split()), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("Compiling the pcap filter (1,000 terms"), line
        deadline = time.monotonic() + 10 * SLOW
        while not (children := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(children) == 1, children
        proc.send_signal(sig)
        proc.wait(timeout=10 * SLOW)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), proc.returncode
        assert _gone(children[0]), "the compiler outlived pwru"
    finally:
        proc.kill()
        proc.wait()
