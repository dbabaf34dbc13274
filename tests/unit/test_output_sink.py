"""Sinks: stdout buffering rules, rotating file (size, backups, age, gzip) with lumberjack's naming."""

from __future__ import annotations

import fcntl
import gzip
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pwru.config import Config, OutputConfig
from pwru.errors import UserError
from pwru.output.sink import BLOCK_SIZE, OutputError, RotatingFileSink, StdoutSink, open_sink

F_SETPIPE_SZ = 1031


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _read_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def test_stdout_pipe_is_block_buffered() -> None:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)  # room for more than a block without a reader
    clock = Clock()
    try:
        sink = StdoutSink(fd=w, clock=clock)
        sink.write_lines(["a", "b"])
        assert _read_nonblocking(r) == b""
        sink.flush()
        assert _read_nonblocking(r) == b"a\nb\n"
        sink.write_lines(["x" * (BLOCK_SIZE + 1)])  # a full block goes out at once
        assert len(_read_nonblocking(r)) == BLOCK_SIZE + 2
        sink.write_lines(["late"])
        assert _read_nonblocking(r) == b""
        clock.t += 1.5  # ... but no line waits much more than max_latency while lines keep coming
        sink.write_lines(["later"])
        assert _read_nonblocking(r) == b"late\nlater\n"
        sink.write_lines(["at exit"])
        sink.close()
        assert _read_nonblocking(r) == b"at exit\n"
    finally:
        os.close(r)
        os.close(w)


def test_stdout_tty_is_line_buffered() -> None:
    master, slave = os.openpty()
    try:
        sink = StdoutSink(fd=slave)
        sink.write_lines(["hello"])
        assert _read_nonblocking(master).replace(b"\r\n", b"\n") == b"hello\n"
        sink.close()
    finally:
        os.close(master)
        os.close(slave)


class Now:
    def __init__(self) -> None:
        self.t = datetime(2024, 5, 6, 7, 8, 9, 123000)

    def __call__(self) -> datetime:
        return self.t


BACKUP = re.compile(r"out-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}\.log(\.gz)?")


def _lines(n: int, start: int = 0) -> list[str]:
    return [f"line {i:05d} " + "x" * 20 for i in range(start, start + n)]  # 32 bytes with the newline


def _backups(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name != "out.log")


def test_rotates_by_size_without_splitting_lines(tmp_path: Path) -> None:
    now = Now()
    path = tmp_path / "out.log"
    sink = RotatingFileSink(str(path), max_bytes=100, now=now)
    for i in range(10):
        now.t += timedelta(seconds=1)
        sink.write_lines(_lines(1, i))
    sink.close()
    files = _backups(tmp_path)
    assert len(files) == 3  # 10 lines of 32 bytes, 3 per file: 3 backups + current
    assert files[0] == "out-2024-05-06T07-08-13.123.log"  # time of the rotation (4th line), lumberjack format
    everything = b"".join((tmp_path / f).read_bytes() for f in files) + path.read_bytes()
    assert everything.decode().splitlines() == _lines(10)
    for f in [*files, "out.log"]:
        data = (tmp_path / f).read_bytes()
        assert len(data) <= 100 and data.endswith(b"\n")


def test_big_batch_rotates_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    sink = RotatingFileSink(str(path), max_bytes=100, now=Now())
    sink.write_lines(_lines(7))
    sink.close()
    files = _backups(tmp_path)
    assert len(files) == 2  # same millisecond: distinct names anyway
    assert all(BACKUP.fullmatch(f) for f in files)
    assert path.read_bytes().decode().splitlines() == _lines(1, 6)


def test_line_longer_than_max_gets_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    sink = RotatingFileSink(str(path), max_bytes=10, now=Now())
    sink.write_lines(["short", "a much longer line than ten bytes", "end"])
    sink.close()
    contents = sorted((tmp_path / f).read_text() for f in [*_backups(tmp_path), "out.log"])
    assert contents == sorted(["short\n", "a much longer line than ten bytes\n", "end\n"])


def test_existing_file_is_appended_or_rotated(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_text("old\n")
    sink = RotatingFileSink(str(path), max_bytes=100, now=Now())
    sink.write_lines(["new"])
    sink.close()
    assert path.read_text() == "old\nnew\n" and _backups(tmp_path) == []
    path.write_bytes(b"y" * 100)
    sink = RotatingFileSink(str(path), max_bytes=100, now=Now())
    sink.write_lines(["fresh"])
    sink.close()
    assert path.read_text() == "fresh\n"
    assert _backups(tmp_path) == ["out-2024-05-06T07-08-09.123.log"]


def test_max_backups_keeps_newest(tmp_path: Path) -> None:
    now = Now()
    sink = RotatingFileSink(str(tmp_path / "out.log"), max_bytes=40, max_backups=2, now=now)
    for i in range(6):
        now.t += timedelta(minutes=1)
        sink.write_lines(_lines(1, i))
    sink.close()
    files = _backups(tmp_path)
    assert files == ["out-2024-05-06T07-13-09.123.log", "out-2024-05-06T07-14-09.123.log"]
    assert (tmp_path / files[-1]).read_text() == _lines(1, 4)[0] + "\n"


def test_max_age_removes_old_backups(tmp_path: Path) -> None:
    (tmp_path / "out-2024-04-01T00-00-00.000.log").write_text("old\n")
    (tmp_path / "out-2024-05-05T00-00-00.000.log.gz").write_bytes(gzip.compress(b"recent\n"))
    (tmp_path / "out-notatime.log").write_text("not a backup\n")
    (tmp_path / "other-2024-04-01T00-00-00.000.log").write_text("not ours\n")
    sink = RotatingFileSink(str(tmp_path / "out.log"), max_age_days=7, now=Now())
    sink.write_lines(["x"])
    sink.close()
    assert _backups(tmp_path) == [
        "other-2024-04-01T00-00-00.000.log",
        "out-2024-05-05T00-00-00.000.log.gz",
        "out-notatime.log",
    ]


def test_compress_rotated_files(tmp_path: Path) -> None:
    now = Now()
    path = tmp_path / "out.log"
    sink = RotatingFileSink(str(path), max_bytes=64, compress=True, now=now)
    os.chmod(path, 0o600)
    for i in range(5):
        now.t += timedelta(seconds=1)
        sink.write_lines(_lines(1, i))
    sink.close()
    files = _backups(tmp_path)
    assert files and all(f.endswith(".log.gz") for f in files)
    text = b"".join(gzip.decompress((tmp_path / f).read_bytes()) for f in files) + path.read_bytes()
    assert text.decode().splitlines() == _lines(5)
    assert all((tmp_path / f).stat().st_mode & 0o777 == 0o600 for f in files)  # mode carried over
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert sink.mill_errors == []


def test_cleanup_problems_are_shown_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(path: str) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pwru.output.sink.compress_file", refuse)
    sink = RotatingFileSink(str(tmp_path / "out.log"), max_bytes=64, compress=True, now=Now())
    for i in range(3):
        sink.write_lines(_lines(1, i))
    sink.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all("--output-file: cleaning up rotated files: compress" in w for w in warnings)
    assert "Permission denied" in warnings[0]
    assert sink.mill_errors == []


def test_write_bytes_is_never_split_across_files(tmp_path: Path) -> None:
    sink = RotatingFileSink(str(tmp_path / "out.bin"), max_bytes=10, now=Now())
    sink.write(b"12345678")
    sink.write(b"abcdefgh")  # does not fit after the first: a new file
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2
    assert (tmp_path / "out.bin").read_bytes() == b"abcdefgh"


def test_no_extension(tmp_path: Path) -> None:
    sink = RotatingFileSink(str(tmp_path / "trace"), max_bytes=5, now=Now())
    sink.write_lines(["1234", "5678"])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace", "trace-2024-05-06T07-08-09.123"]


def test_open_sink(tmp_path: Path) -> None:
    assert isinstance(open_sink(Config()), StdoutSink)
    sink = open_sink(Config(output=OutputConfig(file=str(tmp_path / "o.log"), file_max_size=1)))
    assert isinstance(sink, RotatingFileSink) and sink.max_bytes == 1024 * 1024
    sink.close()
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "o.log").mkdir()  # a directory where the file should be
    with pytest.raises(UserError, match=r"^--output-file: "):
        open_sink(Config(output=OutputConfig(file=str(ro / "o.log"))))


# --- issue 15: what was written before the output broke, and write errors as one line ---------------------------


def test_delivered_counts_what_was_written_before_the_pipe_broke() -> None:
    """Piped into ``head -3``, the summary said no event was printed though two reached head: now the count is
    the lines the pipe took in full, not those handed to the sink."""
    r, w = os.pipe()
    sink = StdoutSink(fd=w, line_buffered=False, clock=Clock())
    sink.write_lines(["HEADER"])
    sink.write_lines(["event 1", "event 2"])
    sink.flush()
    assert sink.delivered == 3
    assert os.read(r, 1 << 16) == b"HEADER\nevent 1\nevent 2\n"
    os.close(r)  # head -3 exits
    sink.write_lines(["event 3", "event 4"])
    with pytest.raises(BrokenPipeError):  # the command line exits quietly with 141
        sink.flush()
    assert sink.delivered == 3
    sink.close()
    os.close(w)


def test_units_of_a_partly_written_batch_are_counted_one_by_one(tmp_path: Path) -> None:
    """A write that stops half way (a full disk) counts the lines it wrote whole, not the rest."""
    from pwru.output.sink import _units_within

    lines = ["a" * 10, "é" * 5, "c" * 10]  # 11, 11 and 11 bytes with their newlines
    chunks = [(4, ["hdr"], 1), (33, lines, 3), (5, None, 1)]
    assert [_units_within(chunks, n) for n in (0, 3, 4, 14, 15, 26, 36, 37, 41, 42)] == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]


def test_write_errors_are_one_line_output_errors(tmp_path: Path) -> None:
    from pwru.output.sink import OutputError

    full = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = StdoutSink(fd=full, line_buffered=True)
        with pytest.raises(OutputError) as e:
            sink.write_lines(["x"])
        assert (str(e.value), e.value.exit_code) == (f"file descriptor {full}: No space left on device", 1)
        assert sink.delivered == 0
    finally:
        os.close(full)
    f = RotatingFileSink("/dev/full")  # refused by the resolve step; the sink itself must still say it clearly
    f.write_lines(["x" * 100])
    with pytest.raises(OutputError) as e:
        f.close()
    assert str(e.value) == "--output-file: /dev/full: No space left on device"


# --- --output-pcap's sinks ----------------------------------------------------------------------------------------


def test_pcap_sinks(tmp_path: Path) -> None:
    from pwru.output.sink import DiscardSink, FileSink, open_pcap_sink

    assert open_pcap_sink(Config()) is None
    assert isinstance(open_pcap_sink(Config(output=OutputConfig(pcap="-"))), StdoutSink)
    # with the stream on stdout the lines go to --output-file, else nowhere
    assert isinstance(open_sink(Config(output=OutputConfig(pcap="-"))), DiscardSink)
    text = open_sink(Config(output=OutputConfig(pcap="-", file=str(tmp_path / "t.log"))))
    assert isinstance(text, RotatingFileSink)
    text.close()
    path = tmp_path / "p.pcapng"
    path.write_bytes(b"an older capture, longer than the new one")
    sink = open_pcap_sink(Config(output=OutputConfig(pcap=str(path))))
    assert isinstance(sink, FileSink)
    sink.write(b"abc")
    sink.write(b"de")
    assert path.read_bytes() == b""  # buffered
    sink.close()
    sink.close()
    assert path.read_bytes() == b"abcde" and sink.delivered == 2  # made anew, not appended to
    (tmp_path / "d.pcapng").mkdir()
    with pytest.raises(UserError, match=r"^--output-pcap: .*d\.pcapng: Is a directory"):
        open_pcap_sink(Config(output=OutputConfig(pcap=str(tmp_path / "d.pcapng"))))


def test_pcap_file_sink_write_error_is_one_line(tmp_path: Path) -> None:
    from pwru.output.sink import FileSink

    sink = FileSink("/dev/full", "output-pcap")
    with pytest.raises(OutputError, match=r"^--output-pcap: /dev/full: No space left on device$"):
        sink.write(b"x" * BLOCK_SIZE)  # a block: written now
    sink.close()
    assert sink.delivered == 0
