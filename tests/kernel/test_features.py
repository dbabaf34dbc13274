"""Feature probes on the real kernel: consistent with what the kernel exposes, cached, leak-free."""

from __future__ import annotations

import os

import pytest

from pwru.ebpf import features
from pwru.ebpf.errors import NotSupported

pytestmark = pytest.mark.root

# Targets for the probes that attach somewhere: any kernel has them, and they have nothing to do with pwru.
FUNCTION = "do_unlinkat"
TRACEPOINT = "sched_process_exec"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_probes_agree_with_the_kernel_and_clean_up() -> None:
    features.clear_cache()
    before = _open_fds()
    results = features.probe_all(FUNCTION, TRACEPOINT)
    assert _open_fds() == before
    assert set(results) == set(features.PROBES) | set(features.FUNCTION_PROBES) | set(features.TRACEPOINT_PROBES)
    for name, f in results.items():
        assert f.name == name and f.reason
        if not f.available:
            assert f.reason.startswith(f"{name}: ")
    # Everything this project relies on everywhere it runs (kernel >= 5.8 with BTF).
    assert results["ringbuf"].available, results["ringbuf"].reason
    assert results["raw_tp"].available, results["raw_tp"].reason
    assert TRACEPOINT in results["raw_tp"].reason
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        assert results["tp_btf"].available, results["tp_btf"].reason
        assert results["tp_btf"].reason == f"tp_btf on {TRACEPOINT} attached"
    pmu = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    if not pmu:
        assert not results["kprobe"].available
        assert "CONFIG_KPROBES" in results["kprobe"].reason


def test_a_target_the_kernel_lacks_is_named() -> None:
    f = features.tp_btf("no_such_tracepoint_xyz")
    assert not f.available
    assert f.reason == "tp_btf: no btf_trace_no_such_tracepoint_xyz in kernel BTF (/sys/kernel/btf/vmlinux missing?)"
    with pytest.raises(NotSupported) as e:
        f.require()
    assert e.value.feature == "tp_btf" and "no_such_tracepoint_xyz" in e.value.why
    features.ringbuf().require()  # available: no exception


def test_locked_down_kernel_reasons() -> None:
    f = features.fentry(FUNCTION)
    if f.available:
        pytest.skip("this kernel allows fentry")
    assert "fentry: " in f.reason and "refused (" in f.reason


def test_results_are_cached_per_target() -> None:
    assert features.tcx() is features.tcx()
    assert features.raw_tp(TRACEPOINT) is features.raw_tp(TRACEPOINT)
    assert features.raw_tp(TRACEPOINT) is not features.raw_tp("sched_process_exit")
    features.clear_cache()
    assert features.ringbuf().available
