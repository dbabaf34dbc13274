"""Issue 15, as a new user found them: problems that came out after attaching (or never), each run for real.

Every test runs pwru as a process, as root, against traffic in namespaces it makes, and checks that nothing of
pwru stays in the kernel afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import SLOW, Netns, left_behind, pwru_bpf_objects, udp_send, wait_ready

pytestmark = pytest.mark.root

#: One event per datagram to a closed port on loopback: its arrival.
ONE_TRACEPOINT = ("--filter-func", "tp:netif_receive_skb", "--filter-trace-netfilter=false")


def _pwru_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pwru", *args]


def _stop(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout * SLOW)
    return out or "", err or ""


def test_stale_ready_file_is_removed_at_start(tmp_path: Path, netns: Netns, backend: str) -> None:
    """A ready file left by an earlier run said "ready" from the start: a script went on before pwru attached."""
    ready = tmp_path / "ready"
    ready.write_text("99999")
    proc = subprocess.Popen(
        _pwru_cmd("--backend", backend, "--ready-file", str(ready), "--filter-netns", netns.path, "udp"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60 * SLOW
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                state = ready.read_text()
            except FileNotFoundError:  # not there, or removed between a look and a read
                state = "missing"
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == str(proc.pid):
                break
            time.sleep(0.005)
        # the stale file went away before the run's own appeared
        assert seen[-1] == str(proc.pid) and "missing" in seen and "99999" not in seen[seen.index("missing"):], seen
    finally:
        _, err = _stop(proc)
    assert proc.returncode == 0, err
    assert not ready.exists()


def test_piped_into_head_counts_what_the_pipe_took(tmp_path: Path, netns: Netns, backend: str) -> None:
    """``pwru | head -3``: the summary must count the events written before the pipe broke, not those that were
    still buffered (or 0). One tracepoint, so also "Attached 1 tracepoint", singular."""
    before = pwru_bpf_objects()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        _pwru_cmd("--backend", backend, "--ready-file", str(ready), *ONE_TRACEPOINT, "--filter-netns", netns.path,
                  "udp and dst port 9999"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        wait_ready(proc, ready)
        udp_send(netns, "127.0.0.1", 9999, count=2)
        head = [proc.stdout.readline() for _ in range(3)]  # what head -3 reads; then it exits
        proc.stdout.close()
        assert head[0].startswith("SKB ") and all("tp:netif_receive_skb" in line for line in head[1:]), head
        deadline = time.monotonic() + 30 * SLOW
        while proc.poll() is None and time.monotonic() < deadline:
            udp_send(netns, "127.0.0.1", 9999, count=2)  # lines that can no longer be written
        assert proc.poll() is not None, "pwru did not notice the broken pipe"
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 141, err
    assert "Attaching 1 tracepoint (" in err and "Attached 1 tracepoint (ignored 0)" in err, err
    assert re.search(r"^pwru: 2 events printed, 0 lost", err, re.M), err
    assert "Traceback" not in err and "internal error" not in err
    assert not left_behind(before)


def test_too_few_descriptors_are_said_before_loading(netns: Netns, backend: str) -> None:
    """With RLIMIT_NOFILE at 16 (and no right to raise it) pwru attached a few probes and ran on without a word."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    before = pwru_bpf_objects()
    # setpriv drops CAP_SYS_RESOURCE, so even root cannot lift the hard limit (this machine's root lacks it anyway)
    cmd = ["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "prlimit", "--nofile=16:16",
           *_pwru_cmd("--backend", backend, "--filter-netns", netns.path, "udp")]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120 * SLOW, check=False)
    assert p.returncode == 1, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert re.fullmatch(
        r"pwru: .* need about (\d+) open files, but RLIMIT_NOFILE is 16 \(hard limit 16\) and cannot be raised "
        r"\(.*\): raise it first \(ulimit -n \1\), or trace fewer \(--filter-func\)\n",
        p.stderr,
    ), p.stderr
    assert not left_behind(before)
    # with a hard limit to raise the soft one to, the same run attaches everything
    ok = subprocess.Popen(["prlimit", "--nofile=16:4096", *_pwru_cmd("--backend", backend, "--filter-netns",
                                                                      netns.path, "udp")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert ok.stderr is not None
        lines = [ok.stderr.readline() for _ in range(2)]
    finally:
        _, rest = _stop(ok)
    assert re.match(r"Attached .* \(ignored 0\)", lines[1]), [*lines, rest]


def test_stdout_on_a_full_device_is_one_line(tmp_path: Path, netns: Netns, backend: str) -> None:
    """A write error at run time: one line, exit 1, everything detached."""
    before = pwru_bpf_objects()
    ready = tmp_path / "ready"
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(
            _pwru_cmd("--backend", backend, "--ready-file", str(ready), "--filter-netns", netns.path, "udp"),
            stdout=full, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60 * SLOW
        while proc.poll() is None and time.monotonic() < deadline:  # the header alone may already fail
            if ready.exists():
                udp_send(netns, "127.0.0.1", 9999)
            time.sleep(0.05)
    finally:
        _, err = _stop(proc)
    assert proc.returncode == 1, err
    assert err.splitlines()[-1] == "pwru: standard output: No space left on device", err
    assert "Traceback" not in err and "internal error" not in err
    assert not left_behind(before)


def test_full_disk_under_output_file_is_one_line(tmp_path: Path, netns: Netns, backend: str) -> None:
    """--output-file on a file system that fills up (a 16 KiB tmpfs in a mount namespace of pwru's own)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    before = pwru_bpf_objects()
    ready, small = tmp_path / "ready", tmp_path / "small"
    small.mkdir()
    out = small / "trace.log"
    script = (f"mount -t tmpfs -o size=16k pwru-test {small} && exec {' '.join(_pwru_cmd())} --backend {backend} "
              f"--ready-file {ready} --output-file {out} --filter-netns {netns.path} udp")  # fmt: skip
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_ready(proc, ready)
        deadline = time.monotonic() + 60 * SLOW
        while proc.poll() is None and time.monotonic() < deadline:
            udp_send(netns, "127.0.0.1", 9999, count=20, interval=0)
    finally:
        _, err = _stop(proc)
    assert proc.returncode == 1, err
    assert err.splitlines()[-1] == f"pwru: --output-file: {out}: No space left on device", err
    assert "Traceback" not in err and "internal error" not in err
    printed = re.search(r"^pwru: (\d+) events printed", err, re.M)
    assert printed and int(printed.group(1)) > 0, err
    assert not left_behind(before)


def test_libpcap_missing_is_said_before_loading(tmp_path: Path, backend: str) -> None:
    """Without libpcap: one line naming each library tried once (it named libpcap.so.0.8 twice, as an internal
    error). The library is hidden by an empty file bound over it, in a mount namespace of pwru's own."""
    import ctypes.util

    name = ctypes.util.find_library("pcap")
    found = [Path(d) / name for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
             if name and (Path(d) / name).exists()]  # fmt: skip
    if not found or shutil.which("unshare") is None:
        pytest.skip("needs libpcap in a known place and unshare")
    before = pwru_bpf_objects()
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    target = found[0].resolve()
    script = f"mount --bind {empty} {target} && exec {' '.join(_pwru_cmd())} --backend {backend} udp"
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, timeout=60 * SLOW, check=False)  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("pwru: libpcap not found (tried libpcap.so.0.8, libpcap.so.1, libpcap.so): "), p.stderr
    assert not left_behind(before)


def _as_nobody(*caps: str) -> list[str]:
    """setpriv: uid/gid 65534, with ``caps`` kept as ambient capabilities (they survive exec for a non-root uid)."""
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if caps:
        spec = ",".join(f"+{c}" for c in caps)
        cmd += [f"--inh-caps={spec}", f"--ambient-caps={spec}"]
    return cmd


def test_privileges_are_capabilities_not_the_uid(netns: Netns, backend: str) -> None:
    """Non-root: --list-funcs blamed the kernel; a non-root process holding CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN
    was refused on its uid alone."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    env = dict(os.environ)
    p = subprocess.run([*_as_nobody(), *_pwru_cmd("--list-funcs")], capture_output=True, text=True, cwd="/",
                       env=env, timeout=60 * SLOW, check=False)  # fmt: skip
    assert p.returncode == 1 and p.stdout == "", p.stderr
    assert p.stderr == (
        "pwru: missing privileges: this process lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN "
        "(run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)\n"
    )
    caps = ("bpf", "perfmon", "net_admin")
    p = subprocess.run([*_as_nobody(*caps), *_pwru_cmd("--backend", backend, "--list-funcs")], capture_output=True,
                       text=True, cwd="/", env=env, timeout=60 * SLOW, check=False)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert re.search(r"^\d+ (tracepoints|functions) \(", p.stdout, re.M), p.stdout
    # and a real run, its ready file where uid 65534 may write (pytest's tmp_path is root's alone)
    shared = Path(tempfile.mkdtemp(prefix="pwru-nobody-"))
    shared.chmod(0o777)
    ready = shared / "ready"
    before = pwru_bpf_objects()
    proc = subprocess.Popen(
        [*_as_nobody(*caps), *_pwru_cmd("--backend", backend, "--ready-file", str(ready), "--output-json",
                                        "--filter-trace-netfilter=false", "--filter-netns", netns.path,
                                        "udp and dst port 9999")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/", env=env,
    )  # fmt: skip
    try:
        wait_ready(proc, ready)
        udp_send(netns, "127.0.0.1", 9999, count=2)
        time.sleep(0.5 * SLOW)
    finally:
        out, err = _stop(proc)
        shutil.rmtree(shared, ignore_errors=True)
    assert proc.returncode == 0, err
    assert '"dport":9999' in out.replace(" ", ""), out + err
    assert not left_behind(before)


def test_closed_stdout_is_refused_before_loading(netns: Netns, backend: str) -> None:
    before = pwru_bpf_objects()
    p = subprocess.run(_pwru_cmd("--backend", backend, "--filter-netns", netns.path, "udp"), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=60 * SLOW, check=False,
                       preexec_fn=lambda: os.close(1))  # fmt: skip
    assert p.returncode == 2
    assert p.stderr == "pwru: standard output is closed (redirect it to a file, or use --output-file)\n"
    assert not left_behind(before)
