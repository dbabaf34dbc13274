#!/usr/bin/env python3
"""Which pcapng writer --output-pcap uses: frames per second written by each candidate.

Each candidate writes the same capture to one in-memory stream: a section header, 4 interface blocks (two
Ethernet, two raw IPv4) and N enhanced packet blocks of 256 bytes, each with a comment of pwru's kind
(``ip_rcv skb=0xffff... reason=... pid=... comm=...``), nanosecond timestamps. The figure is the best of
``--runs`` runs. A library missing from the interpreter is reported as such, not guessed.

    python3 bench/pcapng_writer.py [--frames 100000] [--runs 3]

The candidates: pwru's own (``pwru.output.pcapng``), python-pcapng 2.1.1, dpkt 1.9.8, scapy 2.8.0 (its fastest
path, ``PcapNgWriter._write_packet`` with raw bytes: no Packet objects built). Each output is read back with
python-pcapng's reader when it is installed (frame count and the first frame's bytes), so a writer that skipped
work would be caught.

Measured on the development machine (2 CPUs shared with other jobs, Python 3.11, 100,000 frames, best of 3;
two runs, the first while another job took a CPU)::

    writer           frames/s (busy)  frames/s (quieter)
    pwru.pcapng           296,126        781,203
    python-pcapng          13,919         26,723
    dpkt                   40,960         59,495
    scapy                  90,735        135,402
    PcapOutput             96,612        164,012   (pwru's whole output: pairing, comments, sink)

Run with the libraries importable (e.g. a venv with ``pip install python-pcapng dpkt scapy`` on PYTHONPATH after
``src``); pwru itself does not depend on them.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

SNAPLEN = 256
#: (name, link type) of the interfaces, frames spread over them in turn.
IFACES = (("lo", 1), ("veth0", 1), ("lo", 228), ("veth0", 228))


def frames(n: int) -> list[tuple[int, int, bytes, int, str]]:
    """(interface id, ts ns, data, original length, comment) for each frame."""
    base = time.time_ns()
    out = []
    for i in range(n):
        data = bytes((i + k) & 0xFF for k in range(16)) * (SNAPLEN // 16)
        comment = (
            f"kfree_skb_reason skb=0xffff8881{i:08x} reason=SKB_DROP_REASON_NO_SOCKET pid={1000 + i % 7} "
            "comm=python3"
        )
        out.append((i % len(IFACES), base + i * 1000, data, 1500, comment))
    return out


def write_ours(out: io.BytesIO, fr: list[tuple[int, int, bytes, int, str]]) -> None:
    from pwru.output import pcapng

    out.write(pcapng.section_header("pwru"))
    for name, link in IFACES:
        out.write(pcapng.interface(link, SNAPLEN, name, "netns 4026531840"))
    packet = pcapng.packet
    for iface, ts, data, orig, comment in fr:
        out.write(packet(iface, ts, data, orig, comment))


def write_python_pcapng(out: io.BytesIO, fr: list[tuple[int, int, bytes, int, str]]) -> None:
    from pcapng import FileWriter, blocks

    shb = blocks.SectionHeader(options={"shb_userappl": "pwru"})
    idbs = [
        shb.new_member(
            blocks.InterfaceDescription,
            link_type=link,
            snaplen=SNAPLEN,
            options={"if_name": name, "if_description": "netns 4026531840", "if_tsresol": b"\x09"},
        )
        for name, link in IFACES
    ]
    writer = FileWriter(out, shb)  # writes the interfaces made so far too
    assert len(idbs) == len(IFACES)
    for iface, ts, data, orig, comment in fr:
        epb = shb.new_member(
            blocks.EnhancedPacket,
            interface_id=iface,
            timestamp_high=ts >> 32,
            timestamp_low=ts & 0xFFFFFFFF,
            packet_len=orig,
            packet_data=data,
            options={"opt_comment": comment},
        )
        writer.write_block(epb)


def write_dpkt(out: io.BytesIO, fr: list[tuple[int, int, bytes, int, str]]) -> None:
    from dpkt import pcapng as p

    shb = p.SectionHeaderBlockLE(opts=[p.PcapngOptionLE(code=p.PCAPNG_OPT_SHB_USERAPPL, text="pwru"),
                                       p.PcapngOptionLE(code=p.PCAPNG_OPT_ENDOFOPT)])  # fmt: skip

    def idb(name: str, link: int) -> p.InterfaceDescriptionBlockLE:
        return p.InterfaceDescriptionBlockLE(
            linktype=link,
            snaplen=SNAPLEN,
            opts=[
                p.PcapngOptionLE(code=p.PCAPNG_OPT_IF_NAME, text=name),
                p.PcapngOptionLE(code=p.PCAPNG_OPT_IF_DESCRIPTION, text="netns 4026531840"),
                p.PcapngOptionLE(code=p.PCAPNG_OPT_IF_TSRESOL, data=b"\x09"),
                p.PcapngOptionLE(code=p.PCAPNG_OPT_ENDOFOPT),
            ],
        )

    # dpkt's Writer takes one interface; the others are written as blocks of their own.
    writer = p.Writer(out, snaplen=SNAPLEN, linktype=IFACES[0][1], shb=shb, idb=idb(*IFACES[0]))
    for name, link in IFACES[1:]:
        out.write(bytes(idb(name, link)))
    for iface, ts, data, orig, comment in fr:
        epb = p.EnhancedPacketBlockLE(
            iface_id=iface,
            ts_high=ts >> 32,
            ts_low=ts & 0xFFFFFFFF,
            pkt_len=orig,
            pkt_data=data,
            opts=[
                p.PcapngOptionLE(code=p.PCAPNG_OPT_COMMENT, text=comment),
                p.PcapngOptionLE(code=p.PCAPNG_OPT_ENDOFOPT),
            ],
        )
        writer.writepkt(epb)


def write_scapy(out: io.BytesIO, fr: list[tuple[int, int, bytes, int, str]]) -> None:
    from scapy.utils import PcapNgWriter

    # scapy names interfaces by ifname and keys its interface blocks by name alone (one link type per name):
    # the names get the link type appended so the four interfaces stay four.
    names = [f"{name}/{link}".encode() for name, link in IFACES]
    # scapy opens its file by name: a temporary file, copied into ``out`` after (that copy is timed too).
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scapy.pcapng")
        writer = PcapNgWriter(path)
        _write_scapy_frames(writer, fr, names)
        writer.close()
        with open(path, "rb") as f:
            out.write(f.read())


def _write_scapy_frames(writer: Any, fr: list[tuple[int, int, bytes, int, str]], names: list[bytes]) -> None:
    writer.linktype = IFACES[0][1]
    writer._write_header(None)
    for iface, ts, data, orig, comment in fr:
        writer._write_packet(
            data,
            linktype=IFACES[iface][1],
            sec=ts // 1_000_000_000,
            usec=(ts // 1000) % 1_000_000,
            caplen=len(data),
            wirelen=orig,
            ifname=names[iface],
            comments=[comment.encode()],
        )


CANDIDATES: dict[str, Callable[[io.BytesIO, list[tuple[int, int, bytes, int, str]]], None]] = {
    "pwru.pcapng": write_ours,
    "python-pcapng": write_python_pcapng,
    "dpkt": write_dpkt,
    "scapy": write_scapy,
}


def pipeline_output(n: int) -> float | None:
    """Frames/s of pwru's whole --output-pcap path in user space: packet + event records (from the built object's
    BTF, in the kernel's order) paired, comments formatted, interface blocks, units into a file sink on /dev/shm
    (or the temp dir)."""
    try:
        from pwru.bpf import object_path
        from pwru.ebpf.elf import ObjectSpec
        from pwru.output.pcap import PcapOutput
        from pwru.output.sink import FileSink
        from pwru.records import Batch, Schema
    except ImportError:
        return None
    obj = ObjectSpec.load(object_path())
    assert obj.btf is not None
    schema = Schema(obj.btf)
    event, packet = schema.layout("event"), schema.layout("packet")
    assert packet.tail is not None

    class Names:
        def probe_name(self, probe_kind: int, probe: int) -> str:
            return "kfree_skb_reason"

        def reason_name(self, reason: int) -> str:
            return "SKB_DROP_REASON_NO_SOCKET"

        def symbol(self, addr: int) -> str:
            return "__udp4_lib_rcv+0x5b1"

        def process(self, pid: int, comm: bytes) -> str:
            return f"{comm.decode()}:{pid}"

    records = []
    base = time.monotonic_ns()
    data = bytes(range(256))
    for i in range(n):
        head = {"ts": base + i, "skb": 0xFFFF888100000000 + i * 256, "probe": 0x1000, "probe_kind": 0}
        records.append(packet.encode({**head, "type": schema.type_id("packet"), "netns": 4026531840,
                                      "ifindex": 1 + i % 2, "ifname": b"lo", "linktype": 1, "orig_len": 1500,
                                      "size": packet.tail.offset + len(data), "data": data}))  # fmt: skip
        records.append(event.encode({**head, "type": schema.type_id("event"), "reason": 2, "location": 0xA000,
                                     "pid": 1000 + i % 7, "comm": b"python3", "size": event.size}))  # fmt: skip
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        out = PcapOutput(FileSink(os.path.join(tmp, "p.pcapng"), "output-pcap"), Names(), SNAPLEN)
        t0 = time.perf_counter()
        out.start()
        for i in range(0, len(records), 2048):  # the run loop's batches
            out.consume(Batch(schema, records[i : i + 2048]))
        out.close()
        elapsed = time.perf_counter() - t0
    assert out.frames == n
    return n / elapsed


def read_back(data: bytes) -> tuple[int, bytes] | None:
    """Frames and the first frame's bytes, read with python-pcapng (None when it is not installed)."""
    try:
        from pcapng import FileScanner, blocks
    except ImportError:
        return None
    count, first = 0, b""
    for block in FileScanner(io.BytesIO(data)):
        if isinstance(block, blocks.EnhancedPacket):
            if count == 0:
                first = bytes(block.packet_data)
            count += 1
    return count, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fr = frames(args.frames)
    print(f"{'writer':<15} {'frames/s':>12} {'MB/s':>8} {'file bytes':>12}  read back")
    for name, write in CANDIDATES.items():
        best = None
        size = 0
        check = ""
        try:
            for _ in range(args.runs):
                out = io.BytesIO()
                t0 = time.perf_counter()
                write(out, fr)
                elapsed = time.perf_counter() - t0
                best = elapsed if best is None else min(best, elapsed)
                size = len(out.getvalue())
            back = read_back(out.getvalue())
            if back is not None:
                ok = back == (len(fr), fr[0][2])
                check = "ok" if ok else f"MISMATCH: {back[0]} frames"
        except ImportError as e:
            print(f"{name:<15} not installed ({e.name})")
            continue
        assert best is not None
        print(f"{name:<15} {len(fr) / best:>12,.0f} {size / best / 1e6:>8.1f} {size:>12,}  {check}")
    rates = [r for r in (pipeline_output(args.frames) for _ in range(args.runs)) if r is not None]
    if rates:
        print(f"{'PcapOutput':<15} {max(rates):>12,.0f}  (records -> paired, commented frames -> file sink)")
    else:
        print("PcapOutput      not measured (pwru's dependencies are not importable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
