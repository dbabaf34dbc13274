"""Drop reasons in plain words: what happened to the packet, and the next thing to check.

:func:`explain` looks a reason of the kernel's ``enum skb_drop_reason`` up in :data:`REASONS` (one table, the
facts checked against the comments of the kernel's ``include/net/dropreason-core.h``, in our own words), then
lets :data:`REFINED` sharpen it with where the drop happened: the protocol the drop location's function names
(``__udp4_lib_rcv`` -> udp), or the netfilter hook of a ``NETFILTER_DROP`` (see :mod:`pwru.netfilter`).

Used by ``--output-explain`` (a line after each drop), ``--summary`` (a column of its table) and the journey
output. Pure: no kernel, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "SKB_DROP_REASON_"


@dataclass(frozen=True)
class Explanation:
    """One drop reason explained."""

    text: str  # one line in plain words: what happened
    check: str  # the next thing to check


#: reason (without ``SKB_DROP_REASON_``) -> (what happened, what to check next).
REASONS: dict[str, tuple[str, str]] = {
    "NOT_SPECIFIED": (
        "the kernel dropped it without saying why (a path that sets no drop reason)",
        "the drop location's function and --output-stack show which code path freed it",
    ),
    "NO_SOCKET": (
        "no socket wanted it: nothing listens on that protocol and port (or no connection matches) in that netns",
        "list the listeners in the packet's netns: `ss -lntup` (inside it: `ip netns exec NAME ss -lntup`)",
    ),
    "SOCKET_CLOSE": (
        "the socket it was queued on was closed before the data was read",
        "whether the receiving process closes its socket early or exits",
    ),
    "PKT_TOO_SMALL": (
        "the packet is shorter than its headers say it must be",
        "the sender or a device on the path truncating packets (`tcpdump -e` on the receiving device)",
    ),
    "TCP_CSUM": (
        "the TCP checksum is wrong",
        "checksum offload on the sending and receiving devices (`ethtool -k DEV | grep checksum`), a corrupting link",
    ),
    "SOCKET_FILTER": (
        "a socket filter (a classic or eBPF program attached to the socket, SO_ATTACH_FILTER) refused it",
        "the filters attached to the receiving sockets: `ss -0 -b` or `bpftool net` / `bpftool prog`",
    ),
    "UDP_CSUM": (
        "the UDP checksum is wrong",
        "checksum offload on the sending and receiving devices (`ethtool -k DEV | grep checksum`), a corrupting link",
    ),
    "NETFILTER_DROP": (
        "a netfilter rule (iptables, nftables) dropped it",
        "the rules of the packet's netns: `iptables -S`, `ip6tables -S`, `nft list ruleset` (counters: `-v`)",
    ),
    "OTHERHOST": (
        "the packet is for another host's MAC address; it arrived only because the device is promiscuous",
        "why the frame reaches this device (`ip link show DEV` for PROMISC, a bridge or switch flooding it)",
    ),
    "IP_CSUM": (
        "the IP header checksum is wrong",
        "the sender and the link; checksum offload settings (`ethtool -k DEV`)",
    ),
    "IP_INHDR": (
        "the IP header is invalid (bad version, length or header length, TTL expired on forwarding)",
        "the sender's packets (`tcpdump -v`), `nstat -az IpInHdrErrors Ip6InHdrErrors`",
    ),
    "IP_RPFILTER": (
        "reverse path filtering refused it: a reply to its source address would not leave by the device it came in",
        "`sysctl net.ipv4.conf.all.rp_filter net.ipv4.conf.DEV.rp_filter` and the routes back to the source",
    ),
    "UNICAST_IN_L2_MULTICAST": (
        "the IP destination is unicast but the Ethernet destination is multicast or broadcast",
        "the sender's neighbour entries and what it sends (`tcpdump -e`); the drop_unicast_in_l2_multicast sysctl",
    ),
    "XFRM_POLICY": (
        "an IPsec (xfrm) policy check failed: no policy allows it, or it should have been encrypted",
        "`ip xfrm policy` and `ip xfrm state`, the counters in /proc/net/xfrm_stat",
    ),
    "IP_NOPROTO": (
        "nothing on this host handles the IP protocol it carries (no module or socket for that protocol number)",
        "the packet's protocol number; whether the module handling it (sctp, gre, ...) is loaded",
    ),
    "SOCKET_RCVBUFF": (
        "the receiving socket's buffer is full: the application does not read fast enough",
        "the receiving process and its buffer (`ss -m`, SO_RCVBUF, `sysctl net.core.rmem_max`)",
    ),
    "PROTO_MEM": (
        "the protocol's memory limit for all sockets is reached (e.g. udp_mem, tcp_mem)",
        "`sysctl net.ipv4.udp_mem net.ipv4.tcp_mem` against /proc/net/sockstat; sockets that do not read",
    ),
    "TCP_AUTH_HDR": (
        "the TCP-MD5 or TCP-AO option appears twice or is malformed",
        "the peer's TCP authentication settings",
    ),
    "TCP_MD5NOTFOUND": (
        "the segment has no TCP-MD5 signature and the socket expects one",
        "the MD5 keys configured on both peers (BGP neighbours: the password setting)",
    ),
    "TCP_MD5UNEXPECTED": (
        "the segment carries a TCP-MD5 signature the socket does not expect",
        "the MD5 keys configured on both peers",
    ),
    "TCP_MD5FAILURE": (
        "the segment's TCP-MD5 signature is wrong",
        "that both peers use the same MD5 key",
    ),
    "TCP_AONOTFOUND": (
        "the segment has no TCP-AO signature and the socket requires one",
        "the TCP-AO keys of both peers",
    ),
    "TCP_AOUNEXPECTED": (
        "the segment carries a TCP-AO signature the socket does not expect",
        "the TCP-AO keys of both peers",
    ),
    "TCP_AOKEYNOTFOUND": (
        "the segment's TCP-AO key is unknown here",
        "the TCP-AO key ids configured on both peers",
    ),
    "TCP_AOFAILURE": (
        "the segment's TCP-AO signature is wrong",
        "that both peers use the same TCP-AO keys",
    ),
    "SOCKET_BACKLOG": (
        "the socket's backlog (segments held while the socket is busy) is full",
        "the receiving process holding its socket, `nstat -az TcpExtTCPBacklogDrop`, the receive buffer size",
    ),
    "TCP_FLAGS": (
        "the TCP flags are invalid for the connection's state",
        "the peer's segments (`tcpdump`), middleboxes rewriting TCP",
    ),
    "TCP_ZEROWINDOW": (
        "the receiver's TCP window is zero: the application does not read, so new data cannot be taken",
        "the receiving process (is it reading?), `ss -tmi` for its receive queue",
    ),
    "TCP_OLD_DATA": (
        "the TCP data was received before (a retransmission, maybe a spurious one)",
        "retransmissions on the path (`ss -ti`, `nstat -az TcpRetransSegs`); loss of ACKs towards the sender",
    ),
    "TCP_OVERWINDOW": (
        "the TCP data lies beyond the receive window's right edge",
        "the peer's view of the window (a middlebox changing window scaling, `tcpdump` of the handshake)",
    ),
    "TCP_OFOMERGE": (
        "the out-of-order data is already queued (a duplicate)",
        "retransmissions and reordering on the path",
    ),
    "TCP_RFC7323_PAWS": (
        "the segment's TCP timestamp is older than the connection's (PAWS protection against old duplicates)",
        "NAT putting several hosts behind one address, `nstat -az TcpExtPAWSEstab`",
    ),
    "TCP_OLD_SEQUENCE": (
        "the segment's sequence number is old (a duplicate packet)",
        "retransmissions and duplicates on the path",
    ),
    "TCP_INVALID_SEQUENCE": (
        "the segment's sequence number is not acceptable for the connection",
        "the peer's state (`ss -ti`), middleboxes or NAT mixing connections",
    ),
    "TCP_RESET": (
        "an invalid TCP reset (its sequence number does not fit the connection)",
        "who sends the reset (`tcpdump 'tcp[tcpflags] & tcp-rst != 0'`), a firewall or NAT injecting resets",
    ),
    "TCP_INVALID_SYN": (
        "a SYN arrived where none is expected (on an established connection)",
        "the peer restarting connections, NAT reusing ports",
    ),
    "TCP_CLOSE": (
        "the TCP socket is already closed",
        "the application's connection life cycle (`ss -tan state close-wait`)",
    ),
    "TCP_FASTOPEN": (
        "the TCP Fast Open request socket refused it",
        "`sysctl net.ipv4.tcp_fastopen` and the peer's Fast Open use",
    ),
    "TCP_OLD_ACK": (
        "the TCP ACK is old, though in the window",
        "reordering on the path",
    ),
    "TCP_TOO_OLD_ACK": (
        "the TCP ACK is too old for the connection",
        "reordering or a stale peer (NAT reusing ports)",
    ),
    "TCP_ACK_UNSENT_DATA": (
        "the TCP ACK acknowledges data that was never sent",
        "middleboxes rewriting sequence numbers, the peer's state",
    ),
    "TCP_OFO_QUEUE_PRUNE": (
        "the out-of-order queue was pruned to free memory",
        "the socket's receive buffer and memory pressure (`ss -tm`, tcp_mem)",
    ),
    "TCP_OFO_DROP": (
        "the out-of-order data is already in the receive queue, or does not fit the receive buffer",
        "reordering on the path and the receive buffer size",
    ),
    "IP_OUTNOROUTES": (
        "no route to the destination was found when sending",
        "`ip route get DEST` (and `ip rule`, for policy routing) in the sender's netns",
    ),
    "BPF_CGROUP_EGRESS": (
        "a cgroup BPF program (BPF_PROG_TYPE_CGROUP_SKB) refused it on egress",
        "the programs attached to the sender's cgroup: `bpftool cgroup tree`",
    ),
    "IPV6DISABLED": (
        "IPv6 is disabled on the device",
        "`sysctl net.ipv6.conf.DEV.disable_ipv6 net.ipv6.conf.all.disable_ipv6`",
    ),
    "NEIGH_CREATEFAIL": (
        "no neighbour (ARP/NDP) entry could be created for the next hop",
        "the neighbour table's limits (`sysctl net.ipv4.neigh.default.gc_thresh3`), `ip neigh`",
    ),
    "NEIGH_FAILED": (
        "the next hop's neighbour entry is in the FAILED state: ARP/NDP got no answer",
        "that the next hop is up and reachable: `ip neigh show`, `arping`, the route's gateway",
    ),
    "NEIGH_QUEUEFULL": (
        "too many packets wait for the next hop's ARP/NDP resolution",
        "the next hop's reachability (`ip neigh`), `sysctl net.ipv4.neigh.DEV.unres_qlen_bytes`",
    ),
    "NEIGH_DEAD": (
        "the next hop's neighbour entry was removed while the packet used it",
        "devices or addresses going away (`ip monitor neigh`)",
    ),
    "TC_EGRESS": (
        "a tc program or action dropped it on egress",
        "`tc filter show dev DEV egress`, `bpftool net` for tc/tcx BPF programs",
    ),
    "TC_INGRESS": (
        "a tc program or action dropped it on ingress",
        "`tc filter show dev DEV ingress`, `bpftool net` for tc/tcx BPF programs",
    ),
    "QDISC_DROP": (
        "the device's queueing discipline refused it (its queue is full, or a policer dropped it)",
        "`tc -s qdisc show dev DEV` (drops, backlog), the device's speed against the traffic",
    ),
    "CPU_BACKLOG": (
        "the per-CPU input backlog queue is full (or the RPS flow limit hit)",
        "`sysctl net.core.netdev_max_backlog`, the second column of /proc/net/softnet_stat",
    ),
    "XDP": (
        "an XDP program dropped it on input",
        "the XDP programs on the receiving device: `ip link show DEV`, `bpftool net`",
    ),
    "UNHANDLED_PROTO": (
        "the protocol is not implemented or not supported here",
        "the packet's protocol (`tcpdump -e`) and the modules loaded",
    ),
    "SKB_CSUM": (
        "computing the packet's checksum failed",
        "checksum offload settings (`ethtool -k DEV`)",
    ),
    "SKB_GSO_SEG": (
        "segmenting a large (GSO) packet failed",
        "offload settings on the path (`ethtool -k DEV | grep segmentation`), tunnels and MTUs",
    ),
    "SKB_UCOPY_FAULT": (
        "copying the data from user space failed",
        "the sending application (a bad buffer) and zerocopy use",
    ),
    "DEV_HDR": (
        "the device driver's own header or metadata is invalid",
        "the driver (virtio-net, tun: the vnet header the sender wrote)",
    ),
    "DEV_READY": (
        "the device is not ready: it is down, or not set up to send or receive yet",
        "`ip link show DEV` (state UP, carrier), the driver's queues (a tun device without its reader)",
    ),
    "FULL_RING": (
        "the device's ring buffer is full",
        "the device's ring sizes and drops: `ethtool -g DEV`, `ethtool -S DEV`",
    ),
    "NOMEM": (
        "memory could not be allocated for it",
        "the host's free memory and the networking memory limits",
    ),
    "HDR_TRUNC": (
        "a protocol header could not be read: the packet ends inside it",
        "truncated packets from the sender or a device on the path (`tcpdump -e`)",
    ),
    "TAP_FILTER": (
        "the eBPF filter attached to the tun/tap device (TUNSETFILTEREBPF) refused it",
        "the program attached to the tap device by its owner (a VM manager)",
    ),
    "TAP_TXFILTER": (
        "the tun/tap device's transmit filter (its address filter) refused it",
        "the MAC address filter its owner set on the tap device",
    ),
    "ICMP_CSUM": (
        "the ICMP checksum is wrong",
        "the sender and the link",
    ),
    "INVALID_PROTO": (
        "the packet breaks its protocol's rules (e.g. an ICMP timestamp request sent to a broadcast address)",
        "what the sender sends (`tcpdump -v`)",
    ),
    "IP_INADDRERRORS": (
        "the destination address is not valid here: the host is unreachable",
        "the packet's destination against `ip addr` and `ip route get DEST` in that netns",
    ),
    "IP_INNOROUTES": (
        "no route to the destination was found for a received packet: the network is unreachable",
        "`ip route get DEST from SRC iif DEV` in the receiving netns; forwarding (`sysctl net.ipv4.ip_forward`)",
    ),
    "PKT_TOO_BIG": (
        "the packet is larger than the MTU and may not be fragmented",
        "the MTUs on the path (`ip link`, `ip route get DEST` for a cached PMTU), ICMP 'too big' being let through",
    ),
    "DUP_FRAG": (
        "a fragment arrived twice",
        "duplication on the path; the reassembly counters (`nstat -az IpReasmFails`)",
    ),
    "FRAG_REASM_TIMEOUT": (
        "its fragments were not all received in time for reassembly",
        "fragment loss on the path (a firewall dropping non-first fragments), `sysctl net.ipv4.ipfrag_time`",
    ),
    "FRAG_TOO_FAR": (
        "the IPv4 fragment is too far behind the others of its source (ipfrag_max_dist)",
        "`sysctl net.ipv4.ipfrag_max_dist`, reordering on the path",
    ),
    "TCP_MINTTL": (
        "the TTL (or IPv6 hop limit) is below the socket's minimum (IP_MINTTL, IPV6_MINHOPCOUNT)",
        "the hop count from the peer against the minimum the application set (GTSM for BGP)",
    ),
    "IPV6_BAD_EXTHDR": (
        "an IPv6 extension header is invalid",
        "what the sender sends (`tcpdump -v`)",
    ),
    "IPV6_NDISC_FRAG": (
        "a neighbour discovery message arrived fragmented, which is refused",
        "the sender of the NDP message",
    ),
    "IPV6_NDISC_HOP_LIMIT": (
        "a neighbour discovery message has a hop limit other than 255 (it was routed)",
        "the sender of the NDP message; NDP must come from the link itself",
    ),
    "IPV6_NDISC_BAD_CODE": (
        "a neighbour discovery message has an invalid ICMPv6 code",
        "the sender of the NDP message",
    ),
    "IPV6_NDISC_BAD_OPTIONS": (
        "a neighbour discovery message has invalid options",
        "the sender of the NDP message",
    ),
    "IPV6_NDISC_NS_OTHERHOST": (
        "a neighbour solicitation is for another host's address",
        "nothing, usually: solicitations for addresses of other hosts on the link",
    ),
    "QUEUE_PURGE": (
        "a whole queue of packets was freed at once (a socket or device being shut down)",
        "sockets closing or devices going down at that time",
    ),
    "TC_COOKIE_ERROR": (
        "processing a tc extension cookie failed",
        "the tc filters and actions on the device (`tc filter show dev DEV`)",
    ),
    "PACKET_SOCK_ERROR": (
        "a packet socket's filter matched it but the socket could not take it",
        "the packet sockets (tcpdump and friends: `ss -0`) and their buffers",
    ),
    "TC_CHAIN_NOTFOUND": (
        "a tc action jumped to a chain that does not exist",
        "`tc chain show dev DEV` and the actions' goto targets",
    ),
    "TC_RECLASSIFY_LOOP": (
        "tc reclassified it too many times (a loop between filters)",
        "the tc filters' reclassify actions on the device",
    ),
    "TCP_LISTEN_OVERFLOW": (
        "the listening socket's accept queue is full: the application does not accept connections fast enough",
        "the listener's queue (`ss -lnt`: Recv-Q against Send-Q), its backlog argument, `net.core.somaxconn`",
    ),
    "TCP_INVALID_ACK_SEQUENCE": (
        "the segment's acknowledgement number is not acceptable for the connection",
        "the peer's state, middleboxes rewriting sequence numbers",
    ),
    "IP_INVALID_SOURCE": (
        "the source address is not valid for a received packet (multicast, broadcast, or otherwise refused)",
        "the sender's address configuration (`tcpdump -n`)",
    ),
    "IP_LOCAL_SOURCE": (
        "the source address is one of this host's own addresses, arriving from outside (spoofed or looped)",
        "loops in the network (bridges, routes pointing back), `sysctl net.ipv4.conf.DEV.accept_local`",
    ),
    "IP_INVALID_DEST": (
        "the destination address is not valid for a received packet (e.g. 0.0.0.0 or a loopback address)",
        "the sender's destination and `ip route get DEST` here",
    ),
    "IP_LOCALNET": (
        "a 127.0.0.0/8 address arrived on a device other than loopback",
        "`sysctl net.ipv4.conf.DEV.route_localnet`, what sends to or from loopback addresses",
    ),
    "SECURITY_HOOK": (
        "a security module (SELinux, AppArmor, Smack, ...) refused it",
        "the security module's audit log (`ausearch -m AVC`, `dmesg`) and its network policy",
    ),
    "QDISC_OVERLIMIT": (
        "the queueing discipline is over its limit",
        "`tc -s qdisc show dev DEV`: its limit and drops against the traffic",
    ),
    "QDISC_CONGESTED": (
        "the queueing discipline dropped it to fight congestion (an active queue management decision)",
        "`tc -s qdisc show dev DEV`; the link's speed against the traffic",
    ),
    "RECURSION_LIMIT": (
        "sending nested too deep (a packet looping between tunnels or virtual devices)",
        "loops in the tunnel or device set-up (`ip -d link`, routes through the tunnel to its own endpoint)",
    ),
    "NEIGH_HH_FILLFAIL": (
        "the link-layer header for the next hop could not be filled in",
        "the neighbour entry (`ip neigh`) and the device",
    ),
    "PFMEMALLOC": (
        "it was allocated from emergency memory reserves and the socket may not use them",
        "memory pressure on the host (`free`, `vmstat`)",
    ),
}

#: Where the drop happened, refining :data:`REASONS`: (reason, ``udp``/``tcp``/``ipv6``/... from the location's
#: function, or a netfilter hook name) -> (what happened, what to check next).
REFINED: dict[tuple[str, str], tuple[str, str]] = {
    ("NO_SOCKET", "udp"): (
        "no socket wanted it: nothing listens on that UDP port in that netns",
        "list the UDP listeners in the packet's netns: `ss -lnup` (inside it: `ip netns exec NAME ss -lnup`)",
    ),
    ("NO_SOCKET", "tcp"): (
        "no socket wanted it: nothing listens on that TCP port in that netns and no connection matches "
        "(the sender gets a reset)",
        "list the TCP listeners and connections in the packet's netns: `ss -lntp` and `ss -tan`",
    ),
    ("NETFILTER_DROP", "PREROUTING"): (
        "a netfilter rule in the PREROUTING chain dropped it (before routing: raw, mangle, nat tables or conntrack)",
        "list them with `iptables -t raw -S PREROUTING`, `iptables -t mangle -S PREROUTING` / `nft list ruleset`",
    ),
    ("NETFILTER_DROP", "INPUT"): (
        "a netfilter rule in the INPUT chain dropped it (a packet for this host)",
        "list them with `iptables -S INPUT` (`ip6tables -S INPUT` for IPv6) / `nft list ruleset`",
    ),
    ("NETFILTER_DROP", "FORWARD"): (
        "a netfilter rule in the FORWARD chain dropped it (a packet routed through this host)",
        "list them with `iptables -S FORWARD` (`ip6tables -S FORWARD` for IPv6) / `nft list ruleset`",
    ),
    ("NETFILTER_DROP", "OUTPUT"): (
        "a netfilter rule in the OUTPUT chain dropped it (a packet this host sends; the sender got EPERM)",
        "list them with `iptables -S OUTPUT` (`ip6tables -S OUTPUT` for IPv6) / `nft list ruleset`",
    ),
    ("NETFILTER_DROP", "POSTROUTING"): (
        "a netfilter rule in the POSTROUTING chain dropped it (after routing, on its way out)",
        "list them with `iptables -t mangle -S POSTROUTING`, `iptables -t nat -S POSTROUTING` / `nft list ruleset`",
    ),
}

#: The protocol a drop location's function names (``__udp4_lib_rcv``, ``tcp_v6_rcv``, ``udpv6_queue_rcv_skb``).
_PROTO = re.compile(r"(udp|tcp)")


def _location_key(location: str | None) -> str | None:
    if not location:
        return None
    m = _PROTO.match(location.split("+", 1)[0].lstrip("_"))
    return m.group(1) if m else None


def explain(reason: str, location: str | None = None, nf_hook: str | None = None) -> Explanation | None:
    """``reason`` (``NO_SOCKET`` or ``SKB_DROP_REASON_NO_SOCKET``) explained, refined by the drop ``location``
    (a symbol such as ``__udp4_lib_rcv+0x5b1``) and a netfilter drop's ``nf_hook`` (``INPUT``, or
    ``ipv4/INPUT``); None for a reason not in the table."""
    name = reason.removeprefix(PREFIX)
    base = REASONS.get(name)
    if base is None:
        return None
    keys = [nf_hook.rsplit("/", 1)[-1] if nf_hook else None, _location_key(location)]
    for key in keys:
        if key is not None and (name, key) in REFINED:
            return Explanation(*REFINED[name, key])
    return Explanation(*base)
