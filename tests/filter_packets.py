"""Packets for the filter tests: random but reproducible Ethernet frames (IPv4, IPv6, ARP, VLAN-tagged,
other EtherTypes; TCP, UDP, ICMP and other protocols inside) and the raw-IP packets inside them, some
truncated, plus random bytes."""

from __future__ import annotations

import ipaddress
import random
import struct

V4 = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "192.168.1.100", "1.2.3.4", "1.2.3.5", "8.8.8.8", "127.0.0.1"]
V4 += ["255.255.255.255", "224.0.0.1", "10.0.1.7"]
V6 = ["::1", "fe80::1", "2001:db8::1", "2001:db8::2", "ff02::1", "2001:db8:1::5"]
MACS = [
    "00:11:22:33:44:55",
    "66:77:88:99:aa:bb",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
    "33:33:00:00:00:01",
]
PORTS = [22, 53, 80, 443, 1024, 6000, 6005, 8080, 8500, 65535, 0, 1500, 123]


def mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def ip4(s: str) -> bytes:
    return ipaddress.IPv4Address(s).packed


def ip6(s: str) -> bytes:
    return ipaddress.IPv6Address(s).packed


class PacketGen:
    """Random but reproducible packets built with struct: L2 frames and the raw-IP packets inside them."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def payload(self) -> bytes:
        n = self.r.choice([0, 0, 1, 4, 10, 40, 100, 300, 1200])
        return bytes(self.r.getrandbits(8) for _ in range(n))

    def tcp(self) -> bytes:
        r = self.r
        opts = bytes(r.choice([0, 4, 12, 20]))
        doff = (20 + len(opts)) // 4
        flags = r.choice([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x01, 0x29, 0xC2, 0x00, r.getrandbits(8)])
        hdr = struct.pack(
            "!HHIIBBHHH",
            r.choice(PORTS),
            r.choice(PORTS),
            r.getrandbits(32) if r.random() < 0.7 else 0,
            r.getrandbits(32) if r.random() < 0.7 else 0,
            doff << 4,
            flags,
            r.getrandbits(16),
            0,
            r.choice([0, 5, 1000]),
        )
        return hdr + opts + self.payload()

    def udp(self) -> bytes:
        data = self.payload()
        if self.r.random() < 0.2:
            data = b"\x12\x34" + data
        return struct.pack("!HHHH", self.r.choice(PORTS), self.r.choice(PORTS), 8 + len(data), 0) + data

    def icmp(self, v6: bool) -> bytes:
        types = [128, 129, 135, 136, 1, 2] if v6 else [8, 0, 3, 11, 5]
        return struct.pack("!BBHI", self.r.choice(types), self.r.choice([0, 0, 1, 3]), 0, 0) + self.payload()

    def l4(self, v6: bool) -> tuple[int, bytes]:
        kind = self.r.choice(["tcp", "tcp", "udp", "udp", "icmp", "other"])
        if kind == "tcp":
            return 6, self.tcp()
        if kind == "udp":
            return 17, self.udp()
        if kind == "icmp":
            return (58 if v6 else 1), self.icmp(v6)
        return self.r.choice([2, 47, 132, 89]), self.payload()

    def ipv4(self) -> bytes:
        r = self.r
        proto, body = self.l4(False)
        opts = bytes(4 * r.choice([0, 0, 0, 1, 3]))
        ihl = 5 + len(opts) // 4
        frag = r.choice([0, 0, 0, 0x4000, 0x2000, 0x2000 | 185, 185, 0x1FFF])
        total = 4 * ihl + len(body)
        if r.random() < 0.05:
            total = r.getrandbits(16)
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            r.choice([0, 0, 0x10, 0xB8, r.getrandbits(8)]),
            total,
            r.getrandbits(16),
            frag,
            r.choice([1, 2, 63, 64, 65, 128, 255]),
            proto,
            0,
            ip4(r.choice(V4)),
            ip4(r.choice(V4)),
        )
        return hdr + opts + body

    def ipv6(self) -> bytes:
        r = self.r
        nh, body = self.l4(True)
        if r.random() < 0.15:  # fragment header
            offset = r.choice([0, 0, 8, 185])
            body = struct.pack("!BBHI", nh, 0, (offset << 3) | r.choice([0, 1]), r.getrandbits(32)) + body
            nh = 44
        elif r.random() < 0.1:  # hop-by-hop options
            body = struct.pack("!BB6s", nh, 0, bytes(6)) + body
            nh = 0
        tc = r.choice([0, 0x12, 0x3F, r.getrandbits(8)])
        first = (6 << 28) | (tc << 20) | r.getrandbits(20)
        hdr = struct.pack(
            "!IHBB16s16s",
            first,
            len(body),
            nh,
            r.choice([1, 64, 255]),
            ip6(r.choice(V6)),
            ip6(r.choice(V6)),
        )
        return hdr + body

    def arp(self) -> bytes:
        r = self.r
        return struct.pack(
            "!HHBBH6s4s6s4s",
            1,
            0x0800,
            6,
            4,
            r.choice([1, 2, 3]),
            mac(r.choice(MACS)),
            ip4(r.choice(V4)),
            mac(r.choice(MACS)),
            ip4(r.choice(V4)),
        )

    def frame(self) -> tuple[bytes, bytes | None]:
        """An Ethernet frame and, when it carries IP directly, the raw-IP packet inside it."""
        r = self.r
        kind = r.choice(["v4", "v4", "v4", "v6", "v6", "arp", "vlan", "other"])
        inner: bytes | None = None
        tags = b""
        if kind == "vlan":
            for _ in range(r.choice([1, 1, 2])):
                tags += struct.pack("!HH", 0x8100, (r.choice([0, 3]) << 13) | r.choice([10, 20, 100, 4095]))
            kind = r.choice(["v4", "v6", "arp"])
        if kind == "v4":
            etype, body = 0x0800, self.ipv4()
        elif kind == "v6":
            etype, body = 0x86DD, self.ipv6()
        elif kind == "arp":
            etype, body = 0x0806, self.arp()
        else:
            etype, body = r.choice([0x8035, 0x88CC, 0x0801, 0x1234]), self.payload()
        if not tags and kind in ("v4", "v6"):
            inner = body
        head = mac(r.choice(MACS)) + mac(r.choice(MACS))
        return head + tags + struct.pack("!H", etype) + body, inner

    def truncate(self, pkt: bytes) -> bytes:
        return pkt[: self.r.randrange(0, len(pkt) + 1)]

    def packets(self, n: int) -> tuple[list[bytes], list[bytes]]:
        l2: list[bytes] = []
        l3: list[bytes] = []
        while len(l2) < n:
            frame, inner = self.frame()
            l2.append(self.truncate(frame) if self.r.random() < 0.12 else frame)
            if inner is not None:
                l3.append(self.truncate(inner) if self.r.random() < 0.12 else inner)
        return l2, l3

    def junk(self) -> bytes:
        """Random bytes, of any length a header check could care about."""
        n = self.r.choice([0, 1, 2, 13, 14, 20, 34, 40, 54, 60, 64, 100])
        return bytes(self.r.getrandbits(8) for _ in range(n))
