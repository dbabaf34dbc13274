"""What the kernel accepts for pwru's netfilter points: the priorities, and pwru's own nf_skb program."""

from __future__ import annotations

import errno

import pytest

from pwru import netfilter
from pwru.bpf import object_path
from pwru.ebpf import features
from pwru.ebpf.btf import kernel_btf
from pwru.ebpf.collection import Collection
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.link import NF_INET_LOCAL_OUT, NFPROTO_IPV6, AttachError, attach_netfilter
from pwru.ebpf.syscall import AttachType, ProgType

pytestmark = pytest.mark.root


def test_the_feature_probe_and_the_priorities_the_kernel_takes() -> None:
    f = features.netfilter_link()
    if not f.available:
        assert "netfilter" in f.reason
        pytest.skip(f.reason)
    assert f.reason == "netfilter link at IPv4 LOCAL_IN attached"
    # pwru's program itself: every output option on (the stack/caller helpers must be compiled out for it).
    on = {f"cfg_output_{part}": 1 for part in ("meta", "tuple", "stack", "caller")}
    coll = Collection(ObjectSpec.load(object_path()), kernel_btf=kernel_btf(), constants=on)
    try:
        # As the executor loads it: once per priority, a probe id per hook, every hook shown.
        for point in (1, 2):
            ids = b"".join((10 * point + hook).to_bytes(4, "little") for hook in netfilter.HOOKS.values())
            per_load = {"cfg_nf_point": point, "cfg_nf_probe_ids": ids, "cfg_nf_shown": 0b11111}
            coll.load_program(
                netfilter.PROGRAM,
                prog_type=ProgType.NETFILTER,
                expected_attach_type=AttachType.NETFILTER,
                constants=per_load,
            ).close()
        prog = coll.load_program(
            netfilter.PROGRAM, prog_type=ProgType.NETFILTER, expected_attach_type=AttachType.NETFILTER
        )
        for prio in netfilter.PRIORITIES.values():
            attach_netfilter(prog, NFPROTO_IPV6, NF_INET_LOCAL_OUT, prio).close()
        for prio in (netfilter.NF_IP_PRI_FIRST, netfilter.NF_IP_PRI_LAST):  # reserved for netfilter itself
            with pytest.raises(AttachError) as e:
                attach_netfilter(prog, NFPROTO_IPV6, NF_INET_LOCAL_OUT, prio)
            assert e.value.errno == errno.ERANGE
    finally:
        coll.close()
