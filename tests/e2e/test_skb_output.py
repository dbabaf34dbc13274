"""--output-skb, --output-skb-shared-info, --output-skb-cb on real packets in a namespace made here."""

from __future__ import annotations

import re

import pytest

from .conftest import Netns, PwruRun, left_behind, pwru_bpf_objects, udp_send

pytestmark = pytest.mark.root

EVENT_LINE = re.compile(r"^0x[0-9a-f]+ ")
FILTER = "udp and dst port 9999"
NO_NF = "--filter-trace-netfilter=false"  # netfilter hooks' events come without dumps: leave them out here


def events_with_dumps(stdout: str) -> list[tuple[str, str]]:
    """(event line, the lines after it up to the next event line) for each event of a text output."""
    out: list[tuple[str, list[str]]] = []
    for line in stdout.splitlines()[1:]:
        if EVENT_LINE.match(line):
            out.append((line, []))
        elif out:
            out[-1][1].append(line)
    return [(line, "\n".join(rest)) for line, rest in out]


def test_output_skb_shows_the_events_own_len(pwru: object, netns: Netns) -> None:
    before = pwru_bpf_objects()
    run: PwruRun = pwru("--output-skb", NO_NF, "--filter-netns", netns.path, FILTER)  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=2, payload=b"x" * 37)
    run.stop()
    assert run.returncode == 0, run.stderr
    header = run.stdout.splitlines()[0].split()
    len_col = header.index("LEN")
    events = events_with_dumps(run.stdout)
    assert events, run.stdout + run.stderr
    for line, dump in events:
        assert dump.startswith("(struct sk_buff){"), (line, dump[:200])
        lens = re.findall(r"^ \.len = \(unsigned int\)(\d+),$", dump, re.M)  # struct sk_buff's own member
        assert lens == [line.split()[len_col]], (line, lens)
    assert {line.split()[len_col] for line, _ in events} >= {str(8 + 37 + 20)}  # UDP + payload + IPv4 header
    assert left_behind(before) == set()


def test_output_skb_shared_info_and_json_keys(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--output-skb", "--output-skb-shared-info", NO_NF, "--filter-netns", netns.path, FILTER
    )
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    assert events, run.stderr
    for e in events:
        assert str(e["sk_buff"]).startswith("(struct sk_buff){"), e
        shinfo = str(e["skb_shared_info"])
        assert shinfo.startswith("(struct skb_shared_info){") and shinfo.rstrip().endswith("}"), shinfo
        assert re.fullmatch(r"0x[0-9a-f]+", str(e["skb"])), e["skb"]  # the address, as pwru


def test_text_shared_info_alone_follows_the_line(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-skb-shared-info", NO_NF, "--filter-netns", netns.path, FILTER)  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = events_with_dumps(run.stdout)
    assert events and all(d.startswith("(struct skb_shared_info){") for _, d in events), run.stdout
    assert all("(struct sk_buff)" not in d for _, d in events)


def test_set_percpu_buf_bounds_the_text(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--output-skb", "--set-percpu-buf", "512", NO_NF, "--filter-netns", netns.path, FILTER
    )
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    assert events, run.stderr
    for e in events:
        text = str(e["sk_buff"])
        assert text.startswith("(struct sk_buff){") and 400 < len(text) < 512, len(text)  # cut, header excluded


def test_output_skb_cb_shows_the_udp_checksum_coverage(pwru: object, netns: Netns) -> None:
    """UDP's receive path keeps its checksum coverage (the datagram's length) in the control block, in the
    fifth word BPF sees (UDP_SKB_CB's cscov after the IP layer's parameters): the drop at the closed port shows
    it."""
    run: PwruRun = pwru("--output-json", "--output-skb-cb", NO_NF, "--filter-netns", netns.path, FILTER)  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1, payload=b"y" * 21)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    assert events and all(len(e["cb"]) == 5 for e in events), events  # type: ignore[arg-type]
    drops = [e for e in events if "NO_SOCKET" in str(e.get("func", "")) + str(e.get("reason", ""))]
    assert drops, events
    assert drops[0]["cb"][4] & 0xFFFF == 8 + 21, drops[0]  # type: ignore[index]


def test_output_skb_cb_text_column(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-skb-cb", NO_NF, "--filter-netns", netns.path, FILTER)  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", 9999, count=1)
    run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    col = lines[0].index("__sk_buff->cb[]")
    assert lines[1:], run.stderr
    for line in lines[1:]:
        assert re.match(r"\[0x[0-9A-F]{8}(,0x[0-9A-F]{8}){4}\] ", line[col:]), line
