"""--output-pcap: each event's packet as a pcapng frame, with the event in the frame's comment.

The kernel sends a ``struct packet`` record (pwru.h) right before the event it belongs to, with the event's ``ts``,
``skb`` and ``probe`` in its header: that is how the two are paired here. A packet is held until its event comes
(later in ring order, usually in the same batch, after at most a few records of other CPUs; at most
:data:`PENDING_LIMIT` packets are held, the oldest forgotten first: a packet whose event was lost or stopped by the
line limit). The frame is written when the event arrives, so the frames are the events printed, each with its bytes,
and the event that reaches the line limit has its frame too. An event whose packet record did not fit the ring
has no frame (counted in ``unframed``; the run's exit warns with it).

One interface block per (netns, ifindex, link type) seen, made before its first frame and written with it as one
unit; its name is the device's, its description says the netns and ifindex. Frame comments carry the probe
(function or tracepoint), the skb address, the drop reason and location when there is one, the process (pid and
comm) and the device. Timestamps are wall-clock nanoseconds, converted from the kernel's monotonic ones as
``--timestamp absolute`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pwru import __version__
from pwru.output import pcapng
from pwru.output.fields import CACHE_LIMIT, monotonic_offset_ns, remember
from pwru.output.names import Names, sanitize
from pwru.output.sink import Sink
from pwru.records import Batch, Schema

#: Packet records held waiting for their event (a bound on memory: PENDING_LIMIT x the snap length at most).
PENDING_LIMIT = 1024
#: The header fields an event and its packet record share (the pairing key, as bytes of the header).
KEY_FIELDS = ("ts", "skb", "probe")
EVENT_FIELDS = ("probe_kind", "probe", "reason", "location", "pid", "comm")
PACKET_FIELDS = ("ts", "skb", "netns", "ifindex", "orig_len", "linktype", "ifname", "size")


class PcapOutput:
    """A pipeline output writing pcapng to ``sink`` (see the module documentation)."""

    def __init__(self, sink: Sink, names: Names, snaplen: int, pending_limit: int = PENDING_LIMIT) -> None:
        self.sink = sink
        self._names = names
        self._snaplen = snaplen
        self._pending_limit = pending_limit
        self._pending: dict[bytes, bytes] = {}
        self._interfaces: dict[tuple[int, int, int], int] = {}
        # comment pieces by what they come from (bounded as the formatters' caches are)
        self._where: dict[tuple[int, int, int, int], tuple[str, str]] = {}
        self._comms: dict[bytes, str] = {}
        self._devs: dict[bytes, str] = {}
        self._offset_ns = monotonic_offset_ns()
        self._schema: Schema | None = None
        self._event_type = self._packet_type = -1
        self._key = slice(0)
        self._event: Callable[[Any], tuple[Any, ...]] = lambda buf: ()
        self._packet: Callable[[Any], tuple[Any, ...]] = lambda buf: ()
        self._data_offset = 0
        self._started = False
        #: Frames handed to the sink.
        self.frames = 0
        #: Events that came without their packet record (it did not fit the ring buffer).
        self.unframed = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.sink.write(pcapng.section_header(f"pwru {__version__}"))

    def _bind(self, schema: Schema) -> None:
        self._schema = schema
        self._event_type = schema.type_id("event")
        self._packet_type = schema.type_id("packet")
        start, end = schema.header.span(*KEY_FIELDS)
        self._key = slice(start, end)
        self._event = schema.layout("event").unpacker(*EVENT_FIELDS)
        packet = schema.layout("packet")
        self._packet = packet.unpacker(*PACKET_FIELDS)
        assert packet.tail is not None, "struct packet has no data[] tail"
        self._data_offset = packet.tail.offset

    def consume(self, batch: Batch) -> None:
        if batch.schema is not self._schema:
            self._bind(batch.schema)
        type_of, key, pending = batch.schema.type_of, self._key, self._pending
        for rec in batch.records:
            rtype = type_of(rec)[0]
            if rtype == self._packet_type:
                if len(pending) >= self._pending_limit:
                    del pending[next(iter(pending))]
                pending[bytes(rec[key])] = rec
            elif rtype == self._event_type:
                packet = pending.pop(bytes(rec[key]), None)
                if packet is not None:
                    self._write_frame(rec, packet)
                else:
                    self.unframed += 1

    def _write_frame(self, event: bytes, packet: bytes) -> None:
        probe_kind, probe, reason, location, pid, comm = self._event(event)
        ts, skb, netns, ifindex, orig_len, linktype, ifname, size = self._packet(packet)
        data = bytes(packet[self._data_offset : size])
        dev = self._devs.get(ifname)
        if dev is None:
            dev = remember(self._devs, ifname, sanitize(ifname.partition(b"\0")[0]))
        block = b""
        iface = self._interfaces.get((netns, ifindex, linktype))
        if iface is None:
            iface = self._interfaces[(netns, ifindex, linktype)] = len(self._interfaces)
            name = dev or (f"ifindex {ifindex}" if ifindex else "no device")
            block = pcapng.interface(linktype, self._snaplen, name, f"netns {netns} ifindex {ifindex}")
        where = self._where.get((probe_kind, probe, reason, location))
        if where is None:
            if len(self._where) >= CACHE_LIMIT:
                self._where.clear()
            where = self._where[(probe_kind, probe, reason, location)] = self._where_text(
                probe_kind, probe, reason, location
            )
        process = self._comms.get(comm) or remember(self._comms, comm, sanitize(comm.partition(b"\0")[0]))
        device = f"dev={dev}:{ifindex}" if dev else f"dev={ifindex}"
        comment = f"{where[0]} skb={skb:#x}{where[1]} pid={pid} comm={process} netns={netns} {device}"
        self.sink.write(block + pcapng.packet(iface, ts + self._offset_ns, data, orig_len, comment))
        self.frames += 1

    def _where_text(self, probe_kind: int, probe: int, reason: int, location: int) -> tuple[str, str]:
        """The comment's ``func=`` and its `` reason= location=`` (empty when the event is no drop)."""
        names = self._names
        func = f"func={sanitize(names.probe_name(probe_kind, probe))}"
        extra = ""
        if reason >= 0:
            extra += f" reason={sanitize(names.reason_name(reason)) or reason}"
        if location:
            extra += f" location={sanitize(names.symbol(location))}"
        return func, extra

    def idle(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()
