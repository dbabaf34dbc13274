"""JSON lines: pwru's keys, every line parses, hostile strings stay inside their values."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pwru.config import Config, OutputConfig
from pwru.output.json import JsonFormatter
from tests.unit.test_output_text import INDEX, FakeNames, fmt, make_event, v6


def _one(config: Config, **kw: object) -> dict[str, object]:
    line = fmt(JsonFormatter(config, FakeNames()), make_event(**kw))
    assert "\n" not in line
    result = json.loads(line)
    assert isinstance(result, dict)
    return result


def test_default_keys_and_values() -> None:
    d = _one(OutputConfig(), tcp_flags=0x12, ifindex=2, ifname=b"eth0", protocol=0x0800, mark=0x10)
    assert d == {
        "skb": "0xff4804db4078a4e8",
        "cpu": 1,
        "process": "~sr/bin/curl:621",
        "func": "ip_local_out",
        "netns": 4026531840,
        "mark": 16,
        "iface": "eth0:2",
        "proto": 0x0800,
        "mtu": 1500,
        "len": 60,
        "tuple": {"saddr": "10.99.0.1", "daddr": "10.99.0.2", "sport": 55378, "dport": 8080, "proto": 6},
    }


def test_optional_keys() -> None:
    d = _one(
        OutputConfig(tcp_flags=True, caller=True, stack=True, timestamp="current"),
        tcp_flags=0x12,
        caller=0xB000,
        stack_id=5,
    )
    assert d["tuple"]["flags"] == "SYN|ACK"  # type: ignore[index]
    assert d["caller_func"] == "ip_finish_output2+0x1c"
    assert d["stack"] == ["__udp4_lib_rcv+0x5b1", "tcp_v4_rcv+0x10"]
    assert d["time"] == 1_000_000_000


def test_without_meta_and_tuple() -> None:
    d = _one(OutputConfig(meta=False, tuple=False))
    assert set(d) == {"skb", "cpu", "process", "func"}


def test_drop_reason_and_location() -> None:
    d = _one(OutputConfig(), probe_kind=INDEX, probe=7, reason=2, location=0xA000)
    assert d["func"] == "tp:kfree_skb(SKB_DROP_REASON_NO_SOCKET)"
    assert d["reason"] == "SKB_DROP_REASON_NO_SOCKET"
    assert d["location"] == "__udp4_lib_rcv+0x5b1"


def test_netfilter_drop_hook_keys() -> None:
    d = _one(OutputConfig(), probe_kind=INDEX, probe=7, reason=2, location=0xA000, nf_pf=2, nf_hook=3)
    assert (d["nf_family"], d["nf_hook"]) == ("ipv4", "OUTPUT")
    assert d["func"] == "tp:kfree_skb(SKB_DROP_REASON_NO_SOCKET)"  # pwru's key keeps its meaning
    assert "nf_hook" not in _one(OutputConfig(), probe_kind=INDEX, probe=7, reason=2, nf_hook=-1)


def test_ipv6_icmp_and_non_ip() -> None:
    d = _one(OutputConfig(), l3_proto=0x86DD, l4_proto=58, saddr=v6("fd00::1"), daddr=v6("fd00::2"))
    assert d["tuple"] == {"saddr": "fd00::1", "daddr": "fd00::2", "proto": 58}
    assert "tuple" not in _one(OutputConfig(), l3_proto=0)


def test_timestamps() -> None:
    f = JsonFormatter(OutputConfig(timestamp="relative"), FakeNames())
    a = json.loads(fmt(f, make_event(ts=100)))
    b = json.loads(fmt(f, make_event(ts=350)))
    assert (a["time"], b["time"]) == (0, 250)
    c = json.loads(fmt(JsonFormatter(OutputConfig(timestamp="absolute"), FakeNames()), make_event()))
    assert isinstance(c["time"], str) and len(c["time"]) == 23


def test_header_is_empty() -> None:
    assert JsonFormatter(OutputConfig(), FakeNames()).header() == ""


@given(st.binary(max_size=16), st.binary(max_size=16))
def test_every_line_parses_whatever_the_kernel_sent(comm: bytes, ifname: bytes) -> None:
    class HostileNames(FakeNames):
        def process(self, pid: int, comm: bytes) -> str:
            from pwru.output.names import sanitize

            return sanitize(comm)

    f = JsonFormatter(OutputConfig(stack=True, caller=True), HostileNames())
    line = fmt(f, make_event(comm=comm, ifname=ifname, ifindex=3, stack_id=5))
    assert "\n" not in line and "\x1b" not in line
    d = json.loads(line)
    assert d["iface"].endswith(":3") or d["iface"] == "3"


def test_tunnel_tuple() -> None:
    from tests.unit.test_output_text import VXLAN, tunnel

    d = _one(OutputConfig(tunnel=True, tcp_flags=True), **VXLAN)
    assert d["tuple"] == {"saddr": "10.99.0.1", "daddr": "10.99.0.2", "sport": 41000, "dport": 4789, "proto": 17}
    assert d["tunnel_tuple"] == {
        "saddr": "192.168.99.1", "daddr": "192.168.99.2", "sport": 5000, "dport": 7001, "proto": 6, "flags": "SYN",
    }  # fmt: skip
    assert list(d)[-2:] == ["tuple", "tunnel_tuple"]
    assert "tunnel_tuple" not in _one(OutputConfig(), **VXLAN)
    assert "tunnel_tuple" not in _one(OutputConfig(tunnel=True))  # no inner packet
    d = _one(OutputConfig(tunnel=True, tuple=False), **{**VXLAN, **tunnel(l4_proto=1)})
    assert "tuple" not in d and d["tunnel_tuple"] == {"saddr": "192.168.99.1", "daddr": "192.168.99.2", "proto": 1}


def test_explanation_key_with_output_explain() -> None:
    d = _one(OutputConfig(explain=True), probe_kind=INDEX, probe=7, reason=6, nf_pf=10, nf_hook=1)
    expl = d["explanation"]
    assert isinstance(expl, dict) and set(expl) == {"text", "check"}
    assert "INPUT chain" in expl["text"] and "ip6tables -S INPUT" in expl["check"]
    assert "explanation" not in _one(OutputConfig(), probe_kind=INDEX, probe=7, reason=6)
    assert "explanation" not in _one(OutputConfig(explain=True))
