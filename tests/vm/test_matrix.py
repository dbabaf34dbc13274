"""The kernel matrix: the selected tests run as root inside each stock kernel under QEMU.

For every kernel line (``PWRU_VM_KERNELS``, default all) one host test boots the guest, runs
``python -m pytest <PWRU_VM_TESTS> --junitxml=$PWRU_VM_RESULTS/junit.xml`` there with ``PWRU_TEST_BACKENDS``
naming the backends that kernel supports, and fails with each failed guest test's report and output.
"""

from __future__ import annotations

import compileall
import os
import sys
import time
from pathlib import Path

import pytest

from tests.vm.conftest import MATRIX_RUNS
from tests.vm.initramfs import GUEST_RESULTS
from tests.vm.junit import GuestCase, parse_junit
from tests.vm.kernels import KERNEL_LINES, cached_kernels, fetch_kernel
from tests.vm.runner import check_host, run_in_vm

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TESTS = (
    "tests/vm/guest", "tests/e2e/test_lab.py", "tests/e2e/test_lab_tracking.py", "tests/e2e/test_lab_tc.py"
)
TIMEOUT = float(os.environ.get("PWRU_VM_TIMEOUT", "1500"))  # a hang guard per kernel, not a speed goal


def selected_kernels() -> list[str]:
    names = os.environ.get("PWRU_VM_KERNELS", ",".join(KERNEL_LINES)).replace(" ", ",").split(",")
    return [n for n in names if n]


def selected_tests() -> list[str]:
    """Test paths (relative to the repository) to run in the guest; missing ones are left out."""
    wanted = os.environ.get("PWRU_VM_TESTS", "").split() or list(DEFAULT_TESTS)
    return [t for t in wanted if (REPO / t.split("::", 1)[0]).exists()]


def guest_pytest_command(tests: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
        f"--junitxml={GUEST_RESULTS}/junit.xml", "-o", "junit_logging=all", *tests,
    ]  # fmt: skip


@pytest.mark.vm
@pytest.mark.parametrize("line", selected_kernels())
def test_kernel(line: str, tmp_path: Path) -> None:
    check_host()
    tests = selected_tests()
    assert tests, f"none of the guest test paths exist: {os.environ.get('PWRU_VM_TESTS') or DEFAULT_TESTS}"
    had_kernel = any(k.line == line for k in cached_kernels())
    started = time.monotonic()
    kernel = fetch_kernel(line)
    fetch_seconds = 0.0 if had_kernel else time.monotonic() - started
    src = str(REPO / "src")
    pythonpath = os.pathsep.join(p for p in (src, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PWRU_TEST_BACKENDS": ",".join(KERNEL_LINES[line].backends),
        "PYTHONPATH": pythonpath,
        "PWRU_TEST_SLOWDOWN": os.environ.get("PWRU_TEST_SLOWDOWN", "10"),
    }
    # The guest sees the repository read-only through an overlay that vanishes at power-off: without byte code
    # compiled here, every Python process in the guest would compile pwru from source (seconds under emulation).
    for tree in ("src", "tests"):
        compileall.compile_dir(REPO / tree, quiet=1)
    result = run_in_vm(kernel, guest_pytest_command(tests), TIMEOUT, env=env, cwd=REPO, results_dir=tmp_path)
    junit = tmp_path / "junit.xml"
    cases: list[GuestCase] = parse_junit(junit) if junit.is_file() else []
    MATRIX_RUNS.append((line, result, cases, fetch_seconds))

    where = f"{line} ({kernel.kver}); console: {tmp_path}"
    if result.timed_out or result.exit_code is None:
        pytest.fail(f"{where}: guest did not finish ({result.timings()})\n{result.console_tail(80)}")
    bad = [c for c in cases if c.bad]
    if bad:
        reports = "\n\n".join(c.report() for c in bad)
        pytest.fail(f"{where}: {len(bad)} of {len(cases)} guest tests failed:\n{reports}", pytrace=False)
    if result.exit_code != 0 or not cases:
        pytest.fail(
            f"{where}: guest pytest exited {result.exit_code} with {len(cases)} test results\n"
            + result.console_tail(80),
            pytrace=False,
        )
