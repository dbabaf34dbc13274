"""Command line: pwru-style flags -> Config, dispatch, exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pwru import __version__, cli
from pwru.config import Config
from pwru.errors import UserError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_pcap_words_joined_and_flags_interspersed() -> None:
    c = cli.parse_args(["--output-json", "host", "10.0.0.1", "--debug", "and", "tcp", "port", "80"])
    assert c.pcap_filter == "host 10.0.0.1 and tcp port 80"
    assert c.output_json and c.debug


def test_double_dash_ends_flags() -> None:
    c = cli.parse_args(["--output-stack", "--", "--not-a-flag", "x"])
    assert c.output_stack and c.pcap_filter == "--not-a-flag x"


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
    assert cli.parse_args(args).output_meta is expected


def test_boolean_does_not_eat_the_filter() -> None:
    c = cli.parse_args(["--output-tcp-flags", "tcp"])
    assert c.output_tcp_flags and c.pcap_filter == "tcp"


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
    assert c.backend == "tracepoint"
    assert c.filter_func is not None and c.func_allowed("ip_rcv") and not c.func_allowed("tcp_v4_rcv")
    assert (c.filter_mark, c.filter_mark_mask) == (0x10, 0xFF)
    assert c.filter_netns == os.stat("/proc/self/ns/net").st_ino
    assert (c.filter_ifname, c.filter_ifindex) == ("lo", 1)
    assert c.output_limit_lines == 5
    assert c.output_file == str(tmp_path / "out.log")
    assert (c.output_file_max_size, c.output_file_max_backups, c.output_file_max_age) == (3, 4, 7)
    assert c.output_file_compress and c.all_kmods and c.output_caller and c.output_tcp_flags and c.list_funcs
    assert c.timestamp == "relative"
    assert c.kmods == ("nf_tables", "veth", "bridge")
    assert c.kernel_btf == str(btf) and c.ready_file == str(tmp_path / "ready")


def test_ifname_alone_sets_current_netns() -> None:
    c = cli.parse_args(["--filter-ifname", "lo"])
    assert c.filter_netns == os.stat("/proc/self/ns/net").st_ino and c.filter_ifindex == 1


ERRORS = [
    (["--backend", "bogus"], "pwru: --backend: invalid value 'bogus'"),
    (["--filter-func", "(x"], "pwru: --filter-func: invalid regular expression"),
    (["--filter-netns", "/no/such/ns"], "pwru: --filter-netns: /no/such/ns: No such file"),
    (["--filter-netns", "inode:x"], "pwru: --filter-netns: not a number"),
    (["--filter-netns", "netns1"], "pwru: --filter-netns: invalid value 'netns1'"),
    (["--filter-ifname", "nosuchif0"], "pwru: --filter-ifname: no interface named 'nosuchif0'"),
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
    for flag in cli.FLAGS:
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
    assert fake_run.calls[0][1].pcap_filter == "host 1.2.3.4"


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
