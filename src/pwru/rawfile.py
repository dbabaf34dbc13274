"""--output-raw FILE and ``pwru print FILE``: the kernel's records kept as they came, formatted later.

Recording costs what copying bytes costs: the read loop hands each batch of ring-buffer records to
:class:`RawOutput`, which writes them with a length before each, in one ``write`` per batch. Nothing is decoded
or symbolised then. The file carries what printing needs, so it can be printed anywhere, any number of times,
with any output flag:

* a magic line, then chunks ``(kind: u32, length: u32, payload)``, little-endian;
* ``META`` first (JSON): the format version, the record-time flags that decide what the kernel collected, the
  attach plan's probe names (records of table-indexed probes name them by number), the drop reasons of the
  kernel's BTF, the clock offset of the moment (``--timestamp absolute``), the kernel release;
* ``BTF``: the object's BTF, where every record layout comes from (:class:`pwru.records.Schema`);
* ``RECORDS``: one batch of records (``u32`` length + the record's bytes, each); after it, with
  ``--output-stack``, ``STACKS`` (JSON: stack id -> frames, those not written before or changed since: each
  holds from its batch on): the stack map does not outlive the run; and
  ``PROCS`` (JSON: pid -> executable) for the pids first seen in the batch: processes do not outlive it either;
* ``PROBES`` (JSON) at the end: the probe names again, with the probes added while recording (programs loaded
  after the start, --filter-trace-tc/xdp);
* ``KALLSYMS`` last (zlib): ``/proc/kallsyms`` as it was when recording ended, modules loaded meanwhile included.

:func:`replay` is ``pwru print``: it reads the chunks back and feeds the batches through the same pipeline a
live run builds (:func:`pwru.run.make_pipeline`), with the flags given to ``print``.
"""

from __future__ import annotations

import json
import os
import platform
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pwru.errors import UserError
from pwru.output.names import ProcessNames
from pwru.output.sink import FileSink
from pwru.records import Batch

if TYPE_CHECKING:
    from pwru.config import Config

MAGIC = b"PWRU-RAW 1\n"
VERSION = 1
META, BTF, RECORDS, STACKS, KALLSYMS, PROCS, PROBES = 1, 2, 3, 4, 5, 6, 7
_CHUNK = struct.Struct("<II")
_LEN = struct.Struct("<I")
KALLSYMS_PATH = Path("/proc/kallsyms")
#: The output flags that decide what the kernel collects: fixed when recording, shown as recorded.
RECORDED_FLAGS = ("meta", "tuple", "stack", "caller", "tunnel", "skb", "shared_info", "skb_cb")


class RawFileError(UserError):
    """A file ``pwru print`` cannot read."""


def _chunk(kind: int, payload: bytes) -> bytes:
    return _CHUNK.pack(kind, len(payload)) + payload


class RawOutput:
    """The pipeline output of --output-raw: each batch's records, as they are, into the file."""

    def __init__(self, sink: FileSink, meta: dict[str, object], object_btf: bytes, stacks: bool,
                 probe_names: Callable[[], Sequence[str]]) -> None:  # fmt: skip
        self.sink = sink
        self._probe_names = probe_names
        self._head = MAGIC + _chunk(META, json.dumps(meta).encode()) + _chunk(BTF, object_btf)
        self._stacks = stacks
        self._written_stacks: dict[int, tuple[int, ...]] = {}  # as last written (a stack id can be reused)
        self._procs = ProcessNames()
        self._pids: set[int] = set()

    def start(self) -> None:
        self.sink.write(self._head)

    def consume(self, batch: Batch) -> None:
        pack = _LEN.pack
        body = b"".join([part for r in batch.records for part in (pack(len(r)), r)])
        out = _chunk(RECORDS, body)
        if self._stacks and batch.stacks:
            new = {k: v for k, v in batch.stacks.items() if self._written_stacks.get(k) != v}
            if new:
                self._written_stacks.update(new)
                out += _chunk(STACKS, json.dumps({k: list(v) for k, v in new.items()}).encode())
        pid = batch.schema.layout("event").unpacker("pid")
        pids = {pid(buf)[0] for buf in batch.of_type("event")} - self._pids
        if pids:
            self._pids |= pids
            out += _chunk(PROCS, json.dumps({p: self._procs.exe(p) for p in pids}).encode())
        self.sink.write(out)

    def idle(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        try:
            if self.sink.delivered:  # the head went out: end the file with the symbols of the moment
                try:
                    text = KALLSYMS_PATH.read_bytes()
                except OSError:
                    text = b""
                self.sink.write(_chunk(PROBES, json.dumps(list(self._probe_names())).encode()))
                self.sink.write(_chunk(KALLSYMS, zlib.compress(text, 1)))
        finally:
            self.sink.close()


def recording_meta(config_output: object, probe_names: Sequence[str], reasons: dict[int, str]) -> dict[str, object]:
    """The META chunk of a run."""
    from pwru.output.fields import monotonic_offset_ns

    return {
        "version": VERSION,
        "flags": {name: getattr(config_output, name) for name in RECORDED_FLAGS},
        "probes": list(probe_names),
        "reasons": {str(k): v for k, v in reasons.items()},
        "clock_offset_ns": monotonic_offset_ns(),
        "kernel": platform.release(),
    }


@dataclass
class Recording:
    """What a raw file holds: everything but the records read at once (one pass over the chunk headers, the
    record chunks skipped), the records streamed a batch at a time by :meth:`batches` (a recording can hold far
    more than memory should)."""

    path: str
    file: BinaryIO
    meta: dict[str, object]
    btf: bytes
    kallsyms: bytes
    #: pid -> executable (None: unreadable then), as recorded.
    exes: dict[int, str | None] = field(default_factory=dict)

    def batches(self) -> Iterator[tuple[list[bytes], dict[int, tuple[int, ...]]]]:
        """Each batch's records, with the stacks first written or changed with it (they hold from it on)."""
        pending: tuple[list[bytes], dict[int, tuple[int, ...]]] | None = None
        try:
            for kind, payload in _chunks(self.file, self.path, (RECORDS, STACKS)):
                if kind == RECORDS:
                    if pending is not None:
                        yield pending
                    pending = (_records(memoryview(payload), self.path), {})
                elif pending is not None:
                    pending[1].update({int(k): tuple(v) for k, v in json.loads(payload).items()})
        except (ValueError, TypeError, AttributeError) as e:
            raise RawFileError(f"{self.path}: damaged ({e})") from None
        if pending is not None:
            yield pending

    def close(self) -> None:
        self.file.close()


def _chunks(f: BinaryIO, path: str, wanted: tuple[int, ...]) -> Iterator[tuple[int, bytes]]:
    """The chunks of the kinds ``wanted`` from the first one on; the others are skipped, never read."""
    size = os.fstat(f.fileno()).st_size
    pos = f.seek(len(MAGIC))
    while pos < size:
        if pos + _CHUNK.size > size:
            raise RawFileError(f"{path}: cut short in a chunk header at byte {pos} (the recording did not end)")
        kind, length = _CHUNK.unpack(f.read(_CHUNK.size))
        pos += _CHUNK.size
        if pos + length > size:
            raise RawFileError(f"{path}: cut short in a chunk at byte {pos} (the recording did not end)")
        if kind in wanted:
            yield kind, f.read(length)
        else:
            f.seek(length, os.SEEK_CUR)
        pos += length


def _records(body: memoryview, path: str) -> list[bytes]:
    out: list[bytes] = []
    pos, end = 0, len(body)
    unpack = _LEN.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise RawFileError(f"{path}: a record batch is malformed")
        (n,) = unpack(body, pos)
        pos += 4
        if pos + n > end:
            raise RawFileError(f"{path}: a record batch is malformed")
        out.append(bytes(body[pos : pos + n]))
        pos += n
    return out


def read(path: str) -> Recording:
    """Open a raw file and read all but its records; a file that is not one, or is damaged, is a one-line
    :class:`RawFileError`."""
    try:
        # non-blocking, then checked on the open file: a FIFO given by mistake is refused, never waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RawFileError(f"cannot read {path}: {e.strerror}") from None
    f = open(fd, "rb")  # noqa: SIM115 -- the Recording owns it (closed by replay)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RawFileError(f"{path}: not a regular file")
        if f.read(len(MAGIC)) != MAGIC:
            raise RawFileError(f"{path}: not a pwru raw file (written by --output-raw)")
        meta: dict[str, object] | None = None
        btf = b""
        kallsyms = b""
        exes: dict[int, str | None] = {}
        for kind, payload in _chunks(f, path, (META, BTF, PROBES, PROCS, KALLSYMS)):
            if kind == META:
                meta = json.loads(payload)
            elif kind == BTF:
                btf = payload
            elif kind == PROBES and isinstance(meta, dict):
                meta["probes"] = json.loads(payload)
            elif kind == PROCS:
                exes.update({int(k): v for k, v in json.loads(payload).items()})
            elif kind == KALLSYMS:
                kallsyms = zlib.decompress(payload)
        if not isinstance(meta, dict) or meta.get("version") != VERSION or not btf:
            raise RawFileError(f"{path}: no header of format version {VERSION}")
        return Recording(path, f, meta, btf, kallsyms, exes)
    except OSError as e:
        f.close()
        raise RawFileError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, TypeError, AttributeError, zlib.error) as e:  # JSONDecodeError is a ValueError; the
        f.close()  # others: JSON of the wrong shape
        raise RawFileError(f"{path}: damaged ({e})") from None
    except BaseException:
        f.close()
        raise


class RecordedProcesses(ProcessNames):
    """The PROCESS column from the executables recorded with the records."""

    def __init__(self, exes: dict[int, str | None]) -> None:
        super().__init__()
        self._exes = exes

    def exe(self, pid: int) -> str | None:
        return self._exes.get(pid)


class RecordedStacks:
    """A stage giving each batch the stacks as recorded up to it (``known``, kept up to date by the replay)."""

    def __init__(self) -> None:
        self.known: dict[int, tuple[int, ...]] = {}

    def process(self, batch: Batch) -> Batch:
        batch.stacks = self.known  # the same dict for every batch: each is consumed before the next comes
        return batch

    def finish(self) -> Batch | None:
        return None


#: Flags of `pwru print` that need what a raw recording does not hold.
NOT_AT_PRINT = {"pcap": "--output-pcap", "journey": "--output-journey", "skb_metadata": "--output-skb-metadata",
                "netns_names": "--output-netns-names", "raw": "--output-raw"}  # fmt: skip


def replay(path: str, config: Config) -> int:
    """``pwru print FILE``: the recording formatted with ``config``'s output flags, as a live run would have."""
    for attr, flag in NOT_AT_PRINT.items():
        if getattr(config.output, attr) not in (None, False, ()):
            raise UserError(f"print: {flag} is not available when printing a recording")
    if config.output.summarises:
        raise UserError("print: --summary counts in the kernel while tracing: give it to the recording run")
    rec = read(path)
    try:
        return _replay(rec, config)
    finally:
        rec.close()


def _replay(rec: Recording, config: Config) -> int:
    from pwru import run
    from pwru.ebpf.btf import Spec
    from pwru.ebpf.kallsyms import Kallsyms
    from pwru.output import fields, open_sink
    from pwru.records import Schema
    from pwru.symbols import Symbols

    path = rec.path
    recorded = rec.meta.get("flags")
    if not isinstance(recorded, dict):
        raise RawFileError(f"{path}: no header of format version {VERSION}")
    shown = {k: recorded[k] for k in RECORDED_FLAGS if k in recorded}
    config = replace(config, output=replace(config.output, **shown))
    try:
        schema = Schema(Spec.from_bytes(rec.btf))
    except ValueError as e:
        raise RawFileError(f"{path}: its record layouts do not read: {e}") from None
    probes = rec.meta.get("probes")
    reasons = rec.meta.get("reasons")
    offset = rec.meta.get("clock_offset_ns")
    if not isinstance(probes, list) or not isinstance(reasons, dict) or not isinstance(offset, int):
        raise RawFileError(f"{path}: damaged header")
    fields.use_clock_offset(offset)
    names = Symbols(Kallsyms.parse(rec.kallsyms), [str(p) for p in probes], {int(k): str(v) for k, v in
                    reasons.items()}, schema.probe_kind("index"), RecordedProcesses(rec.exes))  # fmt: skip
    stacks = RecordedStacks() if config.output.stack else None
    sink = open_sink(config)
    pipeline, limit, printed = run.build_pipeline(config, names, schema, sink, stacks)
    try:
        pipeline.start()
        for records, new_stacks in rec.batches():
            if stacks is not None:
                stacks.known.update(new_stacks)
            pipeline.feed(records)
            if limit is not None and limit.done:
                break
    finally:
        pipeline.close()
        sink.close()
    print(f"print: {printed()} events printed", file=sys.stderr)
    return 0
