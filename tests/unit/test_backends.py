"""Backend logic that needs no kernel: program variants, target naming, the parallel attach loop."""

from __future__ import annotations

import threading

from pwru import backends
from pwru.backends import Attachment, _attach_each
from pwru.discovery import Target

NAMES = {"kprobe_skb_1", "kprobe_skb_2", "kprobe_skb_1_reason_2", "kprobe_skb_2_reason_3"}


def target(name: str, skb: int = 1, reason: int | None = None, module: str | None = None) -> Target:
    return Target(name, module, 1, skb, reason)


def test_variant_for_reason_positions_falls_back_to_skb_only() -> None:
    assert backends.kprobe_program_name(target("sk_skb_reason_drop", 2, 3), NAMES) == "kprobe_skb_2_reason_3"
    assert backends.kprobe_program_name(target("icmpv6_param_prob_reason", 1, 4), NAMES) == "kprobe_skb_1"
    assert backends.kprobe_program_name(target("ip_rcv"), NAMES) == "kprobe_skb_1"


def test_display_names() -> None:
    assert backends.display_name(target("veth_xmit", module="veth")) == "veth_xmit[veth]"
    tp = Target("kfree_skb", None, 1, 1, 3, 2, "tracepoint")
    assert backends.display_name(tp) == "tp:kfree_skb"


class FakeLink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_attach_each_collects_links_ignored_and_progress() -> None:
    targets = [target(f"f{i}") for i in range(40)]
    seen: list[tuple[int, int]] = []
    att = Attachment()

    def one(t: Target) -> tuple[FakeLink | None, str]:
        return (None, "busy") if t.name.endswith("3") else (FakeLink(t.name), "")

    _attach_each(att, targets, one, lambda d, n: seen.append((d, n)), lambda: False)  # type: ignore[arg-type]
    assert [t.name for t, _ in att.ignored] == ["f3", "f13", "f23", "f33"]
    assert len(att.links) == len(att.attached) == 36
    assert seen[-1] == (40, 40)
    att.close()
    assert att.links == []


def test_attach_each_stops_early_and_keeps_what_it_made() -> None:
    targets = [target(f"f{i}") for i in range(200)]
    made: list[FakeLink] = []
    lock = threading.Lock()
    att = Attachment()

    def one(t: Target) -> tuple[FakeLink | None, str]:
        lk = FakeLink(t.name)
        with lock:
            made.append(lk)
        return lk, ""

    _attach_each(att, targets, one, lambda d, n: None, lambda: len(made) >= 20)  # type: ignore[arg-type]
    assert 20 <= len(att.links) < 200
    assert att.ignored == []
    assert {id(lk) for lk in made} == {id(lk) for lk in att.links}  # nothing made is lost
    att.close()
    assert all(lk.closed for lk in made)
