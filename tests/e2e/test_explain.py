"""--output-explain end to end: a UDP datagram to a closed port in a namespace made here is dropped with
NO_SOCKET, and the drop's line is followed by its explanation (text), or carries it (JSON)."""

from __future__ import annotations

import random

import pytest

from .conftest import Netns, PwruRun, udp_send

pytestmark = pytest.mark.root

PORT = random.randrange(20000, 60000)
NO_SOCKET = "SKB_DROP_REASON_NO_SOCKET"


def test_text_line_after_the_drop(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-explain", "--filter-netns", netns.path, f"udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    udp_send(netns, "127.0.0.1", PORT)
    run.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    drops = [i for i, ln in enumerate(lines) if NO_SOCKET in ln]
    assert drops, run.stdout
    for i in drops:
        assert lines[i + 1].startswith("  explain: no socket wanted it: nothing listens on that UDP port"), lines
    explained = [ln for ln in lines if ln.startswith("  explain: ")]
    assert len(explained) == len(drops)  # only drops are explained
    assert f"{len(lines) - 1 - len(explained)} events printed" in run.stderr  # an explanation is not an event


def test_json_key(pwru: object, netns: Netns) -> None:
    run: PwruRun = pwru("--output-json", "--output-explain", "--filter-netns", netns.path,  # type: ignore[operator]
                        f"udp and dst port {PORT}")  # fmt: skip
    run.start()
    udp_send(netns, "127.0.0.1", PORT)
    run.stop()
    events = run.json_events()
    drops = [e for e in events if e.get("reason") == NO_SOCKET]
    assert drops, run.stdout
    for d in drops:
        assert isinstance(d["explanation"], dict) and "ss -lnup" in d["explanation"]["check"]
    assert all("explanation" not in e for e in events if "reason" not in e)
