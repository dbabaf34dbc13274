#!/usr/bin/env python3
"""pwru against cilium/pwru in the kernel lab: one VM boot, both tools measured alternately, one table.

The protocol of ``../shared/notes/anchors.md``, per backend, for each tool in turn (ours, pwru, ours, pwru...):

* **start to ready**: from exec to the ready signal (our ``--ready-file``; pwru's "Listening for events" line);
  **attach**: from the "Attaching" line to the "Attached" line of standard error (ours loads its programs in
  between, pwru before);
* **ready to first event**: one datagram sent right after ready, until its first line is in the output file;
* **flood**: ``--datagrams`` UDP datagrams to a closed port on 127.0.0.1 as fast as one sender can, with the
  filter ``udp and dst port 9999`` and the output in a file: events written per second (from the first datagram
  sent to the last line written), written / due (due: datagrams x the events one datagram makes, counted on
  20 slow datagrams first), lost as the tool counts it (pwru counts nothing), the sender's packets per second;
* **detach**: SIGINT to process exit; **peak RSS** of the tool's own process (``wait4``);
* **probe cost**: the same flood with a filter that matches nothing (``host 10.255.255.1``): the sender's rate,
  beside the sender's rate with no tracer at all.

    python3 bench/lab.py [--kernel 6.12] [--backends kprobe-multi] [--pwru /path/to/cilium/pwru] [--runs 2]

It boots the lab kernel (``tests/vm``), runs itself inside with ``--guest``, and prints a table with ratios
(ours / pwru) when ``--pwru`` is given. Everything in one boot, alternating, because emulation is noisy:
compare ratios, not seconds. The tree's bytecode is compiled first (``compileall``), as an installed package's
is, since the guest's file system is read-only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILTER = "udp and dst port 9999"
NOTHING = "host 10.255.255.1"
PORT = 9999
SLOW_DATAGRAMS = 20
MARK = "PWRU-LAB-RESULT "

SENDER = r"""
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic()
for _ in range(n):
    s.sendto(b"x", ("127.0.0.1", 9999))
print(n / (time.monotonic() - t0))
"""


@dataclass
class Run:
    tool: str
    backend: str
    kind: str  # "flood" or "nothing"
    ready: float = 0.0
    attach: float = 0.0
    first_event: float = 0.0
    per_datagram: float = 0.0
    written: int = 0
    due: int = 0
    lost: int = -1  # -1: the tool says nothing
    events_per_s: float = 0.0
    sender_pps: float = 0.0
    detach: float = 0.0
    rss_mb: float = 0.0
    attached: int = 0
    error: str = ""


@dataclass
class Tool:
    name: str
    argv: list[str]
    ours: bool

    def command(self, backend: str, ready: Path, out: Path, expr: str) -> list[str]:
        extra = ["--ready-file", str(ready)] if self.ours else []
        return [*self.argv, "--backend", backend, "--output-file", str(out), *extra, expr]


@dataclass
class Lines:
    """Standard error read on a thread, each line with the time it arrived."""

    seen: list[tuple[float, str]] = field(default_factory=list)

    def at(self, pattern: str) -> float | None:
        for t, line in self.seen:
            if re.search(pattern, line):
                return t
        return None

    def text(self) -> str:
        return "\n".join(line for _, line in self.seen)


def _reader(proc: subprocess.Popen[bytes], lines: Lines) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.seen.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))


def _events(out: Path) -> int:
    """Event lines written so far (the file and any rotated parts; header and stack lines left out)."""
    n = 0
    for p in out.parent.glob(out.name + "*"):
        with p.open("rb") as f:
            n += sum(1 for line in f if line.startswith(b"0x"))
    return n


def _send(n: int) -> float:
    r = subprocess.run([sys.executable, "-c", SENDER, str(n)], capture_output=True, text=True, check=True)
    return float(r.stdout)


def _wait_settled(out: Path, timeout: float, quiet: float = 1.0) -> tuple[int, float]:
    """Wait until the output stops growing for ``quiet`` seconds; (events, time of the last growth)."""
    last, t_last = _events(out), time.monotonic()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.2)
        n = _events(out)
        if n != last:
            last, t_last = n, time.monotonic()
        elif time.monotonic() - t_last >= quiet:
            break
    return last, t_last


def measure(tool: Tool, backend: str, kind: str, datagrams: int, workdir: Path) -> Run:
    import threading

    r = Run(tool.name, backend, kind)
    ready = workdir / f"ready-{tool.name}-{time.monotonic_ns()}"
    out = workdir / f"out-{tool.name}-{time.monotonic_ns()}"
    expr = FILTER if kind == "flood" else NOTHING
    t0 = time.monotonic()
    proc = subprocess.Popen(tool.command(backend, ready, out, expr), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = Lines()
    th = threading.Thread(target=_reader, args=(proc, lines), daemon=True)
    th.start()
    try:
        while True:
            if proc.poll() is not None:
                th.join(2)
                r.error = f"exited with {proc.returncode} before ready: {lines.text()[-400:]}"
                return r
            if (tool.ours and ready.exists()) or (not tool.ours and lines.at(r"Listening for events")):
                break
            if time.monotonic() - t0 > 900:
                r.error = "not ready after 900 s"
                return r
            time.sleep(0.005)
        t_ready = time.monotonic()
        r.ready = t_ready - t0
        a, b = lines.at(r"Attaching"), lines.at(r"Attached")  # pwru prefixes its log lines with the time
        r.attach = (b - a) if a is not None and b is not None else 0.0
        if kind == "flood":
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", PORT))
            while _events(out) == 0 and time.monotonic() - t_ready < 60:
                time.sleep(0.002)
            r.first_event = time.monotonic() - t_ready
            for _ in range(SLOW_DATAGRAMS):
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", PORT))
                time.sleep(0.05)
            slow, _ = _wait_settled(out, 30)
            r.per_datagram = slow / (SLOW_DATAGRAMS + 1)
        t_flood = time.monotonic()
        r.sender_pps = _send(datagrams)
        if kind == "flood":
            total, t_last = _wait_settled(out, 300, quiet=2.0)
            r.written = total - slow
            r.due = round(datagrams * r.per_datagram)
            r.events_per_s = r.written / max(t_last - t_flood, 1e-6)
        t_int = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, status, usage = os.wait4(proc.pid, 0)
        r.detach = time.monotonic() - t_int
        proc.returncode = os.waitstatus_to_exitcode(status)
        r.rss_mb = usage.ru_maxrss / 1024
        th.join(5)
        m = re.search(r"(\d+) lost", lines.text())
        if tool.ours and m:
            r.lost = int(m.group(1))
        m = re.search(r"attached (\d+) in", lines.text())  # our exit line (pwru's says no count)
        if m:
            r.attached = int(m.group(1))
        return r
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in workdir.glob(out.name + "*"):
            p.unlink()


def guest(args: argparse.Namespace) -> int:
    tools = [Tool("ours", [sys.executable, "-m", "pwru"], True)]
    if args.pwru:
        tools.append(Tool("pwru", [args.pwru], False))
    baseline = statistics.median(_send(args.datagrams) for _ in range(3))
    print(MARK + json.dumps({"baseline_pps": baseline}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for kind, runs in (("flood", args.runs), ("nothing", 1)):
                for _ in range(runs):
                    for tool in tools:
                        if not tool.ours and backend not in ("kprobe", "kprobe-multi"):
                            continue  # cilium/pwru has no fentry or tracepoint backend
                        r = measure(tool, backend, kind, args.datagrams, Path(tmp))
                        print(MARK + json.dumps(asdict(r)), flush=True)
    return 0


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}-{format(hi, fmt)}"


def table(results: list[dict[str, object]], baseline: float) -> str:
    rows = [
        ("start to ready (s)", "flood", "ready", ".1f", False),
        ("of which attaching (s)", "flood", "attach", ".2f", False),
        ("ready to first event (s)", "flood", "first_event", ".2f", False),
        ("detach, SIGINT to exit (s)", "flood", "detach", ".2f", False),
        ("events written per second", "flood", "events_per_s", ",.0f", True),
        ("written / due (%)", "flood", "written_pct", ".1f", True),
        ("lost, as counted", "flood", "lost", ",.0f", True),
        ("sender pps, matching flood", "flood", "sender_pps", ",.0f", True),
        ("sender pps, nothing matches", "nothing", "sender_pps", ",.0f", True),
        ("events per datagram", "flood", "per_datagram", ".0f", True),
        ("peak RSS (MB)", "flood", "rss_mb", ".0f", False),
    ]
    out = [f"sender alone: {baseline:,.0f} pps"]
    backends = sorted({str(r["backend"]) for r in results})
    for backend in backends:
        out.append(f"\n| {backend} | ours | cilium/pwru | ours / pwru |")
        out.append("| --- | --- | --- | --- |")
        for label, kind, key, fmt, _higher_better in rows:
            cells = []
            medians = []
            for tool in ("ours", "pwru"):
                vals = []
                for r in results:
                    if r["tool"] != tool or r["backend"] != backend or r["kind"] != kind or r["error"]:
                        continue
                    if key == "written_pct":
                        due = float(r["due"])  # type: ignore[arg-type]
                        vals.append(100 * float(r["written"]) / due if due else 0.0)  # type: ignore[arg-type]
                    elif key == "lost" and int(r["lost"]) < 0:  # type: ignore[call-overload]
                        continue
                    else:
                        vals.append(float(r[key]))  # type: ignore[arg-type]
                cells.append(_span(vals, fmt) if vals else ("none" if key == "lost" and tool == "pwru" else "-"))
                medians.append(statistics.median(vals) if vals else None)
            a, b = medians
            ratio = f"{a / b:.2f}x" if a is not None and b else ""
            out.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    errors = [r for r in results if r["error"]]
    for r in errors:
        out.append(f"error: {r['tool']} {r['backend']} {r['kind']}: {r['error']}")
    return "\n".join(out)


def host(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from tests.vm.runner import run_in_vm

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--guest", "--backends", args.backends,
           "--runs", str(args.runs), "--datagrams", str(args.datagrams)]  # fmt: skip
    if args.pwru:
        cmd += ["--pwru", str(Path(args.pwru).resolve())]
    results: list[dict[str, object]] = []
    baseline = 0.0

    def on_line(line: str) -> None:
        nonlocal baseline
        i = line.find(MARK)
        if i < 0:
            if args.verbose:
                print(line, file=sys.stderr)
            return
        d = json.loads(line[i + len(MARK) :])
        if "baseline_pps" in d:
            baseline = float(d["baseline_pps"])
        else:
            results.append(d)
            line = f"  {d['tool']} {d['backend']} {d['kind']}: ready {d['ready']:.1f} s, "
            line += f"{d['events_per_s']:,.0f} events/s, detach {d['detach']:.2f} s {d['error']}"
            print(line, file=sys.stderr)

    # No PYTHONPATH: the package comes from the virtual environment, as installed (each sys.path entry costs file
    # system round trips per import, slow in the guest)
    r = run_in_vm(args.kernel, cmd, timeout=args.timeout, cwd=REPO, on_line=on_line)
    print(f"kernel {args.kernel} (QEMU TCG, {os.environ.get('PWRU_VM_SMP', '2')} vCPUs), "
          f"{args.datagrams:,} datagrams per flood, {args.runs} flood runs per tool, alternating")  # fmt: skip
    print(table(results, baseline))
    if r.timed_out or r.exit_code != 0:
        print(f"the guest job failed (exit {r.exit_code}, timed out: {r.timed_out})", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="6.12", help="lab kernel line (tests/vm/kernels.py)")
    ap.add_argument("--backends", default="kprobe-multi", help="comma-separated")
    ap.add_argument("--pwru", help="a cilium/pwru binary to measure alternately with ours")
    ap.add_argument("--runs", type=int, default=2, help="flood runs per tool and backend")
    ap.add_argument("--datagrams", type=int, default=20_000)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--verbose", action="store_true", help="echo the guest's console")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/lab.py: run as root")
    return guest(args) if args.guest else host(args)


if __name__ == "__main__":
    raise SystemExit(main())
