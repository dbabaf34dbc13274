"""Per-CPU perf buffers: the event channel for kernels without BPF ring buffers (< 5.8).

A ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` map holds, per CPU, a perf event of type ``PERF_COUNT_SW_BPF_OUTPUT``.
``bpf_perf_event_output`` writes ``PERF_RECORD_SAMPLE`` records into that CPU's mmap'ed ring; when the ring
is full the kernel counts the loss and later writes a ``PERF_RECORD_LOST`` record. :class:`PerfReader`
opens one event per online CPU, drains all rings in batches, and adds up the losses in :attr:`lost`.

A raw sample's bytes are the program's output padded by the kernel to keep records 8-byte aligned, so a
record may be up to 7 bytes longer than what the program wrote.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import select
import struct
from typing import Self

from pwru.ebpf import syscall
from pwru.ebpf.maps import Map, parse_cpu_list
from pwru.ebpf.syscall import MapType

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
_PERF_EVENT_IOC_ENABLE = 0x2400

# Offsets in struct perf_event_mmap_page.
_DATA_HEAD = 1024
_DATA_TAIL = 1032
_DATA_OFFSET = 1040
_DATA_SIZE = 1048

_u64 = struct.Struct("<Q")
_hdr = struct.Struct("<IHH")


def online_cpus() -> list[int]:
    """The CPUs that are online now (perf events can only be opened on those)."""
    with open("/sys/devices/system/cpu/online") as f:
        return parse_cpu_list(f.read())


class _CpuRing:
    def __init__(self, cpu: int, pages: int) -> None:
        attr = syscall.PerfEventAttr(
            type=syscall.PERF_TYPE_SOFTWARE,
            size=ctypes.sizeof(syscall.PerfEventAttr),
            config=syscall.PERF_COUNT_SW_BPF_OUTPUT,
            sample_type=syscall.PERF_SAMPLE_RAW,
            sample_period=1,
            wakeup_events=1,
        )
        self.cpu = cpu
        self.fd = syscall.perf_event_open(attr, -1, cpu, -1, syscall.PERF_FLAG_FD_CLOEXEC)
        try:
            self.mm = mmap.mmap(self.fd, (1 + pages) * mmap.PAGESIZE, mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            raise
        off = _u64.unpack_from(self.mm, _DATA_OFFSET)[0]
        size = _u64.unpack_from(self.mm, _DATA_SIZE)[0]
        self.data_off = int(off) or mmap.PAGESIZE  # kernels < 4.1 leave these zero
        self.data_size = int(size) or pages * mmap.PAGESIZE
        # data_head and data_tail as whole 64-bit words (one native load or store, as ringbuf.py explains:
        # struct's little-endian store is not one write, and the kernel may read the tail halfway)
        self._words = memoryview(self.mm).cast("Q")

    def drain(self, out: list[memoryview]) -> int:
        """Append this ring's samples to ``out``; return how many records the kernel reported lost."""
        mm = self.mm
        words = self._words
        head = int(words[_DATA_HEAD // 8])  # read once; records before it are complete
        tail = int(words[_DATA_TAIL // 8])
        if head == tail:
            return 0
        size = self.data_size
        start = tail % size
        avail = head - tail
        base = self.data_off
        if start + avail <= size:
            data = memoryview(mm[base + start : base + start + avail])
        else:  # the ring is mapped once: join the two pieces
            first = size - start
            data = memoryview(mm[base + start : base + size] + mm[base : base + avail - first])
        lost = 0
        off = 0
        while off + 8 <= avail:
            rtype, _misc, rsize = _hdr.unpack_from(data, off)
            if rsize < 8:
                break  # corrupt; give the space back and stop
            if rtype == PERF_RECORD_SAMPLE:
                raw_len = struct.unpack_from("<I", data, off + 8)[0]
                out.append(data[off + 12 : off + 12 + raw_len])
            elif rtype == PERF_RECORD_LOST:
                lost += int(_u64.unpack_from(data, off + 16)[0])
            off += rsize
        words[_DATA_TAIL // 8] = head
        return lost

    def close(self) -> None:
        self._words.release()
        self.mm.close()
        os.close(self.fd)


class PerfReader:
    """Reads a perf event array map's per-CPU buffers (``pages_per_cpu`` must be a power of two)."""

    def __init__(self, events: Map, pages_per_cpu: int = 8) -> None:
        if events.type != MapType.PERF_EVENT_ARRAY:
            raise ValueError(f"{events!r} is not a perf event array")
        if pages_per_cpu <= 0 or pages_per_cpu & (pages_per_cpu - 1):
            raise ValueError("pages_per_cpu must be a power of two")
        self._map = events
        self._rings: list[_CpuRing] = []
        self._epoll = select.epoll()
        #: Samples the kernel could not store because a buffer was full.
        self.lost = 0
        try:
            for cpu in online_cpus():
                if cpu >= events.max_entries:
                    break
                ring = _CpuRing(cpu, pages_per_cpu)
                self._rings.append(ring)
                events.update(cpu, ring.fd.to_bytes(4, "little"))
                fcntl.ioctl(ring.fd, _PERF_EVENT_IOC_ENABLE, 0)
                self._epoll.register(ring.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise
        self._closed = False

    def read_batch(self) -> list[memoryview]:
        """Every sample waiting in any CPU's buffer (per CPU in order; CPUs one after the other)."""
        out: list[memoryview] = []
        for ring in self._rings:
            self.lost += ring.drain(out)
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until some CPU's buffer has data or ``timeout`` seconds pass."""
        return bool(self._epoll.poll(-1 if timeout is None else timeout))

    def close(self) -> None:
        """Remove the events from the map, unmap and close them (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for ring in self._rings:
            if not self._map.closed:
                self._map.delete(ring.cpu)
            ring.close()
        self._rings = []
        self._epoll.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
