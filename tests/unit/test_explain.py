"""Drop reasons explained (pwru.explain): the table covers the common reasons, refinements by location/hook."""

from __future__ import annotations

import pytest

from pwru import explain
from pwru.explain import Explanation

#: The reasons issue 12 names (TCP_MD5* for its three members), and what the tests produce.
COMMON = (
    "NOT_SPECIFIED", "NO_SOCKET", "PKT_TOO_SMALL", "TCP_CSUM", "SOCKET_FILTER", "UDP_CSUM", "NETFILTER_DROP",
    "OTHERHOST", "IP_CSUM", "IP_INHDR", "IP_RPFILTER", "UNICAST_IN_L2_MULTICAST", "XFRM_POLICY", "IP_NOPROTO",
    "SOCKET_RCVBUFF", "PROTO_MEM", "TCP_MD5NOTFOUND", "TCP_MD5UNEXPECTED", "TCP_MD5FAILURE", "TCP_OLD_DATA",
    "TCP_ZEROWINDOW", "TCP_OVERWINDOW", "TCP_OFOMERGE", "IP_OUTNOROUTES", "BPF_CGROUP_EGRESS", "IPV6DISABLED",
    "NEIGH_CREATEFAIL", "NEIGH_FAILED", "NEIGH_QUEUEFULL", "NEIGH_DEAD", "TC_EGRESS", "TC_INGRESS", "QDISC_DROP",
    "CPU_BACKLOG", "XDP", "DEV_READY", "FULL_RING", "NOMEM", "DUP_FRAG", "FRAG_REASM_TIMEOUT", "IP_INADDRERRORS",
    "IP_INNOROUTES", "PKT_TOO_BIG", "TCP_RESET", "TCP_INVALID_SEQUENCE",
)


@pytest.mark.parametrize("reason", COMMON)
def test_every_common_reason_is_explained(reason: str) -> None:
    e = explain.explain(reason)
    assert isinstance(e, Explanation)
    assert e.text and e.check and "\n" not in e.text + e.check
    assert explain.explain("SKB_DROP_REASON_" + reason) == e  # the prefixed form too


def test_the_table_is_large_and_one_line_each() -> None:
    assert len(explain.REASONS) >= 30
    for name, (text, check) in {**explain.REASONS, **{k[0]: v for k, v in explain.REFINED.items()}}.items():
        assert text and check and "\n" not in text + check, name
        assert not name.startswith(explain.PREFIX)
    assert {reason for reason, _ in explain.REFINED} <= set(explain.REASONS)


def test_unknown_reasons_have_none() -> None:
    assert explain.explain("NO_SUCH_REASON") is None
    assert explain.explain("SKB_DROP_REASON_NO_SUCH_REASON", "ip_rcv+0x1", "INPUT") is None
    assert explain.explain("") is None


def test_no_socket_by_protocol_of_the_location() -> None:
    udp = explain.explain("NO_SOCKET", "__udp4_lib_rcv+0x5b1")
    tcp = explain.explain("NO_SOCKET", "tcp_v6_rcv+0x2f [ipv6]")
    plain = explain.explain("NO_SOCKET")
    assert udp is not None and tcp is not None and plain is not None
    assert "UDP" in udp.text and "ss -lnup" in udp.check
    assert "TCP" in tcp.text and "ss -lntp" in tcp.check
    assert "UDP" not in plain.text and "TCP" not in plain.text
    assert explain.explain("NO_SOCKET", "udpv6_rcv+0x10") == udp
    assert explain.explain("NO_SOCKET", "nft_do_chain+0x3e8") == plain


@pytest.mark.parametrize("hook", ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"])
def test_netfilter_drop_by_hook(hook: str) -> None:
    e = explain.explain("NETFILTER_DROP", "nf_hook_slow+0xa1", hook)
    assert e is not None and f"{hook} chain" in e.text and hook in e.check
    assert explain.explain("SKB_DROP_REASON_NETFILTER_DROP", None, f"ipv6/{hook}") == e


def test_input_names_the_commands_to_list_rules() -> None:
    e = explain.explain("NETFILTER_DROP", nf_hook="INPUT")
    assert e is not None and "iptables -S INPUT" in e.check and "nft list ruleset" in e.check
    unknown_hook = explain.explain("NETFILTER_DROP", nf_hook="17")
    assert unknown_hook == explain.explain("NETFILTER_DROP")
