"""A hypothesis grammar of pcap-filter(7) expressions: the primitives libpcap accepts on Ethernet and raw IP
(hosts, nets, ports, port ranges, protocols and their qualifiers, link-level and VLAN/MPLS/PPPoE/Geneve
encapsulations, TCP flags, ICMP types, lengths, ``proto[expr:size]`` accessors with arithmetic and
comparisons) joined with ``and``/``or``/``not`` (and their ``&&``/``||``/``!`` spellings) and parentheses.

Left out on purpose: what has no offline meaning (``inbound``, ``outbound``, ``ifindex``: Linux ancillary
loads, tested on real skbs), what needs a name service or a netmask (``gateway``, host names, ``ip
broadcast``), ``protochain`` (a loop pwru refuses), and constant accessor offsets near 2**32 (the kernel reads
``ld [0xfffff000 + n]`` as an ancillary load, libpcap offline as out of bounds).
"""

from __future__ import annotations

from hypothesis import strategies as st

V4 = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "1.2.3.4", "8.8.8.8", "127.0.0.1", "224.0.0.1", "255.255.255.255"]
V6 = ["::1", "fe80::1", "2001:db8::1", "2001:db8::2", "ff02::1"]
NETS4 = ["10.0.0.0/8", "10.0.0.0/24", "192.168.0.0/16", "1.2.3.4/32", "0.0.0.0/0", "224.0.0.0/4", "10.0.0.0/31"]
NETS6 = ["2001:db8::/32", "fe80::/10", "::/0", "ff00::/8", "2001:db8::1/128"]
MACS = ["00:11:22:33:44:55", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "66:77:88:99:aa:bb"]
PORTS = ["22", "53", "80", "443", "1024", "6000", "8080", "65535", "0", "http", "domain", "ssh"]
DIRS = ["", "src ", "dst ", "src or dst ", "src and dst "]
PROTOS = ["ip", "ip6", "arp", "rarp", "tcp", "udp", "icmp", "icmp6", "sctp", "igmp", "pim", "vrrp", "ah", "esp"]
PROTOS += ["atalk", "aarp", "decnet", "iso", "stp", "ipx", "netbeui", "lat", "sca", "moprc", "mopdl", "carp"]
# Protocol names are keywords too: after "proto" they need a backslash.
ETHER_PROTOS = ["ip", "ip6", "arp", "rarp", "atalk", "aarp", "decnet", "sca", "lat", "mopdl", "moprc", "iso"]
ETHER_PROTOS = [f"\\{p}" for p in [*ETHER_PROTOS, "stp", "ipx", "netbeui"]]
ETHER_PROTOS += ["0x0800", "0x86dd", "0x8100", "2048", "0x1234", "0x88cc", "0x0806"]
IP_PROTOS = [f"\\{p}" for p in ["tcp", "udp", "icmp", "igmp", "pim", "vrrp", "sctp"]] + ["1", "6", "17", "47", "132"]
IP6_PROTOS = ["\\tcp", "\\udp", "\\sctp", "58", "6", "17", "44", "0"]
ACCESSORS = ["ether", "ip", "ip6", "tcp", "udp", "icmp", "icmp6", "arp", "rarp", "sctp", "igmp", "vrrp"]
TCP_FLAGS = ["tcp-fin", "tcp-syn", "tcp-rst", "tcp-push", "tcp-ack", "tcp-urg", "tcp-ece", "tcp-cwr"]
ICMP_TYPES = ["icmp-echoreply", "icmp-unreach", "icmp-sourcequench", "icmp-redirect", "icmp-echo"]
ICMP_TYPES += ["icmp-routeradvert", "icmp-routersolicit", "icmp-timxceed", "icmp-paramprob", "icmp-tstamp"]
ICMP6_TYPES = ["icmp6-echo", "icmp6-echoreply", "icmp6-neighborsolicit", "icmp6-neighboradvert"]
ICMP6_TYPES += ["icmp6-routersolicit", "icmp6-routeradvert", "icmp6-destinationunreach", "icmp6-packettoobig"]
RELS = ["=", "==", "!=", "<", ">", "<=", ">="]
ARITH = ["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]


def _number(n: int) -> st.SearchStrategy[str]:
    """A number up to ``n`` in decimal, hex or octal."""
    return st.integers(0, n).flatmap(
        lambda v: st.sampled_from([str(v), hex(v), f"0{v:o}" if v else "0"])
    )


small = _number(1600)
byte = _number(255)

host = st.one_of(st.sampled_from(V4), st.sampled_from(V6))
def _b(fmt: str, *parts: st.SearchStrategy[object]) -> st.SearchStrategy[str]:
    """``fmt`` (a str.format template) filled with one draw of each part."""
    return st.tuples(*parts).map(lambda t: fmt.format(*t))


def _of(words: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(words)


dirs = _of(DIRS)
flags = st.lists(_of(TCP_FLAGS), min_size=1, max_size=3).map(" | ".join)
primitive = st.one_of(
    _b("{}host {}", dirs, host),
    _b("{} {}host {}", _of(["ip", "arp", "rarp"]), dirs, _of(V4)),
    _b("ip6 {}host {}", dirs, _of(V6)),
    _b("ether {}host {}", dirs, _of(MACS)),
    _b("ether {}{}", _of(["src ", "dst "]), _of(MACS)),
    _b("{}net {}", dirs, _of(NETS4 + NETS6)),
    _b("{}net 10.0.0.0 mask 255.255.0.0", dirs),
    _of(["net 10", "net 192.168", "src net 10.0.0"]),
    _b("{}{}port {}", _of(["", "tcp ", "udp ", "sctp "]), dirs, _of(PORTS)),
    _b("{}{}portrange {}-{}", _of(["", "tcp ", "udp "]), dirs, st.integers(0, 9000), st.integers(0, 9000)),
    _b("{} {}", _of(["less", "greater"]), small),
    _of(PROTOS),
    _b("ip proto {}", _of(IP_PROTOS)),
    _b("ip6 proto {}", _of(IP6_PROTOS)),
    _b("proto {}", _of(IP_PROTOS)),
    _b("ether proto {}", _of(ETHER_PROTOS)),
    _of(["ether broadcast", "ether multicast", "broadcast", "multicast", "ip multicast"]),
    _of(["ip6 multicast", "llc", "pppoed", "pppoes", "mpls", "vlan", "geneve"]),
    _b("vlan {}", st.integers(0, 4095)),
    _b("mpls {}", st.integers(0, 1048575)),
    _b("pppoes {}", st.integers(0, 65535)),
    _b("geneve {}", st.integers(0, 16777215)),
    _b("decnet {}host {}", dirs, _of(["1.2", "10.1000"])),
    _b("tcp[tcpflags] & ({}) {} {}", flags, _of(["!=", "="]), _of(["0", "tcp-syn", "2"])),
    _b("icmp[icmptype] {} {}", _of(RELS), _of(ICMP_TYPES)),
    _b("icmp6[icmp6type] {} {}", _of(RELS), _of(ICMP6_TYPES)),
    _b("icmp[icmpcode] {} 0", _of(RELS)),
    _b("len {} {}", _of(RELS), small),
)


@st.composite
def accessor(draw: st.DrawFn, depth: int = 0) -> str:
    """``proto[expr]`` / ``proto[expr:size]``: a constant offset, or (once) another accessor as the index."""
    proto = draw(st.sampled_from(ACCESSORS))
    nested = depth == 0 and draw(st.integers(0, 4)) == 0
    index = f"{draw(accessor(depth + 1))} & 0x3f" if nested else draw(_number(80))
    size = draw(st.sampled_from(["", ":1", ":2", ":4"]))
    return f"{proto}[{index}{size}]"


@st.composite
def arith(draw: st.DrawFn, depth: int = 0) -> str:
    """An arithmetic expression of accessors, ``len`` and numbers (division by a constant 0 is libpcap's error)."""
    kind = draw(st.integers(0, 9 if depth < 2 else 3))
    if kind <= 1:
        return draw(accessor())
    if kind == 2:
        return "len"
    if kind == 3:
        return draw(byte)
    if kind == 4:
        return f"-{draw(arith(depth + 1))}" if draw(st.booleans()) else f"({draw(arith(depth + 1))})"
    a, b = draw(arith(depth + 1)), draw(arith(depth + 1))
    return f"{a} {draw(st.sampled_from(ARITH))} {b}"


relation = st.builds(lambda a, r, b: f"{a} {r} {b}", arith(), st.sampled_from(RELS), arith())
leaf = st.one_of(primitive, primitive, relation)


_expressions = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", inner, _of(["and", "or", "&&", "||"]), inner),
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, _of(["and", "or"]), inner),
        st.builds(lambda neg, a: f"{neg}({a})", _of(["not ", "!"]), inner),
    ),
    max_leaves=6,
)
# Deferred: hypothesis's description of the recursive strategy runs to hundreds of kilobytes (and warns).
expressions = st.deferred(lambda: _expressions)
