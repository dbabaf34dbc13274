"""Command line: pwru-style flags -> Config, dispatch, exit codes and one-line errors."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pwru import __version__, cli, flags, resolve
from pwru.config import Config, FilterConfig, KernelConfig, OutputConfig
from pwru.ebpf.errors import BPFError, EBPFError, NotSupported, VerifierError
from pwru.errors import UserError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_pcap_words_joined_and_flags_interspersed() -> None:
    c = cli.parse_args(["--output-json", "host", "10.0.0.1", "--debug", "and", "tcp", "port", "80"])
    assert c.filter.pcap == "host 10.0.0.1 and tcp port 80"
    assert c.output.json and c.debug


def test_double_dash_ends_flags() -> None:
    c = cli.parse_args(["--output-stack", "--", "--not-a-flag", "x"])
    assert c.output.stack and c.filter.pcap == "--not-a-flag x"


def test_defaults() -> None:
    assert cli.parse_args([]) == Config()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--output-meta=false"], False),
        (["--output-meta=0"], False),
        (["--output-meta=F"], False),
        (["--no-output-meta"], False),
        (["--output-meta"], True),
        (["--output-meta=true"], True),
        (["--no-output-meta", "--output-meta=True"], True),  # last one wins
        ([], True),
    ],
)
def test_boolean_styles(args: list[str], expected: bool) -> None:
    assert cli.parse_args(args).output.meta is expected


def test_boolean_does_not_eat_the_filter() -> None:
    c = cli.parse_args(["--output-tcp-flags", "tcp"])
    assert c.output.tcp_flags and c.filter.pcap == "tcp"


def test_all_value_flags(tmp_path: Path) -> None:
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"")
    c = cli.parse_args(
        [
            "--backend=tracepoint",
            "--filter-func",
            "ip_.*",
            "--filter-mark=0x10/0xff",
            "--filter-netns",
            "/proc/self/ns/net",
            "--filter-ifname=lo",
            "--output-limit-lines",
            "5",
            f"--output-file={tmp_path / 'out.log'}",
            "--output-file-max-size=3",
            "--output-file-max-backups",
            "4",
            "--output-file-max-age=7",
            "--output-file-compress",
            "--timestamp=relative",
            "--kmods=nf_tables,veth",
            "--kmods",
            "bridge",
            "--all-kmods",
            f"--kernel-btf={btf}",
            f"--ready-file={tmp_path / 'ready'}",
            "--output-caller",
            "--output-tcp-flags",
            "--list-funcs",
        ]
    )
    f, o, k = c.filter, c.output, c.kernel
    assert k.backend == "tracepoint"
    assert f.func is not None and f.func_allowed("ip_rcv") and not f.func_allowed("tcp_v4_rcv")
    assert (f.mark, f.mark_mask) == (0x10, 0xFF)
    assert f.netns == os.stat("/proc/self/ns/net").st_ino and f.netns_path == "/proc/self/ns/net"
    assert (f.ifname, f.ifindex) == ("lo", 1)
    assert o.limit_lines == 5
    assert o.file == str(tmp_path / "out.log")
    assert (o.file_max_size, o.file_max_backups, o.file_max_age) == (3, 4, 7)
    assert o.file_max_bytes == 3 * 1024 * 1024
    assert o.file_compress and k.all_kmods and o.caller and o.tcp_flags and c.list_funcs
    assert not (o.json or o.stack or c.list_backends or c.debug) and o.meta and o.tuple
    assert o.timestamp == "relative"
    assert k.kmods == ("nf_tables", "veth", "bridge")
    assert k.kernel_btf == str(btf) and c.ready_file == str(tmp_path / "ready")
    assert c == Config(
        filter=FilterConfig(
            pcap="",
            func=f.func,
            netns=os.stat("/proc/self/ns/net").st_ino,
            netns_path="/proc/self/ns/net",
            ifname="lo",
            ifindex=1,
            mark=0x10,
            mark_mask=0xFF,
        ),
        output=OutputConfig(
            caller=True,
            tcp_flags=True,
            limit_lines=5,
            file=str(tmp_path / "out.log"),
            file_max_size=3,
            file_max_backups=4,
            file_max_age=7,
            file_compress=True,
            timestamp="relative",
        ),
        kernel=KernelConfig(
            backend="tracepoint", kmods=("nf_tables", "veth", "bridge"), all_kmods=True, kernel_btf=str(btf)
        ),
        ready_file=str(tmp_path / "ready"),
        list_funcs=True,
    )


def test_ifname_alone_sets_current_netns() -> None:
    c = cli.parse_args(["--filter-ifname", "lo"])
    assert c.filter.netns == os.stat("/proc/self/ns/net").st_ino and c.filter.ifindex == 1
    assert c.filter.netns_path == "/proc/self/ns/net"


def test_inode_spec_keeps_no_path() -> None:
    c = cli.parse_args(["--filter-netns=inode:4026531840"])
    assert (c.filter.netns, c.filter.netns_path, c.filter.ifindex) == (4026531840, None, None)


ERRORS = [
    (["--backend", "bogus"], "pwru: --backend: invalid value 'bogus'"),
    (["--filter-func", "(x"], "pwru: --filter-func: invalid regular expression"),
    (["--filter-netns", "/no/such/ns"], "pwru: --filter-netns: /no/such/ns: No such file"),
    (["--filter-netns", "inode:x"], "pwru: --filter-netns: not a number"),
    (["--filter-netns", "netns1"], "pwru: --filter-netns: invalid value 'netns1'"),
    (["--filter-ifname", "nosuchif0"], "pwru: --filter-ifname: no interface named 'nosuchif0'"),
    (["--filter-ifname", "a/b"], "pwru: --filter-ifname: invalid interface name 'a/b'"),
    (["--filter-netns", "/proc/self/ns/uts"], "pwru: --filter-netns: /proc/self/ns/uts is not a network namespace"),
    (["--filter-mark", "0x1/zz"], "pwru: --filter-mark: invalid mask 'zz'"),
    (["--output-meta=maybe"], "pwru: --output-meta: invalid boolean 'maybe'"),
    (["--no-output-meta=true"], "pwru: --output-meta: --no-output-meta takes no value"),
    (["--no-backend"], "pwru: --no-backend: unknown flag"),
    (["--output-limit-lines", "ten"], "pwru: --output-limit-lines: not a number: 'ten'"),
    (["--output-limit-lines=-1"], "pwru: --output-limit-lines: -1 is out of range"),
    (["--output-file-max-size=0"], "pwru: --output-file-max-size: must be at least 1"),
    (["--output-file", "/no/such/dir/out"], "pwru: --output-file: /no/such/dir: no such directory"),
    (["--output-file"], "pwru: --output-file: needs a value"),
    (["--output-file", "--debug"], "pwru: --output-file: needs a value"),
    (["--timestamp=later"], "pwru: --timestamp: invalid value 'later'"),
    (["--kernel-btf", "/no/such/btf"], "pwru: --kernel-btf: /no/such/btf: no such file"),
    (["--kernel-btf", "/"], "pwru: --kernel-btf: /: is a directory"),
    (["--ready-file", "/no/such/dir/ready"], "pwru: --ready-file: /no/such/dir: no such directory"),
    (["--output-file", "/"], "pwru: --output-file: /: is a directory"),
    (["--kmods"], "pwru: --kmods: needs a value"),
    (["--no-debug=1"], "pwru: --debug: --no-debug takes no value"),
    (["--no-frobnicate"], "pwru: --no-frobnicate: unknown flag"),
    (["--pcap-filter=tcp"], "pwru: --pcap-filter: unknown flag"),
    (["--frobnicate"], "pwru: --frobnicate: unknown flag"),
    (["-x"], "pwru: -x: unknown flag"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_errors_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message), err
    assert err.count("\n") == 1


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    cmd = [sys.executable, "-m", "pwru", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(
    "args",
    [["--backend", "nope"], ["--filter-func", "["], ["--filter-netns", "/nope"], ["--bogus-flag"]],
)
def test_errors_in_a_real_process_have_no_traceback(args: list[str]) -> None:
    p = _run(*args)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.startswith("pwru: --") and p.stderr.count("\n") == 1
    assert "Traceback" not in p.stderr


def test_version_and_help_in_a_real_process() -> None:
    p = _run("--version")
    assert (p.returncode, p.stdout) == (0, f"pwru {__version__}\n")
    p = _run("--help", "--backend", "nonsense")  # help wins, values are not validated
    assert p.returncode == 0 and p.stdout.startswith("Usage: pwru [options] [pcap-filter]")
    for flag in flags.FLAGS:
        if flag.kind != flags.WORDS:
            assert f"--{flag.name}" in p.stdout


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("pwru.run")
    calls: list[tuple[str, Config]] = []
    mod.calls = calls  # type: ignore[attr-defined]

    def make(name: str, rc: int = 0):  # type: ignore[no-untyped-def]
        def f(config: Config) -> int:
            calls.append((name, config))
            return rc

        return f

    mod.run = make("run", 3)  # type: ignore[attr-defined]
    mod.list_backends = make("list_backends")  # type: ignore[attr-defined]
    mod.list_funcs = make("list_funcs")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pwru.run", mod)
    return mod


def test_dispatch(fake_run: types.ModuleType) -> None:
    assert cli.main(["host", "1.2.3.4"]) == 3
    assert cli.main(["--list-backends"]) == 0
    assert cli.main(["--list-funcs", "--filter-func", "ip_rcv"]) == 0
    names = [n for n, _ in fake_run.calls]
    assert names == ["run", "list_backends", "list_funcs"]
    assert fake_run.calls[0][1].filter.pcap == "host 1.2.3.4"
    assert fake_run.calls[2][1].filter.func_allowed("ip_rcv")


def test_user_error_from_run(fake_run: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(config: Config) -> int:
        raise UserError("kernel too old: no BTF", exit_code=4)

    fake_run.run = fail  # type: ignore[attr-defined]
    assert cli.main([]) == 4
    assert capsys.readouterr().err == "pwru: kernel too old: no BTF\n"


def test_keyboard_interrupt_is_quiet(fake_run: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(config: Config) -> int:
        raise KeyboardInterrupt

    fake_run.run = interrupted  # type: ignore[attr-defined]
    assert cli.main([]) == 130
    assert capsys.readouterr() == ("", "")


def test_internal_error(fake_run: types.ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(config: Config) -> int:
        raise ValueError("bad thing\nsecond line")

    fake_run.run = boom  # type: ignore[attr-defined]
    assert cli.main([]) == 1
    assert capsys.readouterr().err == "pwru: internal error: ValueError: bad thing\n"
    assert cli.main(["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("pwru: internal error: ValueError: bad thing\n")


def _dispatch_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def dispatch(config: Config) -> int:
        raise exc

    monkeypatch.setattr(cli, "_dispatch", dispatch)


VERIFIER_LOG = "\n".join(f"line {i}" for i in range(1, 31)) + "\n\n"


@pytest.mark.parametrize(
    ("exc", "rc", "err"),
    [
        (UserError("no BTF for this kernel"), 2, "pwru: no BTF for this kernel\n"),
        (UserError("must run as root", exit_code=1), 1, "pwru: must run as root\n"),
        (
            VerifierError(13, "PROG_LOAD", VERIFIER_LOG, program="kprobe_skb_1"),
            1,
            "pwru: the kernel's verifier refused the program kprobe_skb_1: bpf(PROG_LOAD): Permission denied\n"
            + "\n".join(f"line {i}" for i in range(16, 31))
            + "\n",
        ),
        (
            VerifierError(22, "PROG_LOAD", "", program="p"),
            1,
            "pwru: the kernel's verifier refused the program p: bpf(PROG_LOAD): Invalid argument\n",
        ),
        (
            NotSupported("kprobe-multi", "needs CONFIG_FPROBE"),
            1,
            "pwru: kprobe-multi: not supported on this kernel: needs CONFIG_FPROBE\n",
        ),
        (BPFError(1, "MAP_CREATE"), 1, "pwru: bpf(MAP_CREATE): Operation not permitted\n"),
        (
            BPFError(22, "BTF_LOAD", "magic bad\nbad type 7\n"),
            1,
            "pwru: bpf(BTF_LOAD): Invalid argument\nmagic bad\nbad type 7\n",
        ),
        (EBPFError("relocation of foo failed"), 1, "pwru: relocation of foo failed\n"),
        (KeyboardInterrupt(), 130, ""),
        (RuntimeError("boom\nmore"), 1, "pwru: internal error: RuntimeError: boom\n"),
    ],
)
def test_errors_become_exit_codes(
    exc: BaseException, rc: int, err: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _dispatch_raising(monkeypatch, exc)
    assert cli.main(["tcp"]) == rc
    out, got = capsys.readouterr()
    assert (out, got) == ("", err)


def test_plain_bpf_error_is_not_a_verifier_refusal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _dispatch_raising(monkeypatch, BPFError(7, "BTF_LOAD", "x" * 10))
    assert cli.main([]) == 1
    assert "verifier" not in capsys.readouterr().err


def test_ebpf_error_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _dispatch_raising(monkeypatch, NotSupported("fentry", "no BTF"))
    assert cli.main(["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("pwru: fentry: not supported on this kernel: no BTF\n")


def test_broken_pipe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    quieted: list[bool] = []
    monkeypatch.setattr(cli, "_quiet_stdout", lambda: quieted.append(True))
    _dispatch_raising(monkeypatch, BrokenPipeError())
    assert cli.main([]) == 141
    assert quieted == [True] and capsys.readouterr() == ("", "")


def test_main_resolves_before_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Config] = []

    def dispatch(config: Config) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    assert cli.main(["--filter-ifname=lo", "--filter-netns=/proc/self/ns/net"]) == 0
    assert (seen[0].filter.ifindex, seen[0].filter.netns) == (1, os.stat("/proc/self/ns/net").st_ino)


# --- issue 15: the defects of the command line, the run loop and the output ---------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", ""],
        ["--backend="],
        ["--filter-mark", ""],
        ["--filter-ifname", ""],
        ["--kmods", ""],
        ["--kmods", ","],
        ["--kmods", "veth", "--kmods="],
        ["--filter-trace-netfilter="],
        ["--filter-func", " "],
    ],
)
def test_empty_values_are_errors_not_unset(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """They used to mean "unset" without a word (``--backend ''`` ran auto, ``--filter-ifname ''`` no filter)."""
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    name = args[-1].partition("=")[0] if args[-1].startswith("--") else args[-2]
    assert (out, err) == ("", f"pwru: {name}: empty value (leave the flag out for its default)\n")


def test_invalid_re2_pattern_is_one_line_in_a_real_process() -> None:
    """RE2 also logs a parse error on stderr by itself: that must not add lines to ours."""
    p = _run("--filter-func", "(?<=ip)_rcv")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "pwru: --filter-func: invalid regular expression '(?<=ip)_rcv': invalid perl operator: (?<=\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output-file", "/dev/full"], "pwru: --output-file: /dev/full: not a regular file\n"),
        (["--ready-file", "/dev/null"], "pwru: --ready-file: /dev/null: not a regular file\n"),
        (["--ready-file", "/proc/pwru-ready"], "pwru: --ready-file: /proc: cannot create files there: "),
        (["--output-file", "/sys/kernel/pwru.log"], "pwru: --output-file: /sys/kernel: cannot create files there: "),
    ],
)
def test_unwritable_output_paths_are_refused_before_loading(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """They used to be found when first written, after attaching, as an internal error."""
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1


def _run_fds(*args: str, stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
             close: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """pwru in a real process with some standard descriptors closed (``close``) or replaced."""
    env = dict(os.environ, PYTHONPATH=SRC)

    def closer() -> None:
        for fd in close:
            os.close(fd)

    return subprocess.run(
        [sys.executable, "-m", "pwru", *args], stdin=stdin, stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE, text=True, env=env, timeout=60, check=False,
        preexec_fn=closer,
    )  # fmt: skip


def test_closed_stdout_is_refused_before_anything(tmp_path: Path) -> None:
    err = tmp_path / "err"
    with open(err, "w") as e:
        p = _run_fds("--list-funcs", stderr=e.fileno(), stdout=subprocess.DEVNULL, close=(1,))
    assert p.returncode == 2
    assert err.read_text() == "pwru: standard output is closed (redirect it to a file, or use --output-file)\n"
    with open(err, "w") as e, open(os.devnull) as ro:
        p = _run_fds("--version", stdout=ro.fileno(), stderr=e.fileno())
    assert p.returncode == 2 and "standard output is open for reading only" in err.read_text()


def test_closed_stderr_sends_nothing_to_stdout() -> None:
    """With stderr closed, errors became ``internal error: AttributeError: 'NoneType' object has no attribute
    'isatty'`` printed on stdout. Now the error goes to where stderr was (nowhere) and the status tells."""
    p = _run_fds("--backend", "nope", stderr=subprocess.DEVNULL, close=(2,))
    assert (p.returncode, p.stdout) == (2, "")
    p = _run_fds("--version", stderr=subprocess.DEVNULL, close=(2,))
    assert (p.returncode, p.stdout) == (0, f"pwru {__version__}\n")


def test_guard_standard_fds_keeps_numbers_0_to_2_taken() -> None:
    code = (
        "import os, sys\n"
        "from pwru import cli\n"
        "closed = cli.guard_standard_fds()\n"
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "sys.stderr.write(f'{sorted(closed)} {fd} {sys.stdout is not None}')\n"
    )
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=env, timeout=60, check=False, preexec_fn=lambda: os.close(1))  # fmt: skip
    assert p.stderr == "[1] 3 True", p.stderr


def test_libpcap_missing_is_one_line_naming_each_library_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ctypes
    import ctypes.util

    from pwru.filter import pcap

    real = ctypes.CDLL

    def no_libpcap(name: str | None, *a: object, **kw: object) -> object:
        if name is not None and "pcap" in name:
            raise OSError(f"{name}: cannot open shared object file")
        return real(name, *a, **kw)  # type: ignore[arg-type]

    importlib.import_module("pwru.run")  # its imports load libc through ctypes before the patch
    monkeypatch.setattr(pcap, "_lib", None)
    monkeypatch.setattr(ctypes, "CDLL", no_libpcap)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libpcap.so.0.8")
    monkeypatch.setattr(cli, "_dispatch", lambda config: importlib.import_module("pwru.run").run(config))
    assert cli.main(["udp"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("pwru: libpcap not found (tried libpcap.so.0.8, libpcap.so.1, libpcap.so): "), err
    assert err.endswith("(install libpcap: apt-get install libpcap0.8)\n")


@pytest.mark.parametrize(
    ("caps", "missing"),
    [
        (0, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]),
        (1 << 39 | 1 << 38 | 1 << 12, []),
        (1 << 21 | 1 << 12, []),  # CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON (as before Linux 5.8)
        (1 << 39 | 1 << 12, ["CAP_PERFMON"]),
        (1 << 21, ["CAP_NET_ADMIN"]),
        (0x1FFFEFFFFFF, []),  # root here: everything but CAP_SYS_RESOURCE
    ],
)
def test_privileges_are_capabilities_not_the_uid(caps: int, missing: list[str]) -> None:
    assert resolve.missing_caps(caps) == missing


def test_effective_caps_of_a_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpwru\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n")
    assert resolve.missing_caps(resolve.effective_caps(str(status))) == []
    assert resolve.effective_caps() >= 0  # this process's own


def test_a_process_without_capabilities_is_told_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "effective_caps", lambda: 1 << 12)
    with pytest.raises(UserError) as e:
        resolve.check_privileges()
    assert e.value.exit_code == 1
    assert str(e.value) == (
        "missing privileges: this process lacks CAP_BPF, CAP_PERFMON "
        "(run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
    )


def _probe(kind: str, attach: object, program: str, name: str = "x") -> object:
    from pwru.probes import Probe

    return Probe(kind, name, program, attach)  # type: ignore[arg-type]


def test_counts_are_singular_or_plural() -> None:
    from pwru import run
    from pwru.probes import Attach, Plan

    plan = Plan()
    plan.add([_probe("tracepoint", Attach.TP_BTF, "tp_skb"), _probe("nf_hook", Attach.NETFILTER, "nf_skb")])
    assert run.counted(plan) == "1 tracepoint and 1 netfilter hook"
    plan.add([_probe("tracepoint", Attach.TP_BTF, "tp_skb", "y")])
    assert run.counted(plan) == "2 tracepoints and 1 netfilter hook"
    assert run.counted(plan, []) == "0 tracepoints and 0 netfilter hooks"
    assert run.count_of(1, "func") == "1 function" and run.count_of(3, "func") == "3 functions"


def test_descriptors_needed_follow_the_attach_methods() -> None:
    from pwru import run
    from pwru.probes import Attach, Plan

    plan = Plan()
    plan.add([_probe("tracepoint", Attach.TP_BTF, "tp_skb", f"t{i}") for i in range(30)])
    assert run.fds_needed(plan, 10) == 10 + 30 * 2 + run.FDS_SPARE  # a program and a link each
    multi = Plan()
    multi.add([_probe("func", Attach.KPROBE_MULTI, f"kprobe_skb_{i % 5 + 1}", f"f{i}") for i in range(1000)])
    assert run.fds_needed(multi, 10) == 10 + 5 * 2 + run.FDS_SPARE  # one program and one link per position


def test_too_low_a_descriptor_limit_is_said_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """With RLIMIT_NOFILE=16 pwru attached 3 of 30 tracepoints and ran on without a word."""
    import resource

    from pwru import run
    from pwru.probes import Attach, Plan

    plan = Plan()
    plan.add([_probe("tracepoint", Attach.TP_BTF, "tp_skb", f"t{i}") for i in range(30)])
    monkeypatch.setattr(resource, "getrlimit", lambda which: (16, 16))

    def refuse(which: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    with pytest.raises(UserError) as e:
        run.ensure_fd_limit(plan)
    assert e.value.exit_code == 1
    assert re.fullmatch(
        r"30 tracepoints need about \d+ open files, but RLIMIT_NOFILE is 16 \(hard limit 16\) and cannot be raised "
        r"\(not allowed to raise maximum limit\): raise it first \(ulimit -n \d+\), or trace fewer \(--filter-func\)",
        str(e.value),
    ), str(e.value)
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: raised.append(limits))
    run.ensure_fd_limit(plan)  # allowed (CAP_SYS_RESOURCE): the hard limit goes up too
    assert raised and raised[0][0] == raised[0][1] >= 30 * 2


def test_ready_file_is_replaced_whole_and_a_stale_one_removed(tmp_path: Path) -> None:
    from pwru.run import ReadyFile

    path = tmp_path / "ready"
    path.write_text("left by an earlier run")
    ready = ReadyFile(str(path))
    ready.clear_stale()
    assert not path.exists()
    ready.signal()
    assert path.read_text() == str(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no temporary left
    ready.remove()
    assert not path.exists()
    ReadyFile(None).clear_stale()
    ReadyFile(None).signal()


def test_ready_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    from pwru.run import ReadyFile

    gone = tmp_path / "gone"
    gone.mkdir()
    ready = ReadyFile(str(gone / "ready"))
    gone.rmdir()
    with pytest.raises(UserError) as e:
        ready.signal()
    assert (e.value.exit_code, str(e.value)) == (1, f"--ready-file: {gone / 'ready'}: No such file or directory")
