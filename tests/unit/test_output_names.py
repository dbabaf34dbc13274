"""Sanitising kernel/process text and the PROCESS column."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pwru.config import OutputConfig
from pwru.output.names import ProcessNames, sanitize, shorten_left
from pwru.output.text import TextFormatter
from tests.unit.test_output_text import FakeNames, fmt, make_event


def test_sanitize_plain_text_unchanged() -> None:
    assert sanitize("eth0") == "eth0"
    assert sanitize(b"curl\0garbage") == "curl"
    assert sanitize("café ü") == "café ü"


def test_sanitize_escapes() -> None:
    assert sanitize(b"\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert sanitize("a\nb\rc\td") == "a\\x0ab\\x0dc\\x09d"
    assert sanitize("\x9b2J") == "\\x9b2J"  # C1 CSI
    assert sanitize("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # bidi override
    assert sanitize(b"\xff\xfeok") == "\\xff\\xfeok"  # invalid UTF-8
    assert sanitize("\x7f") == "\\x7f"


@given(st.one_of(st.binary(max_size=40), st.text(max_size=40)))
def test_sanitize_output_is_always_printable(text: str | bytes) -> None:
    out = sanitize(text)
    assert out.isprintable()


def test_shorten_left() -> None:
    assert shorten_left("/usr/bin/curl:621", 16) == "~sr/bin/curl:621"
    assert shorten_left("short:1", 16) == "short:1"
    assert len(shorten_left("x" * 100, 16)) == 16


def test_hostile_names_do_not_reach_the_terminal() -> None:
    line = fmt(
        TextFormatter(OutputConfig(), FakeNames()), make_event(ifindex=4, ifname=b"e\x1b]0;p\x07", comm=b"\x1bc")
    )
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b" in line


def test_process_of_a_live_process() -> None:
    names = ProcessNames(width=0)
    assert names(os.getpid(), b"ignored") == f"{os.path.realpath(sys.executable)}:{os.getpid()}"


def test_process_shortened_as_pwru() -> None:
    names = ProcessNames()
    text = names(os.getpid(), b"x")
    full = f"{os.path.realpath(sys.executable)}:{os.getpid()}"
    assert text == (full if len(full) <= 16 else "~" + full[len(full) - 15 :])
    assert len(text) <= 16


def test_process_gone_falls_back_to_comm() -> None:
    p = subprocess.Popen(["sleep", "0"])
    p.wait()
    names = ProcessNames()
    assert names(p.pid, b"sleep\0\0\0") == f"sleep:{p.pid}"
    assert names(0, b"swapper/1") == "swapper/1:0"
    assert ProcessNames(width=0)(999_999_999, b"") == "<empty>:999999999"
    assert names(5, b"\x1b[2J") == "\\x1b[2J:5"


def test_process_cache_per_pid(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "exe").symlink_to("/usr/bin/first")
    names = ProcessNames(width=0, proc=str(proc))
    assert names(42, b"c") == "/usr/bin/first:42"
    (proc / "42" / "exe").unlink()
    (proc / "42" / "exe").symlink_to("/usr/bin/second")
    assert names(42, b"c") == "/usr/bin/first:42"  # cached
    names.forget(42)
    assert names(42, b"c") == "/usr/bin/second:42"
    (proc / "42" / "exe").unlink()
    (proc / "42" / "exe").symlink_to("/tmp/\x1b[1mbold")
    names.forget(42)
    assert names(42, b"c") == "/tmp/\\x1b[1mbold:42"
