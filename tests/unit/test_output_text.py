"""Text columns: pwru's header and widths, tuples (v4, v6, ICMP, TCP flags), drop reasons, stacks, timestamps.

``FakeNames``, ``make_event`` and ``fmt`` are also used by the other output tests.
"""

from __future__ import annotations

import copy
import re
import socket
import time
from datetime import datetime
from typing import Any

from pwru.bpf import build, object_path
from pwru.config import Config, OutputConfig
from pwru.ebpf.elf import ObjectSpec
from pwru.output import Formatter, TextFormatter, make_formatter
from pwru.output.json import JsonFormatter
from pwru.output.text import CALLER_WIDTH, FUNC_WIDTH, tuple_width
from pwru.records import Batch, Schema

SKB = 0xFF4804DB4078A4E8


INDEX = 1  # PWRU_PROBE_INDEX: the record's probe is an index into the probe table
#: Stack frames the stack stage would have read for stack id 5.
STACKS = {5: (0xA000, 0, 0xC000)}
_schema: Schema | None = None


def schema() -> Schema:
    """The real object's record schema (built once)."""
    global _schema
    if _schema is None:
        build.build()
        obj = ObjectSpec.load(object_path())
        assert obj.btf is not None
        _schema = Schema(obj.btf)
    return _schema


def two_type_schema() -> Schema:
    """The real schema as if the object also wrote records of type 2 ("other"): outputs must skip them."""
    s = copy.copy(schema())
    s.types = {**s.types, "other": 2}
    s.only_type = None
    return s


def fmt(f: Formatter, values: dict[str, Any]) -> str:
    """One event record with ``values`` through ``f`` (the formatters' only path), as a string."""
    record = schema().layout("event").encode(values)
    (line,) = f.format_batch(Batch(schema(), [record], dict(STACKS)))
    return line


class FakeNames:
    """Names with fixed tables, as the run loop would resolve them."""

    funcs = {0x1000: "ip_local_out", 0x2000: "kfree_skb_reason", 0x3000: "ip_rcv"}
    probes = {7: "tp:kfree_skb"}
    reasons = {2: "SKB_DROP_REASON_NO_SOCKET", 6: "SKB_DROP_REASON_NETFILTER_DROP"}
    symbols = {0xA000: "__udp4_lib_rcv+0x5b1", 0xB000: "ip_finish_output2+0x1c", 0xC000: "tcp_v4_rcv+0x10"}

    def probe_name(self, probe_kind: int, probe: int) -> str:
        table = self.probes if probe_kind == INDEX else self.funcs
        return table.get(probe, f"{probe:#x}")

    def reason_name(self, reason: int) -> str:
        return self.reasons.get(reason, "")

    def symbol(self, addr: int) -> str:
        return self.symbols.get(addr, f"{addr:#x}")

    def process(self, pid: int, comm: bytes) -> str:
        return {621: "~sr/bin/curl:621"}.get(pid, f"{comm.decode()}:{pid}")


def v4(a: str) -> bytes:
    return socket.inet_aton(a) + bytes(12)


def v6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def make_event(**kw: Any) -> dict[str, Any]:
    """The values of an event record (ip_local_out seen for a curl TCP packet), ``kw`` overriding them."""
    d: dict[str, Any] = dict(
        type=1,
        ts=1_000_000_000,
        probe=0x1000,
        skb=SKB,
        caller=0,
        location=0,
        stack_id=-1,
        reason=-1,
        pid=621,
        cpu=1,
        probe_kind=0,
        comm=b"curl",
        netns=4026531840,
        mark=0,
        ifindex=0,
        len=60,
        mtu=1500,
        protocol=0,
        ifname=b"",
        saddr=v4("10.99.0.1"),
        daddr=v4("10.99.0.2"),
        sport=55378,
        dport=8080,
        l3_proto=0x0800,
        l4_proto=6,
        tcp_flags=0,
    )
    d.update(kw)
    return d


#: pwru's example lines up to the TUPLE column, which pwru pads to the widest tuple seen so far and we to a fixed
#: width (see test_columns_never_move).
PWRU_EXAMPLE = """\
SKB                CPU PROCESS          NETNS      MARK/x        IFACE       PROTO  MTU   LEN   TUPLE FUNC
0xff4804db4078a4e8 1   ~sr/bin/curl:621 4026531840 0               0         0x0000 1500  60    \
10.99.0.1:55378->10.99.0.2:8080(tcp) ip_local_out
0xff4804db4078a4e8 1   ~sr/bin/curl:621 4026531840 0               0         0x0800 1500  60    \
10.99.0.1:55378->10.99.0.2:8080(tcp) kfree_skb_reason(SKB_DROP_REASON_NETFILTER_DROP)"""


def test_matches_pwru_example_but_for_the_tuple_padding() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    lines = [
        f.header(),
        fmt(f, make_event()),
        fmt(f, make_event(probe=0x2000, reason=6, protocol=0x0800)),
    ]
    expected = []
    for line in PWRU_EXAMPLE.splitlines():
        m = re.fullmatch(r"(.*) (\S+) (\S+)", line)
        assert m is not None
        head, tup, func = m.groups()
        expected.append(f"{head} {tup.ljust(tuple_width(False))} {func}")
    assert lines == expected


def test_tuple_width_fits_every_ipv4_tuple() -> None:
    assert tuple_width(False) == len("255.255.255.255:65535->255.255.255.255:65535(udplite)")
    assert tuple_width(True) == len("255.255.255.255:65535->255.255.255.255:65535(tcp:FIN|PSH|ACK)")


def test_columns_never_move() -> None:
    """pwru widens TUPLE to the widest tuple seen so far, so FUNC moved right mid-stream and no longer sat under
    its header; here FUNC stays in the header's column, an overlong (IPv6) tuple widens its own line only, and
    every line has the header's number of space-separated fields."""
    f = TextFormatter(OutputConfig(), FakeNames())
    header = f.header()
    col = header.index(" FUNC") + 1
    v6_long = make_event(
        l3_proto=0x86DD, saddr=v6("fd00:1111:2222:3333:4444:5555:6666:7777"),
        daddr=v6("fd00:1111:2222:3333:4444:5555:6666:8888"), sport=65535, dport=65535,
    )  # fmt: skip
    widest_v4 = make_event(saddr=v4("255.255.255.255"), daddr=v4("255.255.255.255"), sport=65535, dport=65535,
                           l4_proto=136)  # fmt: skip
    events = [make_event(l4_proto=1), make_event(), widest_v4, v6_long, make_event(l4_proto=1)]
    lines = [fmt(f, e) for e in events]
    for e, line in zip(events, lines, strict=True):
        assert len(line.split()) == len(header.split()), line
        if e is v6_long:
            tup = "[fd00:1111:2222:3333:4444:5555:6666:7777]:65535->[fd00:1111:2222:3333:4444:5555:6666:8888]:65535"
            tup += "(tcp)"
            assert line.endswith(f" {tup} ip_local_out") and line.index("ip_local_out") > col
        else:
            assert line.index("ip_local_out") == col, line
    # the same with TCP flags
    f = TextFormatter(OutputConfig(tcp_flags=True), FakeNames())
    col = f.header().index(" FUNC") + 1
    for e in (make_event(tcp_flags=0x12), make_event(saddr=v4("255.255.255.255"), daddr=v4("255.255.255.255"),
                                                     sport=65535, dport=65535, tcp_flags=0x19)):
        assert fmt(f, e).index("ip_local_out") == col


def test_iface_mark_and_hex() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    line = fmt(f, make_event(ifindex=3, ifname=b"eth0", mark=0xA00))
    assert " a00      " in line
    assert "     eth0:3     " in line  # centered in 16 columns
    long = fmt(f, make_event(ifindex=12345, ifname=b"verylongname123"))
    assert " ~ngname123:12345 " in long  # the last 16 characters, the first replaced by ~


def test_ifindex_without_name() -> None:
    line = fmt(TextFormatter(OutputConfig(), FakeNames()), make_event(ifindex=7, ifname=b""))
    assert "       7        " in line


def test_ipv6_tuple() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    addrs = {"saddr": v6("fd00::1"), "daddr": v6("fd00::2")}
    e = make_event(l3_proto=0x86DD, l4_proto=17, sport=4242, dport=80, **addrs)
    assert "[fd00::1]:4242->[fd00::2]:80(udp)" in fmt(f, e)


def test_icmp_has_no_ports() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    assert " 10.99.0.1->10.99.0.2(icmp) " in fmt(f, make_event(l4_proto=1, sport=0, dport=0))
    e6 = make_event(l3_proto=0x86DD, l4_proto=58, saddr=v6("::1"), daddr=v6("::1"))
    assert "[::1]->[::1](icmp6)" in fmt(f, e6)


def test_other_l4_and_non_ip() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    assert "10.99.0.1->10.99.0.2(47)" in fmt(f, make_event(l4_proto=47))
    line = fmt(f, make_event(l3_proto=0x0806, l4_proto=0))
    assert re.search(r" 60    -\s+ip_local_out$", line)


def test_tcp_flags_pwru_style() -> None:
    e = make_event(tcp_flags=0x12)
    assert "(tcp:SYN|ACK)" in fmt(TextFormatter(OutputConfig(tcp_flags=True), FakeNames()), e)
    assert "(tcp) " in fmt(TextFormatter(OutputConfig(), FakeNames()), e)
    every = fmt(TextFormatter(OutputConfig(tcp_flags=True), FakeNames()), make_event(tcp_flags=0xFF))
    assert "(tcp:FIN|SYN|RST|PSH|ACK|URG|ECE|CWR)" in every
    # no flags set: no colon
    assert "(tcp) " in fmt(TextFormatter(OutputConfig(tcp_flags=True), FakeNames()), make_event())


def test_tracepoint_drop_with_location() -> None:
    e = make_event(probe_kind=INDEX, probe=7, reason=2, location=0xA000)
    line = fmt(TextFormatter(OutputConfig(), FakeNames()), e)
    assert line.endswith(" tp:kfree_skb(SKB_DROP_REASON_NO_SOCKET) at __udp4_lib_rcv+0x5b1")


def test_netfilter_drop_names_its_hook_after_the_location() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    e = make_event(probe_kind=INDEX, probe=7, reason=2, location=0xA000, nf_pf=2, nf_hook=1)
    assert fmt(f, e).endswith(" at __udp4_lib_rcv+0x5b1 nf=ipv4/INPUT")
    again = fmt(f, make_event(probe_kind=INDEX, probe=7, reason=2, location=0xA000, nf_pf=10, nf_hook=3))
    assert again.endswith(" nf=ipv6/OUTPUT")  # the hook is part of the FUNC piece's cache key
    assert " nf=" not in fmt(f, make_event(probe_kind=INDEX, probe=7, reason=2, location=0xA000, nf_hook=-1))


def test_unknown_reason_shows_number() -> None:
    line = fmt(TextFormatter(OutputConfig(), FakeNames()), make_event(probe=0x2000, reason=999))
    assert line.endswith(" kfree_skb_reason(999)")


def test_no_meta_no_tuple() -> None:
    f = TextFormatter(OutputConfig(meta=False, tuple=False), FakeNames())
    assert f.header() == "SKB                CPU PROCESS          FUNC"
    assert fmt(f, make_event()) == "0xff4804db4078a4e8 1   ~sr/bin/curl:621 ip_local_out"


def test_caller_column() -> None:
    f = TextFormatter(OutputConfig(caller=True, meta=False, tuple=False), FakeNames())
    assert f.header().endswith(" " + "FUNC".ljust(FUNC_WIDTH) + " CALLER")
    col = f.header().index(" CALLER") + 1
    drop = fmt(f, make_event(probe=0x2000, reason=6, caller=0xB000))
    line = fmt(f, make_event(caller=0xB000))
    assert line.endswith(" " + "ip_local_out".ljust(FUNC_WIDTH) + " ip_finish_output2+0x1c")
    assert drop.index("ip_finish_output2") == line.index("ip_finish_output2") == col
    assert fmt(f, make_event()).endswith(" -")  # no caller


def test_stack_lines() -> None:
    f = TextFormatter(OutputConfig(stack=True), FakeNames())
    out = fmt(f, make_event(stack_id=5)).split("\n")
    assert out[1:] == ["__udp4_lib_rcv+0x5b1", "tcp_v4_rcv+0x10"]
    assert len(fmt(f, make_event(stack_id=-1)).split("\n")) == 1
    assert len(fmt(TextFormatter(OutputConfig(), FakeNames()), make_event(stack_id=5)).split("\n")) == 1


def test_timestamp_current_and_relative() -> None:
    f = TextFormatter(OutputConfig(timestamp="current"), FakeNames())
    assert f.header().startswith("SKB                CPU PROCESS          TIMESTAMP        NETNS")
    assert " 1000000000       4026531840" in fmt(f, make_event())
    f = TextFormatter(OutputConfig(timestamp="relative", meta=False, tuple=False), FakeNames())
    first = fmt(f, make_event(ts=5_000))
    other = fmt(f, make_event(ts=6_000, skb=0x1234))
    second = fmt(f, make_event(ts=12_500))
    assert first.split()[3] == "0" and other.split()[3] == "0"
    assert second.split()[3] == "7500"  # since this skb was last seen


def test_timestamp_absolute() -> None:
    f = TextFormatter(OutputConfig(timestamp="absolute"), FakeNames())
    assert f.header().startswith("TIME                    SKB")
    now_mono = time.monotonic_ns()
    line = fmt(f, make_event(ts=now_mono))
    stamp = line[:23]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", stamp)
    t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f")
    assert abs(t.timestamp() - time.time()) < 5
    assert line[24:].startswith("0xff4804db4078a4e8 1   ~sr/bin/curl:621 " + str(now_mono))


def test_make_formatter() -> None:
    assert isinstance(make_formatter(Config(), FakeNames()), TextFormatter)
    assert isinstance(make_formatter(Config(output=OutputConfig(json=True)), FakeNames()), JsonFormatter)


def test_other_record_types_are_skipped() -> None:
    f = TextFormatter(OutputConfig(), FakeNames())
    layout = schema().layout("event")
    other = layout.encode({**make_event(), "type": 2})
    batch = Batch(two_type_schema(), [other, layout.encode(make_event()), other])
    assert f.format_batch(batch) == [fmt(f, make_event())]


def tunnel(**kw: Any) -> dict[str, Any]:
    """An event's tunnel tuple fields (``struct event``'s second ``struct skb_tuple``, flattened with a prefix)."""
    return {f"tunnel_{k}": v for k, v in kw.items()}


#: A VXLAN packet seen after encapsulation: outer UDP to 4789, inner TCP.
VXLAN = make_event(
    l4_proto=17, sport=41000, dport=4789,
    **tunnel(saddr=v4("192.168.99.1"), daddr=v4("192.168.99.2"), sport=5000, dport=7001, l3_proto=0x0800,
             l4_proto=6, tcp_flags=0x02),
)  # fmt: skip


def test_tunnel_column_ends_the_line_as_in_pwru() -> None:
    f = TextFormatter(OutputConfig(tunnel=True), FakeNames())
    assert f.header().endswith(" " + "FUNC".ljust(FUNC_WIDTH) + " TUNNEL")
    line = fmt(f, VXLAN)
    outer = "10.99.0.1:41000->10.99.0.2:4789(udp)".ljust(tuple_width(False))
    assert line.endswith(f" {outer} {'ip_local_out'.ljust(FUNC_WIDTH)} 192.168.99.1:5000->192.168.99.2:7001(tcp)")
    assert line.index("192.168.99.1") == f.header().index(" TUNNEL") + 1
    tcp_flags = TextFormatter(OutputConfig(tunnel=True, tcp_flags=True), FakeNames())
    assert fmt(tcp_flags, VXLAN).endswith("->192.168.99.2:7001(tcp:SYN)")
    assert fmt(f, make_event()).endswith(" " + "ip_local_out".ljust(FUNC_WIDTH) + " -")  # no inner packet
    assert " TUNNEL" not in TextFormatter(OutputConfig(), FakeNames()).header()
    assert "192.168.99" not in fmt(TextFormatter(OutputConfig(), FakeNames()), VXLAN)


def test_tunnel_after_caller_and_ipv6_inner() -> None:
    f = TextFormatter(OutputConfig(tunnel=True, caller=True, meta=False), FakeNames())
    assert f.header().endswith(" " + "FUNC".ljust(FUNC_WIDTH) + " " + "CALLER".ljust(CALLER_WIDTH) + " TUNNEL")
    e = {**VXLAN, "caller": 0xB000, **tunnel(saddr=v6("fd77::1"), daddr=v6("fd77::2"), l3_proto=0x86DD, l4_proto=58)}
    func, caller = "ip_local_out".ljust(FUNC_WIDTH), "ip_finish_output2+0x1c".ljust(CALLER_WIDTH)
    assert fmt(f, e).endswith(f" {func} {caller} [fd77::1]->[fd77::2](icmp6)")


def test_explain_line_after_each_drop() -> None:
    f = TextFormatter(OutputConfig(explain=True), FakeNames())
    udp = fmt(f, make_event(probe_kind=INDEX, probe=7, reason=2, location=0xA000)).split("\n")
    assert len(udp) == 2 and udp[0].endswith(" at __udp4_lib_rcv+0x5b1")
    assert udp[1].startswith("  explain: no socket wanted it: nothing listens on that UDP port")
    assert "; check: list the UDP listeners" in udp[1]
    tcp = fmt(f, make_event(probe_kind=INDEX, probe=7, reason=2, location=0xC000)).split("\n")
    assert "TCP port" in tcp[1]  # the explanation follows the location: part of the cache key
    nf = fmt(f, make_event(probe_kind=INDEX, probe=7, reason=6, location=0xA000, nf_pf=2, nf_hook=3)).split("\n")
    assert "OUTPUT chain" in nf[1] and "iptables -S OUTPUT" in nf[1]
    assert "\n" not in fmt(f, make_event())  # not a drop
    assert "\n" not in fmt(f, make_event(probe=0x2000, reason=999))  # a reason the table does not know
    off = TextFormatter(OutputConfig(), FakeNames())
    assert "\n" not in fmt(off, make_event(probe_kind=INDEX, probe=7, reason=2, location=0xA000))
