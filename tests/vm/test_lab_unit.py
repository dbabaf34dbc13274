"""Host-side checks of the kernel lab's pure parts (no VM, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.errors import VMError
from tests.vm.initramfs import boot_module_order
from tests.vm.junit import parse_junit
from tests.vm.kernels import image_packages
from tests.vm.runner import _job_script

SEARCH = """linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-37-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-37-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-37-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.1.0-37-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-37-amd64-dbg - Debug symbols for linux-image-6.1.0-37-amd64
linux-image-6.1.0-10-amd64 - Linux 6.1 for 64-bit PCs (signed)
"""


def test_image_packages_newest_generic_first() -> None:
    assert image_packages("6.1", SEARCH) == [
        "linux-image-6.1.0-37-amd64",
        "linux-image-6.1.0-10-amd64",
        "linux-image-6.1.0-9-amd64",
    ]


def test_image_packages_trixie_naming() -> None:
    out = "linux-image-6.12.9+deb13-amd64 - x\nlinux-image-6.12.41+deb13-amd64 - x\nlinux-image-6.1.0-3-amd64 - x\n"
    assert image_packages("6.12", out)[0] == "linux-image-6.12.41+deb13-amd64"
    with pytest.raises(VMError):
        image_packages("5.10", out)


def test_boot_module_order(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/fs/netfs/netfs.ko.xz:\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/fs/overlayfs/overlay.ko.xz:\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    order = boot_module_order(tmp_path)
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == ["netfs.ko.xz", "9pnet.ko.xz", "9pnet_virtio.ko.xz", "9p.ko.xz", "overlay.ko.xz"]
    with pytest.raises(VMError):
        boot_module_order(tmp_path, ("bridge",))


def test_parse_junit(tmp_path: Path) -> None:
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="test_ok" time="0.5"/>'
        '<testcase classname="tests.a" name="test_bad" time="1.0">'
        '<failure message="assert 1 == 2">trace here</failure><system-out>printed</system-out></testcase>'
        '<testcase classname="tests.a" name="test_skip" time="0"><skipped message="no"/></testcase>'
        "</testsuite></testsuites>"
    )
    cases = parse_junit(xml)
    assert [c.outcome for c in cases] == ["passed", "failed", "skipped"]
    bad = cases[1]
    assert bad.bad and bad.test_id == "tests.a::test_bad"
    assert "trace here" in bad.report() and "printed" in bad.report()


def test_job_script_runs_command_in_cwd_with_env() -> None:
    script = _job_script(["echo", "a b"], "/work/x y", {"FOO": "it's"})
    assert "cd '/work/x y'" in script
    assert "( echo 'a b' )" in script
    assert "export FOO='it'\"'\"'s'" in script
    assert "mount -t tmpfs tmpfs /run" in script
    assert "mount -t tmpfs tmpfs /run" not in _job_script("true", "/run/ci/repo", {})
