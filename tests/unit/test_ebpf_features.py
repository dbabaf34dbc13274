"""Feature reasons in user terms, without a kernel."""

from __future__ import annotations

import errno

from pwru.ebpf.features import Feature, _why
from pwru.ebpf.link import ENOTSUPP, AttachError
from pwru.ebpf.syscall import BPFError, Cmd


def test_reasons_name_the_errno_and_the_meaning() -> None:
    r = _why(BPFError(errno.EPERM, Cmd.PROG_LOAD), "program load", "tracing programs")
    assert r == (
        "program load refused (EPERM): the kernel forbids tracing programs "
        "(lockdown, or missing CAP_BPF/CAP_PERFMON?)"
    )
    err = AttachError(errno.EOPNOTSUPP, "kprobe_multi", "1 functions")
    r = _why(err, "link create", "kprobe-multi links")
    assert r.startswith("link create refused (EOPNOTSUPP): kprobe-multi links not built")
    assert "ENOTSUPP" in _why(OSError(ENOTSUPP, "x"), "attach", "x")
    r = _why(OSError(errno.EINVAL, "x"), "attach", "tcx links")
    assert "(EINVAL): the kernel does not know tcx links" in r
    assert _why(OSError(errno.EIO, "x"), "attach", "thing").endswith("thing: Input/output error")


def test_feature_truthiness() -> None:
    assert Feature("a", True, "ok")
    assert not Feature("b", False, "b: missing")
