"""Struct dumps (--output-skb, --output-skb-shared-info) and the control block (--output-skb-cb): the dump
records joined to their events, and how the text and JSON outputs show them."""

from __future__ import annotations

import json
import struct
from typing import Any

from pwru.config import OutputConfig
from pwru.dumps import DumpStage, dump_text
from pwru.output.json import JsonFormatter
from pwru.output.text import CB_WIDTH, TextFormatter
from pwru.records import Batch
from tests.unit.test_output_text import FakeNames, fmt, make_event, schema

SKB_TEXT = b"(struct sk_buff){\n .len = (unsigned int)60,\n}\0garbage after the NUL"
SHINFO_TEXT = b"(struct skb_shared_info){\n .nr_frags = (__u8)0x0,\n}\0"


def dump(kind: str, text: bytes, **event: Any) -> bytes:
    """A struct skb_dump record for the event ``make_event(**event)`` would make."""
    s = schema()
    ev = make_event(**event)
    layout = s.layout("skb_dump")
    kinds = s.enum("pwru_dump_kind", "PWRU_DUMP_")
    values = {k: ev[k] for k in ("ts", "skb", "probe", "probe_kind")}
    size = layout.tail.offset + len(text) if layout.tail else 0
    values.update(type=s.type_id("skb_dump"), size=size, kind=kinds[kind], len=len(text), text=text)
    return layout.encode(values)


def event(**kw: Any) -> bytes:
    return schema().layout("event").encode(make_event(**kw))


def test_the_dump_kinds_are_the_structs_names() -> None:
    assert set(schema().enum("pwru_dump_kind", "PWRU_DUMP_")) == {"sk_buff", "skb_shared_info"}


def test_dumps_join_their_event_in_this_batch_or_a_later_one() -> None:
    stage = DumpStage()
    first = Batch(schema(), [dump("sk_buff", SKB_TEXT), event(ts=5), dump("sk_buff", SKB_TEXT, ts=9)])
    out = stage.process(first)
    assert out.records == [event(ts=5)]  # the dumps are taken out; ts=5 has none (its own dump is ts=9's)
    assert out.dumps == {}
    second = stage.process(
        Batch(schema(), [dump("skb_shared_info", SHINFO_TEXT, ts=9), event(ts=9), event(ts=1_000_000_000)])
    )
    key9 = (9, make_event()["skb"], make_event()["probe"])
    key0 = (1_000_000_000, make_event()["skb"], make_event()["probe"])
    assert list(second.dumps) == [key9, key0]
    assert second.dumps[key9] == {
        "sk_buff": "(struct sk_buff){\n .len = (unsigned int)60,\n}",
        "skb_shared_info": "(struct skb_shared_info){\n .nr_frags = (__u8)0x0,\n}",
    }
    # the very first dump (make_event's ts) was for the event of the last record: joined there
    assert second.dumps[key0] == {"sk_buff": "(struct sk_buff){\n .len = (unsigned int)60,\n}"}


def test_dumps_whose_event_never_comes_are_bounded() -> None:
    stage = DumpStage(max_pending=8)
    stage.process(Batch(schema(), [dump("sk_buff", SKB_TEXT, ts=t) for t in range(100)]))
    out = stage.process(Batch(schema(), [event(ts=0), event(ts=99)]))
    assert [k[0] for k in out.dumps] == [99]  # the oldest went


def test_dump_text_is_made_printable_but_keeps_its_lines() -> None:
    assert dump_text(b"a\n\tb\x1b[31m\n\0x") == "a\n\tb\\x1b[31m\n"
    assert dump_text(b"\xff") == "\\xff"


def _batch(*records: bytes) -> Batch:
    return DumpStage().process(Batch(schema(), list(records)))


def test_text_dumps_follow_their_line_after_the_stack() -> None:
    f = TextFormatter(OutputConfig(stack=True, skb=True, shared_info=True), FakeNames())
    batch = _batch(dump("sk_buff", SKB_TEXT), dump("skb_shared_info", SHINFO_TEXT), event(stack_id=5), event(ts=7))
    batch.stacks = {5: (0xA000,)}
    with_dumps, without = f.format_batch(batch)
    line, frame, *rest = with_dumps.split("\n")
    assert line == fmt(TextFormatter(OutputConfig(), FakeNames()), make_event())
    assert frame == "__udp4_lib_rcv+0x5b1"
    assert "\n".join(rest) == dump_text(SKB_TEXT) + "\n" + dump_text(SHINFO_TEXT)
    assert "\n" not in without


def test_json_dumps_under_their_structs_names() -> None:
    f = JsonFormatter(OutputConfig(json=True, skb=True, shared_info=True), FakeNames())
    lines = f.format_batch(_batch(dump("sk_buff", SKB_TEXT), event(), event(ts=7)))
    with_dumps, without = (json.loads(x) for x in lines)
    assert with_dumps["sk_buff"] == dump_text(SKB_TEXT)
    assert "skb_shared_info" not in with_dumps and "sk_buff" not in without
    assert with_dumps["skb"] == f"{make_event()['skb']:#x}"  # the skb's address stays under pwru's "skb"


CB = struct.pack("=5I", 0, 42, 0xDEADBEEF, 7, 0xFFFFFFFF)


def test_cb_words_text_as_pwru() -> None:
    f = TextFormatter(OutputConfig(skb_cb=True), FakeNames())
    header = f.header()
    line = fmt(f, make_event(cb=CB))
    words = "[0x00000000,0x0000002A,0xDEADBEEF,0x00000007,0xFFFFFFFF]"
    assert len(words) == CB_WIDTH
    assert f" {words} " in line
    assert header.index("__sk_buff->cb[]") == line.index(words)  # under its header
    assert header.index("TUPLE") == line.index("10.99.0.1")  # the columns after it stay under theirs


def test_cb_words_json_as_pwru() -> None:
    f = JsonFormatter(OutputConfig(json=True, skb_cb=True), FakeNames())
    assert json.loads(fmt(f, make_event(cb=CB)))["cb"] == [0, 42, 0xDEADBEEF, 7, 0xFFFFFFFF]
    plain = JsonFormatter(OutputConfig(json=True), FakeNames())
    assert "cb" not in json.loads(fmt(plain, make_event(cb=CB)))
