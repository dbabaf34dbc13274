"""--output-pcap end to end: real packets in namespaces made here, the pcapng read back by tshark (file and
stream), frames against the events pwru printed, known payload bytes, comments, interface blocks."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import SLOW, Netns, PwruRun, left_behind, neighbours_known, pwru_bpf_objects, udp_send, wait_ready

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)"),
]

#: A port nothing else on the machine uses (other tests send to 9999), and a payload no other packet carries.
PORT = 39117
FIELDS = ("frame.comment", "udp.payload", "frame.interface_name", "frame.interface_description", "frame.len",
          "frame.cap_len", "frame.protocols", "ip.len", "ipv6.plen", "eth.src", "ipv6.dst")  # fmt: skip


def payload() -> bytes:
    return b"pwru-pcap-" + uuid.uuid4().hex.encode()


def tshark(path: str, stdin: bytes | None = None) -> list[dict[str, str]]:
    cmd = ["tshark", "-r", path, "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in FIELDS:
        cmd += ["-e", f]
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60 * SLOW, check=False)
    assert r.returncode == 0, r.stderr.decode()
    return [dict(zip(FIELDS, line.split("|"), strict=True)) for line in r.stdout.decode().splitlines()]


def comment_fields(comment: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in comment.split(" "))


def printed(stderr: str) -> int:
    m = re.search(r"pwru: (\d+) events printed", stderr)
    assert m, stderr
    return int(m.group(1))


def test_pcap_file_has_one_frame_per_event_with_its_bytes_and_comment(
    pwru: object, netns: Netns, tmp_path: Path
) -> None:
    pcap = tmp_path / "out.pcapng"
    data = payload()
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-json", "--output-pcap", str(pcap), "--filter-netns", netns.path, f"udp and dst port {PORT}"
    )
    run.start()
    udp_send(netns, "127.0.0.1", PORT, count=2, payload=data)
    run.stop()
    assert run.returncode == 0, run.stderr
    events = run.json_events()
    frames = tshark(str(pcap))
    assert events and len(frames) == len(events) == printed(run.stderr), run.stderr
    for event, frame in zip(events, frames, strict=True):  # both in ring order
        c = comment_fields(frame["frame.comment"])
        assert c["func"] == str(event["func"]).split("(")[0], (c, event)
        assert c["skb"] == event["skb"]
        assert c["pid"] == str(event["process"]).rsplit(":", 1)[1]
        assert c["comm"].startswith("python")
        assert c["netns"] == str(netns.inode) == str(event["netns"])
        if "reason" in event:
            assert c["reason"] == event["reason"]
        # every frame of this datagram holds its payload
        assert frame["udp.payload"] == data.hex(), frame
        assert int(frame["frame.len"]) == int(frame["frame.cap_len"])  # well under the default snap length
        assert frame["frame.interface_description"].startswith(f"netns {netns.inode} ifindex ")
    drops = [f for f in frames if comment_fields(f["frame.comment"]).get("reason") == "SKB_DROP_REASON_NO_SOCKET"]
    assert drops, [f["frame.comment"] for f in frames]
    assert "location=" in drops[0]["frame.comment"]
    assert "lo" in {f["frame.interface_name"] for f in frames}


def test_pcap_stream_on_stdout_into_tshark_with_text_to_a_file(netns: Netns, tmp_path: Path, backend: str) -> None:
    ready, text, err = tmp_path / "ready", tmp_path / "events.txt", tmp_path / "stderr"
    data = payload()
    before = pwru_bpf_objects()
    cmd = [sys.executable, "-m", "pwru", "--backend", backend, "--ready-file", str(ready), "--output-pcap", "-",
           "--output-file", str(text), "--filter-netns", netns.path, f"udp and dst port {PORT}"]  # fmt: skip
    with open(err, "w") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        assert proc.stdout is not None
        reader = subprocess.Popen(["tshark", "-r", "-", "-w", str(tmp_path / "copy.pcapng")], stdin=proc.stdout,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        proc.stdout.close()  # tshark holds the pipe now
        try:
            wait_ready(proc, ready)  # type: ignore[arg-type]
            udp_send(netns, "127.0.0.1", PORT, count=3, payload=data)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60 * SLOW)
            _, terr = reader.communicate(timeout=60 * SLOW)
    stderr = err.read_text()
    assert proc.returncode == 0, stderr
    assert reader.returncode == 0, terr.decode()
    frames = tshark(str(tmp_path / "copy.pcapng"))  # what tshark read from the stream, as it wrote it back
    lines = text.read_text().splitlines()
    assert lines[0].startswith("SKB ") and len(lines) > 1
    assert len(frames) == len(lines) - 1 == printed(stderr), stderr
    assert all(f["udp.payload"] == data.hex() for f in frames)
    skbs = {ln.split()[0] for ln in lines[1:]}
    assert {comment_fields(f["frame.comment"])["skb"] for f in frames} == skbs
    assert not left_behind(before)


def test_pcap_stream_alone_keeps_stdout_for_the_frames(netns: Netns, tmp_path: Path, backend: str) -> None:
    """With --output-pcap - and no --output-file the text lines are not written: stdout is pcapng only."""
    ready, out, err = tmp_path / "ready", tmp_path / "stdout", tmp_path / "stderr"
    cmd = [sys.executable, "-m", "pwru", "--backend", backend, "--ready-file", str(ready), "--output-pcap", "-",
           "--filter-netns", netns.path, f"udp and dst port {PORT}"]  # fmt: skip
    data = payload()
    with open(out, "wb") as outf, open(err, "w") as errf:
        proc = subprocess.Popen(cmd, stdout=outf, stderr=errf)
        try:
            wait_ready(proc, ready)  # type: ignore[arg-type]
            udp_send(netns, "127.0.0.1", PORT, count=1, payload=data)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60 * SLOW)
    stderr = err.read_text()
    assert proc.returncode == 0, stderr
    raw = out.read_bytes()
    assert raw.startswith(b"\n\r\r\n") and b"SKB " not in raw  # a section header block first, no text lines
    frames = tshark(str(out))  # tshark refuses a file with anything but blocks in it
    assert len(frames) == printed(stderr) > 0
    assert all(f["udp.payload"] == data.hex() for f in frames)


def test_line_limit_counts_frames_too(pwru: object, netns: Netns, tmp_path: Path) -> None:
    """The event that reaches --output-limit-lines has its frame (its packet record came before it)."""
    pcap = tmp_path / "limited.pcapng"
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-limit-lines", "5", "--output-pcap", str(pcap), "--filter-netns", netns.path,
        f"udp and dst port {PORT}",
    )  # fmt: skip
    run.start()
    udp_send(netns, "127.0.0.1", PORT, count=2, payload=payload())
    run.wait()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()[1:]
    frames = tshark(str(pcap))
    assert len(lines) == len(frames) == printed(run.stderr) == 5
    assert [ln.split()[0] for ln in lines] == [comment_fields(f["frame.comment"])["skb"] for f in frames]


def test_snaplen_truncates_in_the_kernel_and_keeps_the_original_length(
    pwru: object, netns: Netns, tmp_path: Path
) -> None:
    pcap = tmp_path / "short.pcapng"
    big = payload() * 30  # ~1.2 kB
    run: PwruRun = pwru(  # type: ignore[operator]
        "--output-pcap", str(pcap), "--output-pcap-snaplen", "64", "--filter-netns", netns.path,
        f"udp and dst port {PORT}",
    )  # fmt: skip
    run.start()
    udp_send(netns, "127.0.0.1", PORT, count=1, payload=big)
    run.stop()
    assert run.returncode == 0, run.stderr
    frames = tshark(str(pcap))
    assert frames and len(frames) == printed(run.stderr)
    for f in frames:
        assert f["frame.cap_len"] == "64", f
        eth = f["frame.protocols"].startswith("eth")
        assert int(f["frame.len"]) == int(f["ip.len"]) + (14 if eth else 0) == len(big) + 28 + (14 if eth else 0)


def test_interfaces_name_the_devices_and_netns_across_a_veth_pair(
    pwru: object, veth_pair: tuple[Netns, Netns], tmp_path: Path
) -> None:
    a, b = veth_pair
    neighbours_known(a, b)
    pcap = tmp_path / "veth.pcapng"
    data = payload()
    run: PwruRun = pwru("--output-pcap", str(pcap), f"udp and dst port {PORT}")  # type: ignore[operator]
    run.start()
    udp_send(a, "10.99.0.2", PORT, count=1, payload=data)
    udp_send(a, "fd99::2", PORT, count=1, payload=data)
    run.stop()
    assert run.returncode == 0, run.stderr
    frames = [f for f in tshark(str(pcap)) if f["udp.payload"] == data.hex()]  # not other tests' packets
    by_dev = {(f["frame.interface_name"], f["frame.interface_description"].split(" ifindex")[0]) for f in frames}
    assert ("a0", f"netns {a.inode}") in by_dev and ("b0", f"netns {b.inode}") in by_dev, by_dev
    a0_mac = a.exec("cat", "/sys/class/net/a0/address").stdout.strip()
    on_b0 = [f for f in frames if f["frame.interface_name"] == "b0" and f["eth.src"]]
    assert on_b0 and all(f["eth.src"] == a0_mac for f in on_b0)
    v6 = [f for f in frames if f["ipv6.dst"] == "fd99::2"]
    assert any(f["frame.protocols"].startswith("ipv6") for f in v6), v6  # raw IPv6 before the MAC header is set
    assert any(f["frame.protocols"].startswith("eth") for f in v6)
