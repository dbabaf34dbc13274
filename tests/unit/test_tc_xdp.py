"""--filter-trace-tc/xdp's verdicts in text and JSON, the tc chain view's before -> after note, and the skb
helpers discovered from kernel BTF (--filter-track-bpf-helpers)."""

from __future__ import annotations

import json
import os

import pytest

from pwru import discovery
from pwru.config import OutputConfig
from pwru.ebpf import btf
from pwru.output.json import JsonFormatter
from pwru.output.text import TextFormatter
from pwru.probes import Attach, Probe
from pwru.records import Batch
from pwru.tc_chain import TcPoint, stage

from .test_output_text import INDEX, SKB, FakeNames, make_event, schema, v4


def _line(f: TextFormatter | JsonFormatter, **kw: object) -> str:
    record = schema().layout("event").encode(make_event(**kw))
    (line,) = f.format_batch(Batch(schema(), [record], {}))
    return line


@pytest.mark.parametrize(
    ("kind", "value", "name"),
    [(1, 0, "TC_ACT_OK"), (1, 2, "TC_ACT_SHOT"), (1, -1, "TC_ACT_UNSPEC"), (1, 7, "TC_ACT_REDIRECT"),
     (2, 1, "XDP_DROP"), (2, 2, "XDP_PASS"), (2, 4, "XDP_REDIRECT"), (2, 99, "99")],
)  # fmt: skip
def test_a_programs_exit_shows_its_verdict(kind: int, value: int, name: str) -> None:
    text = TextFormatter(OutputConfig(), FakeNames())
    assert _line(text, prog_ret=value, prog_ret_kind=kind).rstrip().endswith(f"ip_local_out verdict={name}")
    obj = json.loads(_line(JsonFormatter(OutputConfig(json=True), FakeNames()), prog_ret=value, prog_ret_kind=kind))
    assert obj["prog_verdict"] == name


def test_an_entry_has_no_verdict_and_the_cache_tells_them_apart() -> None:
    text = TextFormatter(OutputConfig(), FakeNames())
    assert "verdict=" not in _line(text, prog_ret=0, prog_ret_kind=0)
    assert "verdict=TC_ACT_SHOT" in _line(text, prog_ret=2, prog_ret_kind=1)  # same probe, after a cached line
    assert "verdict=TC_ACT_OK" in _line(text, prog_ret=0, prog_ret_kind=1)
    obj = json.loads(_line(JsonFormatter(OutputConfig(json=True), FakeNames()), prog_ret=0, prog_ret_kind=0))
    assert "prog_verdict" not in obj


def _point(first: bool) -> Probe:
    p = TcPoint(2, "a0", False, first, 1, "/run/netns/x")
    return Probe("tc_hook", p.name, "tc_chain", Attach.TCX, tcx=p)


def test_the_chain_view_notes_a_rewrite_on_the_skbs_next_event() -> None:
    plan = [_point(True), _point(False)]
    st = stage(plan, INDEX)
    assert st is not None
    layout = schema().layout("event")
    first = layout.encode(make_event(probe=0, probe_kind=INDEX, ts=1, daddr=v4("10.99.0.9"), dport=7000, l4_proto=17))
    after = layout.encode(make_event(probe=0x3000, ts=2, daddr=v4("10.99.0.3"), dport=7000, l4_proto=17))
    same = layout.encode(make_event(probe=0x1000, ts=3, daddr=v4("10.99.0.3"), dport=7000, l4_proto=17))
    other = layout.encode(make_event(probe=0x1000, ts=4, skb=SKB + 8))
    batch = st.process(Batch(schema(), [first, after, same, other], {}))
    note = "10.99.0.1:55378->10.99.0.9:7000(udp) -> 10.99.0.1:55378->10.99.0.3:7000(udp)"
    assert batch.dumps == {(2, SKB, 0x3000): {"tc_rewrite": note}}
    text = TextFormatter(OutputConfig(), FakeNames()).format_batch(batch)
    assert text[1].endswith(f"\ntc_rewrite: {note}")
    # An unchanged tuple is no note; a plan without the view's points has no stage.
    unchanged = layout.encode(make_event(probe=0, probe_kind=INDEX, ts=5))
    assert st.process(Batch(schema(), [unchanged, layout.encode(make_event(ts=6))], {})).dumps == {}
    assert stage([Probe("func", "ip_rcv", "kprobe_skb_1", Attach.KPROBE)], INDEX) is None


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF")
def test_skb_helpers_are_found_in_kernel_btf() -> None:
    found = {t.name: t for t in discovery.skb_helpers(btf.kernel_btf())}
    for name in ("bpf_skb_store_bytes", "bpf_l3_csum_replace", "bpf_l4_csum_replace", "bpf_skb_load_bytes"):
        assert name in found and found[name].skb_pos == 1, sorted(found)
    # Helpers without an skb (maps, time, the xdp ones) are not among them.
    assert not {"bpf_map_lookup_elem", "bpf_ktime_get_ns", "bpf_xdp_adjust_head", "bpf_redirect"} & set(found)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF")
def test_metadata_fields_follow_the_events_kind() -> None:
    """--output-skb-metadata and --output-xdp-metadata share the tail: an XDP event (xdp_ctx) shows the xdp
    fields, every other event the skb ones."""
    from pwru.cexpr import compile_metadata
    from pwru.output.metadata import MetadataFormat

    spec = btf.kernel_btf()
    _, skb_fields, _ = compile_metadata(["skb->mark"], spec)
    _, xdp_fields, _ = compile_metadata(["xdp->rxq->queue_index"], spec, root="xdp")
    assert [f.root for f in skb_fields + xdp_fields] == ["skb", "xdp"]
    layout = schema().layout("event")
    assert layout.tail is not None
    fmt = MetadataFormat([*skb_fields, *xdp_fields], layout.tail.offset, layout.offset("xdp_ctx"))
    tail = (7).to_bytes(8, "little")
    skb_event = layout.encode(make_event()) + tail
    xdp_event = layout.encode(make_event(xdp_ctx=1)) + tail
    assert fmt.text(skb_event) == " mark=7"
    assert fmt.text(xdp_event) == " queue_index=7"
    assert json.loads("{" + fmt.json(xdp_event) + "}") == {"skb_metadata": {"xdp->rxq->queue_index": 7}}
