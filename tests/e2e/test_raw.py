"""--output-raw and ``pwru print``: the same skbs traced live and recorded print the same lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import BACKENDS, SLOW, Netns, PwruRun, udp_send

pytestmark = pytest.mark.root

FILTER = "udp and dst port 9999"


def _print(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pwru", "print", *args], capture_output=True, text=True,
                          timeout=60 * SLOW)  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recording_prints_what_a_live_run_printed(tmp_path: Path, netns: Netns, backend: str) -> None:
    (tmp_path / "live").mkdir()
    (tmp_path / "rec").mkdir()
    raw = tmp_path / "run.raw"
    common = ["--backend", backend, "--filter-netns", netns.path, "--output-stack", "--output-caller"]
    live = PwruRun([*common, FILTER], tmp_path / "live").start()
    rec = PwruRun([*common, "--output-raw", str(raw), FILTER], tmp_path / "rec").start()
    udp_send(netns, "127.0.0.1", 9999, count=5)
    time.sleep(0.5)
    rec.stop()
    live.stop()
    assert live.returncode == 0 and rec.returncode == 0, live.stderr + rec.stderr
    assert "events recorded" in rec.stderr and rec.stdout == ""

    printed = _print(str(raw))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == live.stdout.splitlines()
    assert any("SKB_DROP_REASON_NO_SOCKET" in line for line in printed.stdout.splitlines()), printed.stdout
    n = sum(1 for line in printed.stdout.splitlines() if line.startswith("0x"))
    assert f"{n} events printed" in printed.stderr and f"{n} events recorded" in rec.stderr

    as_json = _print("--output-json", "--output-limit-lines", "3", str(raw))
    assert as_json.returncode == 0, as_json.stderr
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(events) == 3 and all(e["netns"] == netns.inode for e in events)
    as_json = _print("--output-json", str(raw))
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(events) == n and any(e.get("stack") for e in events)


def test_print_refuses_what_a_recording_cannot_give(tmp_path: Path) -> None:
    bad = tmp_path / "not-raw"
    bad.write_bytes(b"hello")
    r = _print(str(bad))
    assert r.returncode == 2 and "not a pwru raw file" in r.stderr and "Traceback" not in r.stderr
    r = _print("--filter-func", "ip_rcv", str(bad))
    assert r.returncode == 2 and "--filter-func applies when recording" in r.stderr
    r = _print("--output-journey", str(bad))
    assert r.returncode == 2 and "--output-journey is not available" in r.stderr
    r = _print()
    assert r.returncode == 2 and "give one recording file" in r.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = _print(str(fifo))
    assert r.returncode == 2 and "not a regular file" in r.stderr
    shaped = tmp_path / "shaped"
    shaped.write_bytes(b"PWRU-RAW 1\n" + b"\x04\x00\x00\x00\x02\x00\x00\x00[]" * 2)
    r = _print(str(shaped))
    assert r.returncode == 2 and ("damaged" in r.stderr or "no header" in r.stderr) and "Traceback" not in r.stderr
    cut = tmp_path / "cut"
    cut.write_bytes(b"PWRU-RAW 1\n\x01\x00\x00\x00\xff\x00\x00\x00{")
    r = _print(str(cut))
    assert r.returncode == 2 and "cut short" in r.stderr
