"""The layers hold: the outputs never reach the kernel (no syscall module is loaded with them)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(m for m in sys.modules if m.startswith('pwru')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_output_loads_no_syscall_module() -> None:
    loaded = _modules_after("import pwru.output, pwru.output.sink, pwru.records")
    assert "pwru.output" in loaded
    kernel_facing = {m for m in loaded if m.startswith("pwru.ebpf.")} - {"pwru.ebpf.btf", "pwru.ebpf.errors"}
    assert kernel_facing == set(), kernel_facing  # BTF parsing (pure) is all they use of pwru.ebpf
    assert not {"pwru.run", "pwru.probes", "pwru.stages", "pwru.kernel"} & loaded


def test_cli_loads_no_bpf_machinery_before_dispatch() -> None:
    loaded = _modules_after("import pwru.cli")
    assert not {m for m in loaded if m.startswith("pwru.ebpf.")} - {"pwru.ebpf.errors"}
