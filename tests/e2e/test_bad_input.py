"""The bad-input catalogue: every flag's wrong values, unknown and conflicting flags, bad paths and filters, and a
hostile environment (closed stdout/stderr, too few descriptors, no libpcap, no privileges), each run as a real
pwru process.

Every case asserts the same contract (docs/internals.md, "Errors"): the exit status (2 for bad input, 1 for an
environment problem), exactly one line on stderr (``pwru: ...``, naming the culprit), nothing on stdout, no
traceback and no "internal error", and nothing of pwru's left in the kernel. A case marked ``fast`` must be
refused before anything is loaded: it costs less than :data:`FAST_CPU` seconds of CPU (start-up, flag checks and
at most one parse of the kernel's BTF), where loading and attaching cost more. Cases that cannot attach run
:data:`PARALLEL` at a time, which keeps the whole file well under a minute.

A case of a known defect not fixed yet carries ``xfail`` (strict) with its reason: it states the behaviour the
fix must have, and the fix drops the mark. Every case runs with a 2 GB address-space limit and a timeout, so that
a regression (``--kernel-btf /dev/zero`` read without bound, a backtracking ``--filter-func``, both issue 15)
cannot take the machine down.
"""

from __future__ import annotations

import glob
import os
import re
import resource
import shlex
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import SLOW, Measured, left_behind, pwru_bpf_objects, run_cli, run_measured

pytestmark = pytest.mark.root

#: CPU seconds (user + system, times PWRU_TEST_SLOWDOWN) within which a bad input refused before loading has
#: ended. CPU time rather than wall time: the machine may be busy (the kernel lab's emulator takes both CPUs of
#: the development machine), which stretches wall time but not CPU time. Start-up and a refused flag cost about
#: 0.15 s, one parse of the kernel's BTF 0.4-0.6 s; loading and attaching the probes costs 1-1.5 s.
FAST_CPU = 0.9
#: Wall seconds a case is given before it is killed: a fast one, one that may get as far as attaching.
FAST_WALL, SLOW_WALL = 20.0, 30.0
#: Cases run at once (the ones that cannot attach).
PARALLEL = 4
#: Companion flags for an empty value: should the empty value be taken as "unset", the run ends at exit 1 after
#: reading the kernel's BTF (no function matches), instead of tracing until the timeout.
NO_MATCH = ("--filter-func", "nomatch_pwru_catalogue")

@dataclass(frozen=True)
class Case:
    """One bad input. ``args`` may name the catalogue's files as ``{d}/name`` (see :func:`files`)."""

    id: str
    args: tuple[str, ...]
    code: int = 2
    needle: str = ""  # text the one stderr line must contain (default: the first --flag of args)
    fast: bool = True  # refused before loading anything
    xfail: str = ""  # why the case fails today (a known defect; strict)
    prefix: tuple[str, ...] = ()  # a command pwru runs under
    closed: tuple[int, ...] = ()  # standard descriptors closed in pwru (1, 2)
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)
    unavailable: str = ""  # the case applies only when this backend is unavailable on this kernel
    forbid: tuple[str, ...] = ()  # text the line must not contain
    check: Callable[[str], str] | None = None  # the line -> what is wrong with it ("" when nothing)
    may_attach: bool = False  # the unfixed code attaches before failing: run alone, leftovers checked per case
    timeout: float = 0.0  # wall seconds before it is killed (0: FAST_WALL or SLOW_WALL)

    def limit(self) -> float:
        return self.timeout or (FAST_WALL if self.fast else SLOW_WALL)

    def expected_needle(self) -> str:
        if self.needle:
            return self.needle
        return next((a.split("=")[0] for a in self.args if a.startswith("--")), "")


def c(id_: str, *args: str, **kw: object) -> Case:
    return Case(id_, args, **kw)  # type: ignore[arg-type]


def _libpcap_files() -> list[str]:
    """Every libpcap the dynamic loader could find: the ones in its cache, and those in the usual directories."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    paths = [ln.split("=>")[-1].strip() for ln in out.splitlines() if "libpcap.so" in ln]
    for d in ("/lib", "/usr/lib", "/usr/local/lib", "/lib64", "/usr/lib64"):
        paths += glob.glob(f"{d}/libpcap.so*") + glob.glob(f"{d}/*-linux-gnu/libpcap.so*")
    return sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})


#: Stands for the command that runs pwru in a private mount namespace where every libpcap file reads as empty
#: (:func:`_without_libpcap` builds it when the case runs).
WITHOUT_LIBPCAP = ("<without libpcap>",)


def _without_libpcap(libs: list[str]) -> tuple[str, ...]:
    binds = "; ".join(f"mount --bind /dev/null {shlex.quote(f)} || exit 99" for f in libs)
    return ("unshare", "-m", "sh", "-c", f'{binds}; exec "$@"', "sh")


#: Stands for the command that runs pwru where the kubernetes client's package directory is an empty tmpfs (a
#: private mount namespace): ``pwru k8s`` then finds no client, as without the ``k8s`` extra.
WITHOUT_KUBERNETES = ("<without kubernetes>",)


def _without_kubernetes() -> tuple[str, ...] | None:
    import importlib.util

    spec = importlib.util.find_spec("kubernetes")
    if spec is None or not spec.submodule_search_locations:
        return None
    where = shlex.quote(next(iter(spec.submodule_search_locations)))
    return ("unshare", "-m", "sh", "-c", f'mount -t tmpfs none {where} || exit 99; exec "$@"', "sh")


def _names_tried_once(line: str) -> str:
    """The libraries a "(tried a, b, ...)" list names, each once."""
    m = re.search(r"tried ([^)]*)\)", line)
    names = [n.strip() for n in m.group(1).split(",")] if m else []
    return f"a library named twice in {names}" if len(names) != len(set(names)) else ""


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")

CASES: tuple[Case, ...] = (
    # --- unknown flags, missing values, words ---
    c("unknown-flag", "--nosuchflag", needle="--nosuchflag: unknown flag"),
    c("unknown-short", "-x", needle="-x: unknown flag"),
    c("typo-flag", "--filter-funcs", "x", needle="--filter-funcs: unknown flag"),
    c("three-dashes", "---backend", "tracepoint", needle="unknown flag"),
    c("empty-flag-name", "--=x", needle="unknown flag"),
    c("negated-non-bool", "--no-backend", needle="--no-backend: unknown flag"),
    c("negated-with-value", "--no-output-json=true"),
    c("missing-value-at-end", "--output-limit-lines", needle="needs a value"),
    c("missing-value-before-flag", "--backend", "--debug", needle="--backend: needs a value"),
    c("dash-as-filter", "-", needle="invalid pcap filter"),
    # --- booleans ---
    c("bool-word", "--output-meta=yes"),
    c("bool-number", "--output-json=2"),
    c("bool-track-skb", "--filter-track-skb=maybe"),
    c("bool-debug", "--debug=2"),
    c("bool-help", "--help=maybe"),
    c("bool-version", "--version=2"),
    c("bool-all-kmods", "--all-kmods=all"),
    c("bool-list-funcs", "--list-funcs=x"),
    c("bool-compress", "--output-file-compress=gzip"),
    # --- numbers ---
    c("track-max-word", "--filter-track-skb-max", "abc"),
    c("track-max-negative", "--filter-track-skb-max", "-1"),
    c("track-max-zero", "--filter-track-skb-max", "0"),
    c("track-max-above", "--filter-track-skb-max", "16777217"),
    c("track-max-huge", "--filter-track-skb-max", "99999999999999999999999999"),
    c("track-max-fraction", "--filter-track-skb-max", "1.5"),
    c("track-max-plus", "--filter-track-skb-max", "+5"),  # Go's ParseUint, as pwru: no sign
    c("track-max-bad-hex", "--filter-track-skb-max", "0x1g"),
    c("percpu-buf-zero", "--set-percpu-buf", "0", needle="out of range"),
    c("percpu-buf-small", "--set-percpu-buf", "63", needle="out of range (64..32768 bytes)"),
    c("percpu-buf-above-percpu-limit", "--set-percpu-buf", "32769", needle="out of range"),
    c("percpu-buf-word", "--set-percpu-buf", "4k"),
    c("netns-names-max-length-above-uint8", "--netns-names-max-length", "256", needle="out of range"),
    c("netns-names-max-length-word", "--netns-names-max-length", "long"),
    c("kprobe-batch-zero", "--filter-kprobe-batch", "0", needle="must be greater than 0"),
    c("kprobe-batch-word", "--filter-kprobe-batch", "ten"),
    c("kprobe-batch-negative", "--filter-kprobe-batch", "-1"),
    c("limit-bad-octal", "--output-limit-lines", "08"),
    c("limit-underscores", "--output-limit-lines", "1__000"),
    c("limit-word", "--output-limit-lines", "x"),
    c("limit-negative", "--output-limit-lines", "-5"),
    c("limit-2^64", "--output-limit-lines", "18446744073709551616"),
    c("journey-bool-word", "--output-journey=maybe"),
    c("journey-timeout-zero", "--output-journey-timeout", "0"),
    c("journey-timeout-word", "--output-journey-timeout", "1s"),
    c("journey-timeout-above", "--output-journey-timeout", "3600001"),
    c("journey-max-zero", "--output-journey-max", "0"),
    c("journey-max-negative", "--output-journey-max", "-1"),
    c("journey-max-above", "--output-journey-max", "1048577"),
    c("journey-max-hops-zero", "--output-journey-max-hops", "0"),
    c("journey-max-hops-above", "--output-journey-max-hops", "65537"),
    c("max-size-zero", "--output-file-max-size", "0"),
    c("max-size-word", "--output-file-max-size", "x"),
    c("max-size-negative", "--output-file-max-size", "-1"),
    c("max-backups-word", "--output-file-max-backups", "x"),
    c("max-backups-negative", "--output-file-max-backups", "-1"),
    c("max-age-negative", "--output-file-max-age", "-3"),
    c("max-age-fraction", "--output-file-max-age", "1.5"),
    c("summary-interval-zero", "--summary-interval", "0"),
    c("summary-interval-negative", "--summary-interval", "-1"),
    c("summary-interval-word", "--summary-interval", "x"),
    c("summary-interval-empty", "--summary-interval", ""),
    c("summary-interval-fraction", "--summary-interval", "0.5"),
    c("ring-size-zero", "--output-ring-size", "0"),
    c("ring-size-not-power-of-two", "--output-ring-size", "24"),
    c("ring-size-word", "--output-ring-size", "x"),
    c("ring-size-huge", "--output-ring-size", "4194304"),
    c("summary-limit-lines", "--summary", "--output-limit-lines", "3", needle="--summary-events"),
    c("summary-bool-value", "--summary=maybe"),
    # --- choices ---
    c("timestamp-unknown", "--timestamp", "sometimes"),
    c("timestamp-case", "--timestamp", "NONE"),
    c("timestamp-empty", "--timestamp", ""),
    c("backend-unknown", "--backend", "nope"),
    c("backend-case", "--backend", "KPROBE"),
    c("netfilter-unknown", "--filter-trace-netfilter", "maybe"),
    c("kprobe-unavailable", "--backend", "kprobe", unavailable="kprobe"),
    c("fentry-unavailable", "--backend", "fentry", unavailable="fentry"),
    c("trace-tc-without-fentry", "--filter-trace-tc", code=1, needle="needs fentry/fexit", unavailable="fentry"),
    c("trace-xdp-without-fentry", "--filter-trace-xdp", code=1, needle="--filter-trace-xdp needs fentry",
      unavailable="fentry"),
    c("trace-tc-bool-value", "--filter-trace-tc=maybe"),
    c("bpfmap-on-tracepoint", "--output-bpfmap", "--backend", "tracepoint", code=1,
      needle="--output-bpfmap needs kprobes or fentry"),
    c("kprobe-multi-unavailable", "--backend", "kprobe-multi", unavailable="kprobe-multi"),
    # --- --filter-func (RE2, whole name) ---
    c("func-unbalanced", "--filter-func", "("),
    c("func-bad-class", "--filter-func", "[a-"),
    c("func-nothing-to-repeat", "--filter-func", "*"),
    c("func-matches-nothing", "--filter-func", "nomatch_.*", code=1),
    c("func-backreference", "--filter-func", "(?P<a>x)(?P=a)"),
    c("func-lookahead", "--filter-func", "(?=x)"),
    c("func-repeat-over-1000", "--filter-func", "x{1001}"),
    c("func-backtracking", "--filter-func", r"(.*.*)*x\d", code=1, timeout=8),  # issue 15: spun for minutes
    # --- --filter-netns ---
    c("netns-relative", "--filter-netns", "relative/path"),
    c("netns-inode-zero", "--filter-netns", "inode:0"),
    c("netns-inode-word", "--filter-netns", "inode:abc"),
    c("netns-inode-empty", "--filter-netns", "inode:"),
    c("netns-inode-2^32", "--filter-netns", "inode:4294967296"),
    c("netns-inode-negative", "--filter-netns", "inode:-1"),
    c("netns-missing", "--filter-netns", "/nonexistent/ns"),
    c("netns-dead-process", "--filter-netns", "/proc/999999999/ns/net"),
    c("netns-regular-file", "--filter-netns", "/etc/passwd"),
    c("netns-directory", "--filter-netns", "{d}/adir"),
    c("netns-fifo", "--filter-netns", "{d}/fifo"),  # blocked in open() for ever before netns.py opened O_NONBLOCK
    c("netns-dev-null", "--filter-netns", "/dev/null"),
    c("netns-pid-namespace", "--filter-netns", "/proc/self/ns/pid", needle="not a network namespace"),
    # --- --filter-mark ---
    c("mark-0x", "--filter-mark", "0x"),
    c("mark-negative", "--filter-mark", "-1"),
    c("mark-33-bits", "--filter-mark", "0x100000000"),
    c("mark-mask-33-bits", "--filter-mark", "0xa00/0x1ffffffff"),
    c("mark-three-parts", "--filter-mark", "1/2/3"),
    c("mark-empty-mask", "--filter-mark", "0xa00/"),
    c("mark-empty-mark", "--filter-mark", "/0xf00"),
    c("mark-bad-hex", "--filter-mark", "0xzz"),
    c("mark-word", "--filter-mark", "abc"),
    # --- --filter-ifname ---
    c("ifname-unknown", "--filter-ifname", "nosuchif0"),
    c("ifname-too-long", "--filter-ifname", "a" * 21),
    c("ifname-slash", "--filter-ifname", "a/b"),
    c("ifname-blank", "--filter-ifname", " "),
    c("ifname-inode-netns", "--filter-ifname", "lo", "--filter-netns", "inode:12345"),
    c("ifname-bad-netns", "--filter-ifname", "lo", "--filter-netns", "/etc/passwd", needle="--filter-netns"),
    # --- pcap filters ---
    c("pcap-syntax", "tcp port", needle="invalid pcap filter"),
    c("pcap-dangling-and", "udp and", needle="invalid pcap filter"),
    c("pcap-rejects-all", "ip6 and arp", needle="rejects all packets"),
    c("pcap-bad-address", "host 300.1.1.1", needle="invalid pcap filter"),
    c("pcap-bad-port", "tcp port 99999", needle="invalid pcap filter"),
    c("pcap-bad-mask", "net 10.0.0.0/33", needle="invalid pcap filter"),
    c("pcap-unknown-proto", r"ether proto \nosuch", needle="invalid pcap filter"),
    c("pcap-open-paren", "(", "udp", needle="invalid pcap filter"),
    c("pcap-words-split", "tcp[tcpflags]", "&", "tcp-syn", "!=", "0", "and", needle="invalid pcap filter"),
    # --- tunnel filters ---
    c("tunnel-l2-syntax", "--filter-tunnel-pcap-l2", "tcp port"),
    c("tunnel-l2-rejects-all", "--filter-tunnel-pcap-l2", "ip6 and arp"),
    c("tunnel-l3-ether", "--filter-tunnel-pcap-l3", "ether host 1:2:3:4:5:6"),
    c("tunnel-l3-word", "--filter-tunnel-pcap-l3", "bogus"),
    # --- C expressions over skb ---
    c("skb-expr-member", "--filter-skb-expr", "skb->nope == 1", needle="column 6: struct sk_buff has no member 'nope'"),
    c("skb-expr-syntax", "--filter-skb-expr", "skb->len ==", needle="column 12: expected an operand"),
    c("xdp-metadata-member", "--output-xdp-metadata", "xdp->nope", needle="struct xdp_buff has no member 'nope'"),
    c("xdp-expr-member", "--filter-xdp-expr", "xdp->nope == 1", needle="struct xdp_buff has no member 'nope'"),
    c("skb-expr-type", "--filter-skb-expr", 'skb->len == "x"', needle="a string compares with a char array"),
    c("skb-expr-root", "--filter-skb-expr", "sk->len", needle="unknown name 'sk'"),
    c("skb-expr-division", "--filter-skb-expr", "skb->len / 2", needle="division is not supported"),
    c("skb-expr-empty", "--filter-skb-expr", "", needle="--filter-skb-expr: empty value"),
    c("skb-metadata-struct", "--output-skb-metadata", "skb->dev->nd_net", needle="is a struct, not a value"),
    c("skb-metadata-empty-item", "--output-skb-metadata", "skb->mark,", needle="empty expression"),
    c("skb-metadata-too-many", "--output-skb-metadata", ",".join(["skb->mark"] * 17), needle="at most 16"),
    # --- output and ready files ---
    c("output-missing-dir", "--output-file", "/nonexistent/dir/out"),
    c("output-directory", "--output-file", "{d}/adir"),
    # (issue 15: these were found only after attaching, when the first event was written)
    c("output-dev-full", "--output-file", "{d}/full-out", may_attach=True),
    c("output-proc-file", "--output-file", "/proc/version", may_attach=True),
    c("output-cannot-create", "--output-file", "/proc/pwru-catalogue.out", may_attach=True),
    c("ready-missing-dir", "--ready-file", "/nonexistent/dir/r"),
    c("ready-directory", "--ready-file", "{d}/adir"),
    c("ready-proc-file", "--ready-file", "/proc/version", may_attach=True),
    c("ready-dev-full", "--ready-file", "{d}/full-ready", may_attach=True),
    c("ready-cannot-create", "--ready-file", "/proc/pwru-catalogue.ready", may_attach=True),
    # --- --output-pcap ---
    c("pcap-snaplen-zero", "--output-pcap", "{d}/p.pcapng", "--output-pcap-snaplen", "0", needle="-snaplen: 0"),
    c("pcap-snaplen-negative", "--output-pcap-snaplen", "-1"),
    c("pcap-snaplen-huge", "--output-pcap-snaplen", "65536", needle="out of range (1..16384)"),
    c("pcap-snaplen-enormous", "--output-pcap-snaplen", "99999999999999999999999"),
    c("pcap-snaplen-word", "--output-pcap-snaplen", "lots"),
    c("pcap-missing-dir", "--output-pcap", "/nonexistent/dir/p.pcapng"),
    c("pcap-directory", "--output-pcap", "{d}/adir"),
    c("pcap-proc-file", "--output-pcap", "/proc/version"),
    c("pcap-cannot-create", "--output-pcap", "/proc/pwru-catalogue.pcapng"),
    c("pcap-dev-full", "--output-pcap", "{d}/full-out", needle="--output-pcap"),
    c("pcap-same-as-output-file", "--output-pcap", "{d}/same.out", "--output-file", "{d}/same.out"),
    c("pcap-stdout-closed", "--output-pcap", "-", closed=(1,), needle="standard output is closed"),
    c("empty-pcap", "--output-pcap", "", *NO_MATCH, needle="--output-pcap"),
    # --- --output-raw ---
    c("raw-missing-dir", "--output-raw", "/nonexistent/dir/r.raw"),
    c("raw-directory", "--output-raw", "{d}/adir"),
    c("raw-with-journey", "--output-raw", "{d}/r.raw", "--output-journey", needle="leave --output-journey out"),
    c("raw-with-pcap", "--output-raw", "{d}/r.raw", "--output-pcap", "{d}/p.pcapng", needle="--output-pcap"),
    c("raw-with-summary", "--output-raw", "{d}/r.raw", "--summary", needle="leave --summary out"),
    c("raw-with-bpfmap", "--output-raw", "{d}/r.raw", "--output-bpfmap", needle="--output-raw with --output-bpfmap"),
    # --- --kernel-btf ---
    c("btf-missing", "--kernel-btf", "/nonexistent"),
    c("btf-directory", "--kernel-btf", "{d}/adir"),
    c("btf-text-file", "--kernel-btf", "/etc/passwd", needle="kernel BTF"),
    c("btf-truncated", "--kernel-btf", "{d}/truncated.btf", needle="kernel BTF"),
    c("btf-dev-null", "--kernel-btf", "/dev/null"),
    c("btf-unreadable", "--kernel-btf", "/proc/self/mem", needle="kernel BTF"),
    c("btf-list-funcs", "--list-funcs", "--kernel-btf", "/etc/passwd", needle="kernel BTF"),
    c("btf-fifo", "--kernel-btf", "{d}/fifo", timeout=8),  # issue 15: blocked in open() for ever
    c("btf-dev-zero", "--kernel-btf", "/dev/zero", timeout=15),  # issue 15: read until the machine ran out
    # --- --kmods, --filter-non-skb-funcs ---
    c("kmods-unknown", "--kmods", "nosuchmod_xyz"),
    c("kmods-one-unknown", "--kmods", "veth,nosuchmod_xyz", needle="nosuchmod_xyz"),
    c("kmods-path", "--kmods", "../../etc/passwd"),
    c("non-skb-unknown", "--filter-non-skb-funcs", "nosuchfunc_xyz"),
    c("non-skb-one-unknown", "--filter-non-skb-funcs", "kfree_skbmem,nosuchfunc_xyz", needle="nosuchfunc_xyz"),
    # --- conflicting flags ---
    c("non-skb-with-tracepoint", "--filter-non-skb-funcs", "kfree_skbmem", "--backend", "tracepoint", code=1),
    c("netfilter-inode-netns", "--filter-trace-netfilter", "true", "--filter-netns", "inode:12345"),
    Case("two-listings", ("--list-funcs", "--list-backends"), needle="--list"),
    # --- empty values: refused, never read as "unset" ---
    c("empty-backend", "--backend", "", *NO_MATCH, needle="--backend"),
    c("empty-mark", "--filter-mark", "", *NO_MATCH, needle="--filter-mark"),
    c("empty-ifname", "--filter-ifname", "", *NO_MATCH, needle="--filter-ifname"),
    c("empty-kmods", "--kmods", "", *NO_MATCH, needle="--kmods"),
    c("comma-kmods", "--kmods", ",", *NO_MATCH, needle="--kmods"),
    c("empty-netns", "--filter-netns", "", *NO_MATCH, needle="--filter-netns"),
    c("empty-netfilter", "--filter-trace-netfilter", "", *NO_MATCH, needle="--filter-trace-netfilter"),
    c("empty-non-skb", "--filter-non-skb-funcs", "", *NO_MATCH, needle="--filter-non-skb-funcs"),
    c("empty-tunnel-l2", "--filter-tunnel-pcap-l2", "", *NO_MATCH, needle="--filter-tunnel-pcap-l2"),
    c("empty-tunnel-l3", "--filter-tunnel-pcap-l3", "", *NO_MATCH, needle="--filter-tunnel-pcap-l3"),
    c("empty-output-file", "--output-file", "", *NO_MATCH, needle="--output-file"),
    c("empty-kernel-btf", "--kernel-btf", "", *NO_MATCH, needle="--kernel-btf"),
    c("empty-ready-file", "--ready-file", "", *NO_MATCH, needle="--ready-file"),
    c("empty-func", "--list-funcs", "--filter-func", "", needle="--filter-func"),  # else: lists everything
    # --- the environment ---
    c("not-root-run", "udp", code=1, prefix=NOBODY, needle="CAP_"),
    c("not-root-list-funcs", "--list-funcs", code=1, prefix=NOBODY, needle="CAP_", forbid=("kernel forbids",)),
    c("no-libpcap", "udp", code=1, prefix=WITHOUT_LIBPCAP, needle="libpcap", check=_names_tried_once),
    # refused after the plan is made (it counts the descriptors the plan needs), before loading: not `fast`
    c("fd-limit-16", "udp", code=1, rlimits={resource.RLIMIT_NOFILE: (16, 16)}, may_attach=True, fast=False),
    c("stdout-closed", "udp", closed=(1,), may_attach=True, needle="standard output"),
    c("stderr-closed-bad-flag", "--backend", "nope", closed=(2,)),  # issue 15: the message went to stdout
    c("stderr-closed-no-match", *NO_MATCH, code=1, closed=(2,)),  # an error found after reading BTF
    # --- pwru k8s: refused before the cluster is asked anything ---
    c("k8s-no-node", "k8s", "udp", needle="--node NAME or --all-nodes"),
    c("k8s-node-and-all-nodes", "k8s", "--node", "n1", "--all-nodes", needle="not both"),
    c("k8s-bad-node-name", "k8s", "--node", "N_1"),
    c("k8s-unknown-pwru-flag", "k8s", "--node", "n1", "--nosuchflag", needle="--nosuchflag: unknown flag"),
    c("k8s-bad-pwru-value", "k8s", "--all-nodes", "--filter-mark", "abc", needle="--filter-mark"),
    c("k8s-output-file", "k8s", "--all-nodes", "--output-file", "x", needle="--output-file"),
    c("k8s-cleanup-with-node", "k8s", "--cleanup", "--node", "n1", needle="--cleanup"),
    c("k8s-no-client", "k8s", "--node", "n1", "udp", prefix=WITHOUT_KUBERNETES, needle="pip install 'pwru[k8s]'"),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the cases name as ``{d}/...``: a directory, a FIFO, a truncated copy of the kernel's BTF, and
    private copies of /dev/full (pwru once unlinked its --ready-file at exit, device nodes included)."""
    d = tmp_path_factory.mktemp("bad-input")
    (d / "adir").mkdir()
    os.mkfifo(d / "fifo")
    (d / "truncated.btf").write_bytes(Path("/sys/kernel/btf/vmlinux").read_bytes()[:4096])
    for name in ("full-out", "full-ready"):
        os.mknod(d / name, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return d


def _unavailable_backends() -> set[str]:
    r = run_cli("--list-backends")
    assert r.returncode == 0, r.stderr
    return {ln.split()[0] for ln in r.stdout.splitlines() if "unavailable" in ln}


@dataclass
class Outcome:
    """A case's run, and pwru's BPF objects still in the kernel after it (known per case for ``may_attach``
    cases, which run one at a time; the others are covered by the check around the whole table)."""

    run: Measured | None  # None: the case does not apply here
    why_not: str = ""
    left: set[str] = field(default_factory=set)


def _run(case: Case, d: Path, unavailable: set[str]) -> Outcome:
    if case.unavailable and case.unavailable not in unavailable:
        return Outcome(None, f"--backend {case.unavailable} works on this kernel")
    prefix = case.prefix
    if prefix == WITHOUT_LIBPCAP:
        libs = _libpcap_files()
        if not libs:
            return Outcome(None, "no libpcap on this machine")
        prefix = _without_libpcap(libs)
    elif prefix == WITHOUT_KUBERNETES:
        without = _without_kubernetes()
        if without is None:
            return Outcome(None, "the kubernetes client is not installed")
        prefix = without
    args = [a.replace("{d}", str(d)) for a in case.args]
    return Outcome(run_measured(*args, timeout=case.limit(), prefix=prefix, closed=case.closed, rlimits=case.rlimits))


@pytest.fixture(scope="module")
def outcomes(files: Path) -> dict[str, Outcome]:
    """Every case run once: most of them PARALLEL at a time (nothing of theirs should reach the kernel), then
    those that may attach one by one, each between two looks at the kernel's BPF objects."""
    unavailable = _unavailable_backends()
    before = pwru_bpf_objects()
    done: dict[str, Outcome] = {}
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {k.id: pool.submit(_run, k, files, unavailable) for k in CASES if not k.may_attach}
        done |= {name: f.result() for name, f in futures.items()}
    for k in CASES:
        if k.may_attach:
            mine = pwru_bpf_objects()
            outcome = _run(k, files, unavailable)
            outcome.left = left_behind(mine)
            done[k.id] = outcome
    assert left_behind(before) == set(), "pwru's BPF objects left in the kernel by the catalogue"
    return done


def _params() -> list[object]:
    marks = {k.id: [pytest.mark.xfail(strict=True, reason=k.xfail)] if k.xfail else [] for k in CASES}
    return [pytest.param(k, id=k.id, marks=marks[k.id]) for k in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    r = outcome.run
    if r is None:
        pytest.skip(outcome.why_not)
    assert not r.timed_out, f"still running after {case.limit() * SLOW:.0f} s (killed); stderr: {r.stderr[-500:]!r}"
    assert outcome.left == set(), "left in the kernel"
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.stdout == "", f"stdout: {r.stdout[:500]!r}"
    assert r.returncode == case.code, f"exit {r.returncode}, stderr: {r.stderr!r}"
    if 2 not in case.closed:
        lines = r.stderr.splitlines()
        assert len(lines) == 1, f"{len(lines)} lines on stderr: {r.stderr!r}"
        line = lines[0]
        assert line.startswith("pwru: ") and "internal error" not in line, line
        assert case.expected_needle() in line, line
        for bad in case.forbid:
            assert bad not in line, line
        if case.check is not None:
            assert not case.check(line), (case.check(line), line)
    if case.fast:
        assert r.cpu < FAST_CPU * SLOW, f"took {r.cpu:.2f} s of CPU ({r.wall:.2f} s): was something loaded first?"


def test_catalogue_size() -> None:
    """The issue asks for at least 80 cases; ids name them in test reports, so they must differ."""
    assert len(CASES) >= 80
    assert len({k.id for k in CASES}) == len(CASES)


def test_stale_ready_file_is_removed_at_start(tmp_path: Path) -> None:
    """A ready file left by an earlier run must be gone before pwru attaches: a script waiting for it must not
    see pwru ready early. pwru is stopped (SIGSTOP) as soon as it says it is attaching, and the file looked at."""
    ready = tmp_path / "ready"
    ready.write_text("stale")
    before = pwru_bpf_objects()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwru", "--ready-file", str(ready), "--backend", "tracepoint", "udp port 9"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        while not (lines and lines[-1].startswith("Attaching")):
            lines.append(proc.stderr.readline())
            assert lines[-1] and len(lines) < 10, lines
        proc.send_signal(signal.SIGSTOP)
        content = ready.read_text() if ready.exists() else None
        assert content != "stale", "the stale ready file was still there while pwru attached"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30 * SLOW)
    assert left_behind(before) == set()


def test_ready_file_that_is_not_a_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    """Found by this catalogue: pwru used to unlink whatever ``--ready-file`` named at exit (it deleted
    /dev/full). ``--ready-file`` naming a device (here a private copy of /dev/null) is refused before loading (exit 2,
    one line), and the node is still there afterwards. Should pwru run, it is stopped with SIGTERM once it
    listens, which is when the unfixed code unlinks the ready file."""
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    before = pwru_bpf_objects()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pwru", "--ready-file", str(node), "--backend", "tracepoint", "udp port 9"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while (line := proc.stderr.readline()) and not line.startswith("Listening"):
        lines.append(line)
    if line:
        proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=30 * SLOW)[1]
    assert left_behind(before) == set()
    assert node.is_char_device(), "pwru deleted the device its --ready-file named"
    assert proc.returncode == 2, [*lines, rest]
    assert len(lines) == 1 and "--ready-file" in lines[0], lines
