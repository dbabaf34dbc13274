"""Feature probes on the real kernel: consistent with what the kernel exposes, cached, leak-free."""

from __future__ import annotations

import os

import pytest

from pwru.ebpf import features

pytestmark = pytest.mark.root


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_probes_agree_with_the_kernel_and_clean_up() -> None:
    features.clear_cache()
    before = _open_fds()
    results = features.probe_all()
    assert _open_fds() == before
    assert set(results) == set(features.PROBES)
    for name, f in results.items():
        assert f.name == name and f.reason
        if not f.available:
            assert f.reason.startswith(f"{name}: ")
    # Everything this project relies on everywhere it runs (kernel >= 5.8 with BTF).
    assert results["ringbuf"].available, results["ringbuf"].reason
    assert results["raw_tp"].available, results["raw_tp"].reason
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        assert results["tp_btf"].available, results["tp_btf"].reason
    pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    if not pmu:
        assert not results["kprobe"].available
        assert "CONFIG_KPROBES" in results["kprobe"].reason


def test_locked_down_kernel_reasons() -> None:
    f = features.fentry()
    if f.available:
        pytest.skip("this kernel allows fentry")
    assert "fentry: " in f.reason and "refused (" in f.reason


def test_results_are_cached() -> None:
    assert features.tcx() is features.tcx()
    features.clear_cache()
    assert features.ringbuf().available
