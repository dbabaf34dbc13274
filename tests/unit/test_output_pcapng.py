"""The pcapng writer (block layout, padding, options) and the --output-pcap pipeline output (pairing packets with
their events, one interface per netns/device/link type, comments), read back by tshark and by a block walk."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from pwru import config as cfg
from pwru.bpf import object_path
from pwru.output import pcapng
from pwru.output.pcap import PcapOutput
from pwru.output.sink import FileSink
from pwru.records import Batch

from .test_output_text import INDEX, FakeNames, make_event, schema

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")

ETH_FRAME = bytes.fromhex("ffffffffffff 020000000001 0800") + bytes.fromhex(
    "4500001c0001000040110000 0a000001 0a000002 1f900fa0 0008 0000"
)  # Ethernet + IPv4 + UDP 8080->4000, no payload
IP_FRAME = ETH_FRAME[14:]


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(block type, body) of every block, checking each block's two length fields and 32-bit alignment."""
    out = []
    pos = 0
    while pos < len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        assert total % 4 == 0 and total >= 12, (pos, total)
        (trailer,) = struct.unpack_from("<I", data, pos + total - 4)
        assert trailer == total, (pos, total, trailer)
        out.append((btype, data[pos + 8 : pos + total - 4]))
        pos += total
    assert pos == len(data)
    return out


def options(raw: bytes) -> list[tuple[int, bytes]]:
    """(code, value) of an option list, ending at opt_endofopt; checks each value is padded to 32 bits."""
    out = []
    pos = 0
    while True:
        code, length = struct.unpack_from("<HH", raw, pos)
        if code == 0:
            assert length == 0 and pos + 4 == len(raw), (pos, len(raw))
            return out
        out.append((code, raw[pos + 4 : pos + 4 + length]))
        pad = (4 - length % 4) % 4
        assert raw[pos + 4 + length : pos + 4 + length + pad] == bytes(pad)
        pos += 4 + length + pad


def tshark_fields(path: Path | None, *fields: str, stdin: bytes | None = None) -> list[list[str]]:
    assert TSHARK is not None
    cmd = [TSHARK, "-r", str(path) if path else "-", "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr.decode()
    return [line.split("|") for line in r.stdout.decode().splitlines()]


# --- the writer ---


def test_section_header_layout() -> None:
    ((btype, body),) = blocks(pcapng.section_header("pwru 9"))
    assert btype == pcapng.SHB_TYPE
    magic, major, minor, section_len = struct.unpack_from("<IHHq", body)
    assert (magic, major, minor, section_len) == (0x1A2B3C4D, 1, 0, -1)
    assert options(body[16:]) == [(pcapng.SHB_USERAPPL, b"pwru 9")]


def test_interface_layout_and_options() -> None:
    ((btype, body),) = blocks(pcapng.interface(pcapng.LINKTYPE_IPV6, 300, "veth-a", "netns 7"))
    assert btype == pcapng.IDB_TYPE
    assert struct.unpack_from("<HHI", body) == (pcapng.LINKTYPE_IPV6, 0, 300)
    assert options(body[8:]) == [
        (pcapng.IF_NAME, b"veth-a"),  # 6 bytes: 2 of padding
        (pcapng.IF_DESCRIPTION, b"netns 7"),
        (pcapng.IF_TSRESOL, b"\x09"),
    ]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 255, 256])
def test_packet_layout_pads_data_and_comment(size: int) -> None:
    data = bytes(range(size))
    comment = "x" * (size % 7)
    ts = 1_700_000_000_123_456_789
    ((btype, body),) = blocks(pcapng.packet(3, ts, data, 1000, comment))
    assert btype == pcapng.EPB_TYPE
    iface, hi, lo, cap, orig = struct.unpack_from("<IIIII", body)
    assert (iface, (hi << 32) | lo, cap, orig) == (3, ts, size, 1000)
    padded = size + (4 - size % 4) % 4
    assert body[20 : 20 + size] == data and body[20 + size : 20 + padded] == bytes(padded - size)
    rest = body[20 + padded :]
    if comment:
        assert options(rest) == [(pcapng.OPT_COMMENT, comment.encode())]
    else:
        assert rest == b""  # no options at all, not even opt_endofopt


def test_packet_original_length_is_never_below_the_captured_length() -> None:
    ((_, body),) = blocks(pcapng.packet(0, 1, b"abcd", 2))
    assert struct.unpack_from("<II", body, 12) == (4, 4)


def test_long_comment_is_cut_to_what_an_option_holds() -> None:
    ((_, body),) = blocks(pcapng.packet(0, 1, b"", 0, "é" * 40_000))
    ((code, value),) = options(body[20:])
    assert code == pcapng.OPT_COMMENT and len(value) == pcapng.MAX_OPTION


@needs_tshark
def test_tshark_reads_the_writers_blocks(tmp_path: Path) -> None:
    ts = 1_700_000_000_000_000_001
    path = tmp_path / "w.pcapng"
    path.write_bytes(
        pcapng.section_header("pwru test")
        + pcapng.interface(pcapng.LINKTYPE_ETHERNET, 64, "eth-x", "netns 11 ifindex 2")
        + pcapng.interface(pcapng.LINKTYPE_IPV4, 64, "tun-y", "netns 12 ifindex 3")
        + pcapng.packet(0, ts, ETH_FRAME, 100, "first frame")
        + pcapng.packet(1, ts + 1, IP_FRAME[:20], len(IP_FRAME), "second, truncated")
        + pcapng.packet(1, ts + 2, b"", 60)
    )
    rows = tshark_fields(
        path, "frame.interface_name", "frame.interface_description", "frame.len", "frame.cap_len",
        "frame.comment", "udp.dstport", "frame.time_epoch", "ip.dst",
    )  # fmt: skip
    assert [r[:6] for r in rows] == [
        ["eth-x", "netns 11 ifindex 2", "100", str(len(ETH_FRAME)), "first frame", "4000"],
        ["tun-y", "netns 12 ifindex 3", str(len(IP_FRAME)), "20", "second, truncated", ""],
        ["tun-y", "netns 12 ifindex 3", "60", "0", "", ""],
    ]
    assert rows[0][6] == "1700000000.000000001"  # nanosecond resolution kept
    assert rows[1][7] == "10.0.0.2"


def test_snaplen_bound_is_pwru_h_s() -> None:
    header = (object_path().parent / "pwru.h").read_text()
    m = re.search(r"#define PWRU_PCAP_SNAPLEN_MAX (\d+)", header)
    assert m and int(m.group(1)) == cfg.PCAP_SNAPLEN_MAX


# --- the pipeline output ---


class MemorySink:
    """A sink keeping its units."""

    def __init__(self) -> None:
        self.units: list[bytes] = []
        self.delivered = 0
        self.closed = False

    def write_lines(self, lines: list[str]) -> None:
        raise AssertionError("the pcap output writes bytes")

    def write(self, data: bytes) -> None:
        self.units.append(data)
        self.delivered += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def packet_record(event: dict[str, object], data: bytes, **kw: object) -> bytes:
    layout = schema().layout("packet")
    values: dict[str, object] = {
        "ts": event["ts"], "skb": event["skb"], "probe": event["probe"], "probe_kind": event["probe_kind"],
        "type": schema().type_id("packet"), "netns": 4026531840, "ifindex": 1, "ifname": b"lo",
        "orig_len": len(data), "linktype": pcapng.LINKTYPE_ETHERNET, "data": data,
    }  # fmt: skip
    values.update(kw)
    assert layout.tail is not None
    values["size"] = layout.tail.offset + len(data)
    return layout.encode(values)


def event_record(**kw: object) -> tuple[dict[str, object], bytes]:
    values = make_event(**kw)
    values["type"] = schema().type_id("event")
    return values, schema().layout("event").encode(values)


def test_a_packet_joins_its_event_and_unpaired_records_make_no_frame() -> None:
    sink = MemorySink()
    out = PcapOutput(sink, FakeNames(), 256)
    out.start()
    e1, r1 = event_record(ts=1000, probe=0x3000)
    e2, r2 = event_record(ts=2000, probe=0x1000, skb=0x1234)
    e3, r3 = event_record(ts=3000, probe=7, probe_kind=INDEX, reason=2, location=0xA000)
    p1 = packet_record(e1, ETH_FRAME)
    p3 = packet_record(e3, IP_FRAME, linktype=pcapng.LINKTYPE_IPV4, netns=99, ifindex=5, ifname=b"veth0")
    orphan = packet_record(dict(e2, ts=2001), b"zz")  # its event never came (lost, or stopped by the line limit)
    # The packet comes before its event; another CPU's records land between them; an event may come in the
    # next batch; r2's packet did not fit the ring (no frame).
    out.consume(Batch(schema(), [p1, orphan, p3, r2, r1]))
    out.consume(Batch(schema(), [r3]))
    out.close()
    assert sink.closed and out.frames == 2 and out.unframed == 1  # r2
    kinds = [b[0] for unit in sink.units for b in blocks(unit)]
    assert kinds == [pcapng.SHB_TYPE, pcapng.IDB_TYPE, pcapng.EPB_TYPE, pcapng.IDB_TYPE, pcapng.EPB_TYPE]
    assert len(sink.units) == 3  # header; each new interface goes with its first frame, as one unit
    (_, idb), (_, epb) = blocks(sink.units[2])
    assert struct.unpack_from("<HHI", idb) == (pcapng.LINKTYPE_IPV4, 0, 256)
    assert dict(options(idb[8:]))[pcapng.IF_NAME] == b"veth0"
    assert dict(options(idb[8:]))[pcapng.IF_DESCRIPTION] == b"netns 99 ifindex 5"
    comment = dict(options(epb[20 + len(IP_FRAME) + (-len(IP_FRAME)) % 4 :]))[pcapng.OPT_COMMENT].decode()
    assert comment.startswith(f"func=tp:kfree_skb skb={e3['skb']:#x} reason=SKB_DROP_REASON_NO_SOCKET")
    assert "location=__udp4_lib_rcv+0x5b1" in comment and "pid=" in comment and "dev=veth0:5" in comment


def test_one_interface_per_netns_device_and_link_type() -> None:
    sink = MemorySink()
    out = PcapOutput(sink, FakeNames(), 128)
    records = []
    keys = [(1, 2, 1), (1, 2, 1), (1, 2, 228), (3, 2, 1), (1, 4, 1), (3, 2, 1)]
    for i, (netns, ifindex, link) in enumerate(keys):
        e, r = event_record(ts=100 + i)
        records += [packet_record(e, IP_FRAME, netns=netns, ifindex=ifindex, linktype=link), r]
    out.start()
    out.consume(Batch(schema(), records))
    epbs = [struct.unpack_from("<I", body)[0] for unit in sink.units for t, body in blocks(unit) if t == 6]
    assert epbs == [0, 0, 1, 2, 3, 2]


def test_packets_waiting_for_their_event_are_bounded() -> None:
    sink = MemorySink()
    out = PcapOutput(sink, FakeNames(), 64, pending_limit=3)
    events = [event_record(ts=10 + i) for i in range(5)]
    out.consume(Batch(schema(), [packet_record(e, b"x") for e, _ in events]))
    out.consume(Batch(schema(), [r for _, r in events]))
    assert out.frames == 3  # the two oldest were forgotten


@needs_tshark
def test_tshark_reads_the_output_through_a_file_sink(tmp_path: Path) -> None:
    path = tmp_path / "out.pcapng"
    out = PcapOutput(FileSink(str(path), "output-pcap"), FakeNames(), 256)
    out.start()
    records = []
    now = time.monotonic_ns()
    for i in range(50):
        e, r = event_record(ts=now + i, probe=0x3000, pid=4242, comm=b"curl")
        records += [packet_record(e, ETH_FRAME, orig_len=1514), r]
    out.consume(Batch(schema(), records))
    out.close()
    rows = tshark_fields(path, "frame.len", "frame.cap_len", "frame.comment", "frame.time_epoch", "udp.srcport")
    assert len(rows) == 50
    assert all(r[:2] == ["1514", str(len(ETH_FRAME))] and r[4] == "8080" for r in rows)
    assert rows[0][2] == f"func=ip_rcv skb={make_event()['skb']:#x} pid=4242 comm=curl netns=4026531840 dev=lo:1"
    assert abs(float(rows[0][3]) - time.time()) < 60  # monotonic -> wall clock
    # the same bytes as a stream on standard input
    assert tshark_fields(None, "frame.len", stdin=path.read_bytes()) == [["1514"]] * 50
