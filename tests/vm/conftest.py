"""Kernel-lab pytest wiring: ``PWRU_VM=0`` skips the matrix; a per-kernel summary ends the run."""

from __future__ import annotations

import os

import pytest

from tests.vm.junit import GuestCase
from tests.vm.runner import VMResult

#: (kernel line, VM result, guest cases, fetch seconds) per matrix run, for the terminal summary.
MATRIX_RUNS: list[tuple[str, VMResult | None, list[GuestCase], float]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PWRU_VM") == "0":
        reason = "kernel lab disabled (PWRU_VM=0)"
    elif os.environ.get("PWRU_VM_GUEST") == "1":
        reason = "already inside a kernel-lab guest"
    else:
        return
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not MATRIX_RUNS:
        return
    tr = terminalreporter
    tr.section("kernel lab matrix")
    for line, result, cases, fetch in MATRIX_RUNS:
        if result is None:
            tr.write_line(f"{line}: did not run")
            continue
        head = f"{line} ({result.kernel.kver}): exit {result.exit_code}, {result.timings()}"
        tr.write_line(head + (f", fetch {fetch:.1f}s" if fetch else ""))
        for case in cases:
            tr.write_line(f"    {case.outcome:<8} {case.seconds:6.2f}s  {case.test_id}")
