"""Where formatted lines go: standard output, or a rotating file (lumberjack's rules, as pwru uses it).

Both sinks take lines in batches (:meth:`Sink.write_lines`), or whole units of bytes (:meth:`Sink.write`, for
binary outputs such as pcapng blocks), and buffer them: a terminal gets every batch at
once (line buffered); a pipe or a file gets blocks of :data:`BLOCK_SIZE` bytes, but never waits more than
``max_latency`` seconds between flushes while lines keep coming. Call ``flush()`` when the reader goes idle
and ``close()`` at exit. Each sink counts the units (lines given to ``write_lines``, calls of ``write``) the
kernel took in full (``delivered``): when the output breaks (the reader of a pipe went away, the disk is full)
what was still buffered or only partly written is not counted. A write error is raised as
:class:`OutputError` (one line, exit 1), except EPIPE on standard output, which stays a ``BrokenPipeError``
(the command line exits quietly with 141, as a program killed by SIGPIPE would).

Rotating file (``--output-file``): when a write would take the file past ``max_bytes`` it is renamed to
``<name>-<local time 2006-01-02T15-04-05.000><ext>`` and a new file is started (an existing file is
appended to). Backups beyond ``max_backups`` (newest kept) or older than ``max_age_days`` (by the time in
their name) are deleted, and the others gzip-compressed when ``compress`` is set -- in a background thread,
so the event loop is not held up. Lines are never split across files.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from pwru.config import Config
from pwru.errors import UserError

BLOCK_SIZE = 64 * 1024
BACKUP_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"
_BACKUP_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}")
COMPRESS_SUFFIX = ".gz"

log = logging.getLogger("pwru")


class OutputError(UserError):
    """Output could not be written (``standard output: No space left on device``); the run stops (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


class Sink(Protocol):
    """A destination for output: text lines or units of bytes."""

    #: Units written in full so far.
    delivered: int

    def write_lines(self, lines: Sequence[str]) -> None:
        """Write each string as one line (a newline is added after each)."""
        ...

    def write(self, data: bytes) -> None:
        """Write ``data`` as one unit (a rotating file never splits it)."""
        ...

    def flush(self) -> None:
        """Hand buffered lines to the kernel now."""
        ...

    def close(self) -> None:
        """Flush and release the sink; idempotent."""
        ...


def _encode(lines: Sequence[str]) -> bytes:
    if not lines:
        return b""
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> tuple[int, OSError | None]:
    """Write ``data``; returns the bytes written and the error that stopped the writing (None when all were)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except InterruptedError:
            continue
        except OSError as e:
            return done, e
    return done, None


#: A piece of the buffer: its size in bytes, its lines (None for a unit of bytes) and how many units it holds.
_Chunk = tuple[int, Sequence[str] | None, int]


def _units_within(chunks: list[_Chunk], written: int) -> int:
    """How many whole units of ``chunks`` (in buffer order) lie in their first ``written`` bytes."""
    units = 0
    for size, lines, count in chunks:
        if written >= size:
            units += count
            written -= size
            continue
        if lines is not None:  # a partly written batch of lines: count the lines that made it
            for line in lines:
                written -= len(line.encode("utf-8", "replace")) + 1
                if written < 0:
                    break
                units += 1
        break
    return units


class _Buffered:
    def __init__(self, line_buffered: bool, max_latency: float, clock: Callable[[], float]) -> None:
        self._buf = bytearray()
        self._chunks: list[_Chunk] = []
        self._line_buffered = line_buffered
        self._max_latency = max_latency
        self._clock = clock
        self._last_flush = clock()
        self.delivered = 0

    def _append(self, data: bytes, lines: Sequence[str] | None) -> None:
        self._buf += data
        self._chunks.append((len(data), lines, 1 if lines is None else len(lines)))

    def _after_write(self) -> None:
        if (
            self._line_buffered
            or len(self._buf) >= BLOCK_SIZE
            or self._clock() - self._last_flush >= self._max_latency
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = self._clock()
        if self._buf:
            data, chunks = self._buf, self._chunks
            self._buf, self._chunks = bytearray(), []
            written, error = self._emit(data)
            self.delivered += _units_within(chunks, written)
            if error is not None:
                raise self._error(error)

    def _emit(self, data: bytearray) -> tuple[int, OSError | None]:
        raise NotImplementedError

    def _error(self, e: OSError) -> Exception:
        raise NotImplementedError


class StdoutSink(_Buffered):
    """Lines to a file descriptor (standard output by default).

    ``line_buffered`` defaults to whether the descriptor is a terminal.
    """

    def __init__(
        self,
        fd: int = 1,
        line_buffered: bool | None = None,
        max_latency: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if line_buffered is None:
            line_buffered = os.isatty(fd)
        super().__init__(line_buffered, max_latency, clock)
        self._fd = fd
        self._closed = False

    def write_lines(self, lines: Sequence[str]) -> None:
        """Buffer the lines; flush per the buffering rules."""
        if lines:
            self._append(_encode(lines), lines)
            self._after_write()

    def write(self, data: bytes) -> None:
        """Buffer ``data``; flush per the buffering rules."""
        self._append(data, None)
        self._after_write()

    def _emit(self, data: bytearray) -> tuple[int, OSError | None]:
        if self._fd == 1:
            with contextlib.suppress(ValueError, AttributeError, OSError):
                sys.stdout.flush()  # keep order with anything print()ed before
        return _write_all(self._fd, data)

    def _error(self, e: OSError) -> Exception:
        if isinstance(e, BrokenPipeError):
            return e
        name = "standard output" if self._fd == 1 else f"file descriptor {self._fd}"
        return OutputError(f"{name}: {e.strerror or e}")

    def close(self) -> None:
        """Flush (the descriptor stays open: it is not ours)."""
        if not self._closed:
            self._closed = True
            self.flush()


class _FileBacked(_Buffered):
    """A buffered sink writing to the descriptor ``_fd`` of the file ``path``, for the flag ``_flag``: what the
    rotating and the plain file sink share (write errors name the flag and the file; closing flushes first)."""

    path: str
    _fd: int
    _flag: str

    def _emit(self, data: bytearray) -> tuple[int, OSError | None]:
        return _write_all(self._fd, data)

    def _error(self, e: OSError) -> Exception:
        return OutputError(f"--{self._flag}: {self.path}: {e.strerror or e}")

    def _close_file(self) -> None:
        """Flush and close the file; idempotent."""
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1


class RotatingFileSink(_FileBacked):
    """Lines to a size-rotated file, see the module documentation."""

    def __init__(
        self,
        path: str,
        max_bytes: int = 100 * 1024 * 1024,
        max_backups: int = 0,
        max_age_days: int = 0,
        compress: bool = False,
        *,
        max_latency: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        super().__init__(False, max_latency, clock)
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = os.path.abspath(path)
        self._flag = "output-file"
        self.max_bytes = max_bytes
        self.max_backups = max_backups
        self.max_age_days = max_age_days
        self.compress = compress
        self._now = now
        self._fd = -1
        self._size = 0  # bytes in the file plus bytes buffered for it
        self._mill_lock = threading.Lock()
        self._mill_pending = False
        self._mill_thread: threading.Thread | None = None
        self.mill_errors: list[str] = []
        self._open_existing_or_new()

    # -- writing --

    def write_lines(self, lines: Sequence[str]) -> None:
        """Append the lines, rotating before a line that would not fit."""
        if self._fd < 0:
            raise ValueError("write to a closed sink")
        data = _encode(lines)
        if self._size + len(data) <= self.max_bytes:
            self._append(data, lines)
            self._size += len(data)
            self._after_write()
        else:
            for line in lines:
                self.write((line + "\n").encode("utf-8", "replace"))

    def write(self, data: bytes) -> None:
        """Append ``data`` whole, rotating first when it would not fit."""
        if self._fd < 0:
            raise ValueError("write to a closed sink")
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self.rotate()
        self._append(data, None)
        self._size += len(data)
        self._after_write()

    def close(self) -> None:
        """Flush, close the file and wait for background compression/cleanup to finish."""
        self._close_file()
        self.wait_mill()
        for problem in self.mill_errors:
            log.warning("--output-file: cleaning up rotated files: %s", problem)
        self.mill_errors = []

    # -- rotation --

    def _open_existing_or_new(self) -> None:
        self._schedule_mill()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._open_new()
            return
        if st.st_size >= self.max_bytes:
            self._open_new()
            self._schedule_mill()
            return
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = st.st_size

    def _open_new(self) -> None:
        mode = 0o644
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.path)
            mode = st.st_mode & 0o7777
            os.rename(self.path, self._backup_name())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        self._size = 0

    def _split_name(self) -> tuple[str, str, str]:
        directory, base = os.path.split(self.path)
        prefix, ext = os.path.splitext(base)
        return directory, prefix + "-", ext

    def _backup_name(self) -> str:
        directory, prefix, ext = self._split_name()
        t = self._now()
        while True:
            stamp = f"{t.strftime(BACKUP_TIME_FORMAT)}.{t.microsecond // 1000:03d}"
            name = os.path.join(directory, f"{prefix}{stamp}{ext}")
            if not os.path.exists(name) and not os.path.exists(name + COMPRESS_SUFFIX):
                return name
            t += timedelta(milliseconds=1)  # two rotations within a millisecond must not collide

    def rotate(self) -> None:
        """Start a new file now, keeping the current one as a backup."""
        self.flush()
        os.close(self._fd)
        self._fd = -1
        try:
            self._open_new()
        except OSError as e:
            raise self._error(e) from None
        self._schedule_mill()

    # -- backups: remove old ones, compress --

    def backups(self) -> list[tuple[datetime, str]]:
        """Existing backups as (time in their name, path), newest first."""
        directory, prefix, ext = self._split_name()
        found: list[tuple[datetime, str]] = []
        try:
            entries = os.listdir(directory)
        except OSError:
            return []
        for name in entries:
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            for suffix in (ext, ext + COMPRESS_SUFFIX):
                stamp = rest[: len(rest) - len(suffix)] if suffix else rest
                if rest.endswith(suffix) and _BACKUP_TIME.fullmatch(stamp):
                    t = datetime.strptime(stamp, BACKUP_TIME_FORMAT + ".%f")
                    path = os.path.join(directory, name)
                    if os.path.isfile(path):
                        found.append((t, path))
                    break
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return found

    def mill_once(self) -> None:
        """Apply max_backups, max_age_days and compress to the existing backups."""
        if not (self.max_backups or self.max_age_days or self.compress):
            return
        files = self.backups()
        remove: list[str] = []
        if self.max_backups:
            kept: set[str] = set()
            remaining = []
            for t, path in files:
                base = path.removesuffix(COMPRESS_SUFFIX)
                if base not in kept and len(kept) >= self.max_backups:
                    remove.append(path)
                    continue
                kept.add(base)
                remaining.append((t, path))
            files = remaining
        if self.max_age_days:
            cutoff = self._now() - timedelta(days=self.max_age_days)
            remove += [p for t, p in files if t < cutoff]
            files = [(t, p) for t, p in files if t >= cutoff]
        for path in remove:
            try:
                os.remove(path)
            except OSError as e:
                self.mill_errors.append(f"remove {path}: {e.strerror}")
        if self.compress:
            for _, path in files:
                if not path.endswith(COMPRESS_SUFFIX):
                    try:
                        compress_file(path)
                    except OSError as e:
                        self.mill_errors.append(f"compress {path}: {e.strerror}")

    def _schedule_mill(self) -> None:
        if not (self.max_backups or self.max_age_days or self.compress):
            return
        with self._mill_lock:
            self._mill_pending = True
            if self._mill_thread is None:
                self._mill_thread = threading.Thread(target=self._mill_loop, name="pwru-rotate", daemon=True)
                self._mill_thread.start()

    def _mill_loop(self) -> None:
        while True:
            with self._mill_lock:
                if not self._mill_pending:
                    self._mill_thread = None
                    return
                self._mill_pending = False
            try:
                self.mill_once()
            except Exception as e:  # a failed clean-up must not stop tracing
                self.mill_errors.append(f"{type(e).__name__}: {e}")

    def wait_mill(self) -> None:
        """Wait until background clean-up and compression are done."""
        while True:
            with self._mill_lock:
                thread = self._mill_thread
            if thread is None:
                return
            thread.join()


class FileSink(_FileBacked):
    """Units of bytes to a plain file, made anew (truncated) at start: --output-pcap. Not rotated: a pcapng
    file is only readable whole (its section and interface blocks come first), so a rotated piece would need
    them again; the capture is one file, as tcpdump -w writes it."""

    def __init__(
        self, path: str, flag: str, *, max_latency: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(False, max_latency, clock)
        self.path = os.path.abspath(path)
        self._flag = flag
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def write_lines(self, lines: Sequence[str]) -> None:
        """Lines as one unit each (for completeness: pwru writes bytes here)."""
        for line in lines:
            self.write((line + "\n").encode("utf-8", "replace"))

    def write(self, data: bytes) -> None:
        """Buffer ``data``; flush per the buffering rules."""
        if self._fd < 0:
            raise ValueError("write to a closed sink")
        self._append(data, None)
        self._after_write()

    def close(self) -> None:
        """Flush and close the file; idempotent."""
        self._close_file()


def compress_file(path: str) -> str:
    """gzip ``path`` to ``path.gz`` (same mode; written to a temporary name first), remove ``path``."""
    dst = path + COMPRESS_SUFFIX
    tmp = dst + ".tmp"
    mode = os.stat(path).st_mode & 0o7777
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with open(path, "rb") as src, open(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
            import shutil  # only when rotating with compression

            shutil.copyfileobj(src, gz, 1024 * 1024)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.remove(path)
    return dst


def open_pcap_sink(config: Config) -> Sink | None:
    """--output-pcap's sink: standard output for ``-``, else its file (made anew); None without the flag."""
    path = config.output.pcap
    if path is None:
        return None
    if path == "-":
        return StdoutSink()
    try:
        return FileSink(path, "output-pcap")
    except OSError as e:
        raise UserError(f"--output-pcap: {path}: {e.strerror}") from None


class DiscardSink:
    """Where the lines go when they have nowhere to go: --output-pcap - without --output-file (standard output
    carries the pcapng stream). Takes everything, delivers nothing."""

    delivered = 0

    def write_lines(self, lines: Sequence[str]) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_sink(config: Config) -> Sink:
    """The sink the configuration asks for: the rotating --output-file, else standard output, unless
    --output-pcap takes it (:class:`DiscardSink`: the lines are not written)."""
    if not config.output.file:
        return DiscardSink() if config.output.pcap_to_stdout else StdoutSink()
    try:
        return RotatingFileSink(
            config.output.file,
            max_bytes=config.output.file_max_bytes,
            max_backups=config.output.file_max_backups,
            max_age_days=config.output.file_max_age,
            compress=config.output.file_compress,
        )
    except OSError as e:
        raise UserError(f"--output-file: {config.output.file}: {e.strerror}") from None
