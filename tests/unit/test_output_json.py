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
    assert d["stack"] == "\n__udp4_lib_rcv+0x5b1\ntcp_v4_rcv+0x10"  # a string, as pwru's
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
    assert d["tuple"] == {"saddr": "[fd00::1]", "daddr": "[fd00::2]", "proto": 58}  # pwru brackets IPv6 in JSON too
    assert _one(OutputConfig(), l3_proto=0)["tuple"] == {}  # as pwru: the key with the flag, no empty members


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
    assert _one(OutputConfig(tunnel=True))["tunnel_tuple"] == {}  # no inner packet: empty, as pwru
    d = _one(OutputConfig(tunnel=True, tuple=False), **{**VXLAN, **tunnel(l4_proto=1)})
    assert "tuple" not in d and d["tunnel_tuple"] == {"saddr": "192.168.99.1", "daddr": "192.168.99.2", "proto": 1}


#: cilium/pwru v1.0.12's JSON members (``jsonPrinter``/``jsonTuple`` in internal/pwru/output.go), each with its
#: Go type as JSON gives it, all ``omitempty``. Facts read from pwru's source, written down here.
PWRU_KEYS: dict[str, type | tuple[type, ...]] = {
    "skb": str,  # fmt.Sprintf("%#x", SkbAddr)
    "skb_shared_info": str,
    "cpu": int,
    "process": str,
    "func": str,
    "caller_func": str,
    "time": (int, str),  # any: uint64, or the absolute time's string
    "netns": int,
    "netns_name": str,
    "mark": int,
    "iface": str,
    "proto": int,
    "mtu": int,
    "len": int,
    "cb": list,  # *[5]uint32
    "tuple": dict,
    "tunnel_tuple": dict,
    "stack": str,  # any, set to getStackData's string
    "skb_metadata": str,  # any: pwru's --output-skb text; ours is --output-skb-metadata's (not checked here)
}
PWRU_TUPLE_KEYS: dict[str, type] = {"saddr": str, "daddr": str, "sport": int, "dport": int, "proto": int, "flags": str}
#: Our additions (pwru has no such keys).
OURS = {"reason": str, "location": str, "sk_buff": str}


def _everything_on() -> dict[str, object]:
    from pwru.dumps import DumpStage
    from pwru.netns_names import NetnsNames
    from pwru.records import Batch
    from tests.unit.test_dumps import SHINFO_TEXT, SKB_TEXT, dump
    from tests.unit.test_output_text import STACKS, schema

    names = NetnsNames("/nonexistent", "/nonexistent")
    names._names, names._scanned_at = {4026531840: "blue"}, float("inf")
    config = OutputConfig(
        json=True, caller=True, stack=True, tunnel=True, tcp_flags=True, timestamp="current", skb=True,
        shared_info=True, skb_cb=True, netns_names=True,
    )  # fmt: skip
    from tests.unit.test_output_text import VXLAN

    more = dict(caller=0xB000, stack_id=5, tcp_flags=0x12, probe_kind=INDEX, probe=7, reason=2, location=0xA000)
    ev = {**VXLAN, **more, **dict(mark=3, protocol=0x800, ifindex=2, ifname=b"eth0", cb=b"\x01" * 20)}
    records = [dump("sk_buff", SKB_TEXT, **ev), dump("skb_shared_info", SHINFO_TEXT, **ev)]
    records.append(schema().layout("event").encode(ev))
    batch = DumpStage().process(Batch(schema(), records, dict(STACKS)))
    (line,) = JsonFormatter(config, FakeNames(), names).format_batch(batch)
    result = json.loads(line)
    assert isinstance(result, dict)
    return result


def test_keys_and_value_types_are_pwrus() -> None:
    d = _everything_on()
    pwru_keys = set(PWRU_KEYS) - {"skb_metadata"}
    assert pwru_keys <= set(d), pwru_keys - set(d)  # every pwru key these flags ask for is there
    assert set(d) - pwru_keys <= set(OURS), set(d) - pwru_keys  # besides them only our documented additions
    for key, value in d.items():
        assert isinstance(value, PWRU_KEYS.get(key) or OURS[key]), (key, value)
    for key in ("tuple", "tunnel_tuple"):
        t = d[key]
        assert isinstance(t, dict) and set(t) <= set(PWRU_TUPLE_KEYS), t
        for k, v in t.items():
            assert isinstance(v, PWRU_TUPLE_KEYS[k]) and not isinstance(v, bool), (key, k, v)
    assert len(d["cb"]) == 5 and all(isinstance(w, int) for w in d["cb"])  # type: ignore[arg-type, union-attr]


def test_empty_members_are_left_out_as_pwru() -> None:
    d = _one(
        OutputConfig(caller=True, tunnel=True), cpu=0, netns=0, mark=0, protocol=0, mtu=0, len=0, caller=0,
        l3_proto=0, sport=0, dport=0,
    )  # fmt: skip
    assert d == {"skb": "0xff4804db4078a4e8", "process": "~sr/bin/curl:621", "func": "ip_local_out", "iface": "0",
                 "tuple": {}, "tunnel_tuple": {}}  # fmt: skip
    zero_ports = _one(OutputConfig(), sport=0, dport=0)
    assert zero_ports["tuple"] == {"saddr": "10.99.0.1", "daddr": "10.99.0.2", "proto": 6}
    first = json.loads(fmt(JsonFormatter(OutputConfig(timestamp="relative"), FakeNames()), make_event()))
    assert first["time"] == 0  # pwru's time is an interface: a 0 in it is not empty


def test_explanation_key_with_output_explain() -> None:
    d = _one(OutputConfig(explain=True), probe_kind=INDEX, probe=7, reason=6, nf_pf=10, nf_hook=1)
    expl = d["explanation"]
    assert isinstance(expl, dict) and set(expl) == {"text", "check"}
    assert "INPUT chain" in expl["text"] and "ip6tables -S INPUT" in expl["check"]
    assert "explanation" not in _one(OutputConfig(), probe_kind=INDEX, probe=7, reason=6)
    assert "explanation" not in _one(OutputConfig(explain=True))
