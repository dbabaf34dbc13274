"""The tp_btf program on skb tracepoints catches real drops, and counts every event the ring buffer refused.

Traffic: UDP datagrams to a closed port on ``lo`` inside a network namespace the test creates; each one is
dropped by the kernel with SKB_DROP_REASON_NO_SOCKET. The programs filter on that namespace (and, for the loss
test, on a socket mark), so nothing else on the machine adds events.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from pwru.bpf import build, object_path
from pwru.ebpf import asm, btf
from pwru.ebpf.collection import Collection
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.kallsyms import Kallsyms
from pwru.ebpf.link import Link, attach_raw_tracepoint
from pwru.ebpf.prog import Program
from pwru.ebpf.ringbuf import RingBufReader
from pwru.records import Record, RecordLayout, Schema

pytestmark = pytest.mark.root

PORT = 9  # nothing listens in a fresh namespace
MARK = 0x5A17
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[3]))
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[2])):
    s.sendto(b"pwru", ("127.0.0.1", int(sys.argv[1])))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pwru-tpdrop-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def send(netns: str, count: int, mark: int = 0) -> int:
    """Send ``count`` datagrams to the closed port from inside ``netns``; returns the source port."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "python3", "-c", SENDER, str(PORT), str(count), str(mark)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout.split()[0])


def collection(ring_size: int) -> Collection:
    build.build()
    spec = ObjectSpec.load(object_path())
    spec.maps["events"].max_entries = ring_size
    spec.maps["stacks"].max_entries = 64
    return Collection(spec)


def tp_positions(tp: str) -> dict[str, int]:
    """1-based positions (without the leading ``void *``) of the skb, drop reason and location (``void *``)
    in tracepoint ``tp``'s prototype, read from vmlinux BTF."""
    kb = btf.kernel_btf()
    typedef = kb.type(kb.find_one(f"btf_trace_{tp}", btf.Kind.TYPEDEF))
    assert isinstance(typedef, btf.Typedef)
    ptr = kb.resolve_type(typedef.type)
    assert isinstance(ptr, btf.Pointer)
    proto = kb.resolve_type(ptr.type)
    assert isinstance(proto, btf.FuncProto)
    pos = {"cfg_tp_skb_pos": 0, "cfg_tp_reason_pos": 0, "cfg_tp_location_pos": 0}
    for i, param in enumerate(proto.params[1:], start=1):
        t = kb.resolve_type(param.type)
        pointee = kb.resolve_type(t.type) if isinstance(t, btf.Pointer) else None
        if isinstance(pointee, btf.Struct) and pointee.name == "sk_buff" and not pos["cfg_tp_skb_pos"]:
            pos["cfg_tp_skb_pos"] = i
        elif isinstance(t, btf.Enum) and t.name == "skb_drop_reason":
            pos["cfg_tp_reason_pos"] = i
        elif isinstance(pointee, btf.Void):
            pos["cfg_tp_location_pos"] = i
    assert pos["cfg_tp_skb_pos"], tp
    return pos


def tp_program(coll: Collection, tp: str, probe_id: int, **constants: int) -> Program:
    """tp_skb loaded for tracepoint ``tp``, reporting ``probe_id`` as its address."""
    return coll.load_program(
        "tp_skb",
        attach_btf_id=btf.kernel_btf().find_one(f"btf_trace_{tp}", btf.Kind.TYPEDEF),
        constants={**tp_positions(tp), "cfg_probe_id": probe_id, **constants},
    )


def event_layout() -> tuple[Schema, RecordLayout]:
    """The record schema of the built object, and its event layout."""
    build.build()
    obj = ObjectSpec.load(object_path())
    assert obj.btf is not None
    schema = Schema(obj.btf)
    return schema, schema.layout("event")


def drain(reader: RingBufReader, decoder: RecordLayout, until: float) -> list[Record]:
    events: list[Record] = []
    while time.monotonic() < until:
        batch = reader.poll(timeout=0.1)
        events += decoder.decode_many(batch)
        if not batch and events:
            break
    return events


def no_socket_reason() -> int:
    return btf.kernel_btf().enum_values("skb_drop_reason")["SKB_DROP_REASON_NO_SOCKET"]


def test_kfree_skb_catches_udp_drop(netns: str) -> None:
    inode = os.stat(f"/run/netns/{netns}").st_ino
    lo_index = int(
        subprocess.run(["ip", "netns", "exec", netns, "cat", "/sys/class/net/lo/ifindex"],
                       check=True, capture_output=True, text=True).stdout
    )  # fmt: skip
    out = {"cfg_netns": inode, "cfg_output_meta": 1, "cfg_output_tuple": 1, "cfg_output_caller": 1,
           "cfg_output_stack": 1}  # fmt: skip
    schema, decoder = event_layout()
    links: list[Link] = []
    with collection(1 << 16) as coll, RingBufReader(coll.maps["events"]) as reader:
        try:
            links.append(attach_raw_tracepoint(tp_program(coll, "kfree_skb", 1, **out), None))
            links.append(attach_raw_tracepoint(tp_program(coll, "netif_receive_skb", 2, **out), None))
            sport = send(netns, 1)
            events = drain(reader, decoder, time.monotonic() + 5)
        finally:
            for link in links:
                link.close()
        stacks = coll.maps["stacks"]
        assert all(e.netns == inode for e in events), "the netns filter let foreign skbs through"
        ours = [e for e in events if e.dport == PORT and e.sport == sport]
        drops = [e for e in ours if e.probe == 1]
        received = [e for e in ours if e.probe == 2]
        assert len(drops) == 1, events
        assert len(received) == 1, events
        drop = drops[0]
        assert drop.probe_kind == schema.probe_kind("index")
        assert drop.type == schema.type_id("event") and drop.size == decoder.size
        assert drop.reason == no_socket_reason()
        assert drop.skb == received[0].skb, "the drop is not the skb that was received"
        assert drop.skb >= 0xFFFF800000000000
        assert received[0].reason == -1 and received[0].location == 0
        assert (drop.ifindex, drop.ifname) == (lo_index, b"lo")
        assert drop.l3_proto == 0x0800 and drop.l4_proto == 17
        assert drop.saddr[:4] == drop.daddr[:4] == bytes([127, 0, 0, 1])
        assert drop.protocol == 0x0800
        assert (received[0].len, drop.len) == (20 + 8 + 4, 8 + 4)  # IP header pulled by then
        assert drop.pid > 0 and drop.comm
        ksyms = Kallsyms.load()
        location, caller = ksyms.lookup(drop.location), ksyms.lookup(drop.caller)
        assert location is not None and caller is not None
        assert drop.stack_id >= 0
        frames = stacks.lookup(drop.stack_id)
        assert isinstance(frames, bytes)
        names = [ksyms.lookup(int.from_bytes(frames[i : i + 8], "little")) for i in range(0, 32, 8)]
        print(f"\nlocation {location}, caller {caller}, stack {', '.join(map(str, names))}")
        # the stack map holds [program, bpf_trace_run<N>, function firing the tracepoint, ...]; the
        # caller is that function, at the same return address
        assert names[1] is not None and names[1].name.startswith("bpf_trace_run")
        assert drop.caller == int.from_bytes(frames[16:24], "little")
        assert "udp" in location.name  # __udp4_lib_rcv drops datagrams for closed ports


def test_stalled_reader_counts_every_lost_event(netns: str) -> None:
    """A one-page ring buffer, many drops, nothing read while they happen: delivered + lost == sent."""
    sent = 300
    inode = os.stat(f"/run/netns/{netns}").st_ino
    _, decoder = event_layout()
    with collection(os.sysconf("SC_PAGE_SIZE")) as coll:
        prog = tp_program(coll, "kfree_skb", 1, cfg_netns=inode, cfg_mark=MARK, cfg_mark_mask=0xFFFFFFFF,
                          cfg_output_meta=1)  # fmt: skip
        with attach_raw_tracepoint(prog, None):
            send(netns, sent, MARK)
        with RingBufReader(coll.maps["events"]) as reader:
            records = reader.read_batch()
        events = decoder.decode_many(records)
        per_cpu = coll.maps["lost"].lookup(0)
        assert isinstance(per_cpu, list)
        lost = sum(int.from_bytes(v, "little") for v in per_cpu)
        fit = os.sysconf("SC_PAGE_SIZE") // (8 + (decoder.size + 7) // 8 * 8)
        print(f"\ndelivered {len(events)}, lost {lost}, sent {sent}, ring holds {fit}")
        assert all(e.mark == MARK and e.reason == no_socket_reason() for e in events)
        assert len(events) == fit
        assert len(events) + lost == sent


@pytest.mark.parametrize(("verdict", "expected"), [(0, 0), (0x40000, 5), (1 << 32, 5)])
def test_spliced_packet_filter_decides(netns: str, verdict: int, expected: int) -> None:
    """The pcap stubs replaced by `r0 = verdict; exit`: a zero rejects, any non-zero value (a cBPF snap length
    like 0x40000, or one with only high bits set) accepts -- the call sites test all 64 bits."""
    inode = os.stat(f"/run/netns/{netns}").st_ino
    build.build()
    spec = ObjectSpec.load(object_path())
    spec.maps["events"].max_entries = 1 << 16
    spec.maps["stacks"].max_entries = 64
    body = [asm.ld_imm64(asm.Reg.R0, verdict), asm.exit_()]
    spec.replace_function("filter_pcap_l2", body)
    spec.replace_function("filter_pcap_l3", body)
    _, decoder = event_layout()
    with Collection(spec) as coll, RingBufReader(coll.maps["events"]) as reader:
        prog = tp_program(coll, "kfree_skb", 1, cfg_netns=inode, cfg_has_pcap=1, cfg_mark=MARK,
                          cfg_mark_mask=0xFFFFFFFF)  # fmt: skip
        with attach_raw_tracepoint(prog, None):
            send(netns, 5, MARK)
        events = decoder.decode_many(reader.read_batch())
    assert len(events) == expected
