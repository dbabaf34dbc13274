"""The event pwru's kernel side reports for one skb at one probe.

The layout lives in ``bpf/pwru.h`` only; :class:`EventDecoder` reads member offsets from the compiled object's
BTF, so nothing here repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass

KIND_FUNC = 0
KIND_TRACEPOINT = 1


@dataclass(slots=True)
class Event:
    ts: int
    addr: int
    skb: int
    caller: int
    location: int
    stack_id: int
    reason: int
    pid: int
    cpu: int
    kind: int
    comm: bytes
    # meta
    netns: int
    mark: int
    ifindex: int
    len: int
    mtu: int
    protocol: int
    ifname: bytes
    # tuple
    saddr: bytes  # 16 bytes; IPv4 in the first 4
    daddr: bytes
    sport: int
    dport: int
    l3_proto: int
    l4_proto: int
    tcp_flags: int
