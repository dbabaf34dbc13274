"""Every kprobe and tp_btf program of pwru.bpf.o passes the running kernel's verifier (through our loader).

kprobes cannot attach on a locked-down kernel, but they load; fentry loads are refused (EPERM) on such kernels
and are only checked where the kernel allows them. Each load prints ``verified_insns`` (``pytest -s``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from pwru.bpf import build, object_path
from pwru.ebpf import btf
from pwru.ebpf.collection import Collection
from pwru.ebpf.elf import ObjectSpec
from pwru.ebpf.syscall import AttachType, BPFError, ProgType

pytestmark = pytest.mark.root

KPROBES = [f"kprobe_skb_{n}" for n in range(1, 6)] + ["kprobe_skb_1_reason_2", "kprobe_skb_2_reason_3"]
EVERYTHING = {
    "cfg_netns": 4026531840, "cfg_mark": 1, "cfg_mark_mask": 0xFF, "cfg_ifindex": 1, "cfg_has_pcap": 1,
    "cfg_output_meta": 1, "cfg_output_tuple": 1, "cfg_output_stack": 1, "cfg_output_caller": 1,
    "cfg_has_tunnel_pcap_l2": 1, "cfg_has_tunnel_pcap_l3": 1, "cfg_output_tunnel": 1,
    "cfg_output_pcap": 1, "cfg_pcap_snaplen": 16384,
}  # fmt: skip
NOTHING: dict[str, int] = {}


@pytest.fixture(scope="module")
def coll() -> Iterator[Collection]:
    build.build()
    spec = ObjectSpec.load(object_path())
    spec.maps["events"].max_entries = 1 << 16
    spec.maps["stacks"].max_entries = 64
    with Collection(spec) as c:
        yield c


@pytest.mark.parametrize("constants", [NOTHING, EVERYTHING], ids=["defaults", "all-features"])
@pytest.mark.parametrize("name", KPROBES)
def test_kprobe_loads(coll: Collection, name: str, constants: dict[str, int]) -> None:
    prog = coll.load_program(name, constants=constants)
    info = prog.info()
    print(f"{name} {'all' if constants else 'defaults'}: verified_insns={info.verified_insns}")
    assert info.verified_insns > 0
    prog.close()


def test_without_pcap_output_the_scratch_map_may_be_tiny() -> None:
    """pwru shrinks --output-pcap's scratch map when the output is off (run.size_pcap_scratch): the programs must
    load with it, which holds only while the constant keeps the verifier from reaching the map's values."""
    from pwru.config import Config
    from pwru.run import size_pcap_scratch

    build.build()
    spec = ObjectSpec.load(object_path())
    spec.maps["events"].max_entries = 1 << 16
    spec.maps["stacks"].max_entries = 64
    size_pcap_scratch(spec, Config())
    assert spec.maps["pcap_scratch"].value_size < 64
    with Collection(spec) as c:
        for name in KPROBES:
            c.load_program(name, constants=EVERYTHING | {"cfg_output_pcap": 0}).close()
        constants = {"cfg_tp_skb_pos": 1, "cfg_tp_reason_pos": 3, "cfg_tp_location_pos": 2}
        c.load_program("tp_skb", attach_btf_id=_tp_id("kfree_skb"), constants=constants).close()


#: The tracking and netfilter-table programs, with the journey's copy records and the table lookups on.
STATE_KPROBES = [
    "kprobe_skb_free", "kprobe_skb_copy_entry", "kretprobe_skb_copy", "kprobe_skb_replace_entry",
    "kretprobe_skb_replace", "kprobe_xt_table_skb_first", "kprobe_xt_table_priv_first", "kprobe_nft_chain",
    "kretprobe_nf_verdict",
]  # fmt: skip
JOURNEY = {**EVERYTHING, "cfg_track_skb": 1, "cfg_output_journey": 1, "cfg_nf_rules": 1}


@pytest.mark.parametrize("constants", [NOTHING, JOURNEY], ids=["defaults", "journey-and-tables"])
@pytest.mark.parametrize("name", STATE_KPROBES)
def test_state_kprobes_load(coll: Collection, name: str, constants: dict[str, int]) -> None:
    prog = coll.load_program(name, constants=constants)
    assert prog.info().verified_insns > 0
    prog.close()


def test_kprobe_multi_attach_type_loads(coll: Collection) -> None:
    try:
        prog = coll.load_program("kprobe_skb_1", expected_attach_type=AttachType.TRACE_KPROBE_MULTI)
    except BPFError as e:  # kernels before 5.18 do not know the attach type
        pytest.skip(f"kprobe-multi attach type refused: {e}")
    assert prog.info().verified_insns > 0
    prog.close()


def _tp_id(name: str) -> int:
    return btf.kernel_btf().find_one(f"btf_trace_{name}", btf.Kind.TYPEDEF)


TP_CASES = {
    # tracepoint: (skb position, reason position, location position)
    "kfree_skb": (1, 3, 2),
    "consume_skb": (1, 0, 2),
    "netif_receive_skb": (1, 0, 0),
    "net_dev_queue": (1, 0, 0),
}


@pytest.mark.parametrize("extra", [NOTHING, EVERYTHING], ids=["defaults", "all-features"])
@pytest.mark.parametrize("tp", list(TP_CASES))
def test_tp_btf_loads(coll: Collection, tp: str, extra: dict[str, int]) -> None:
    skb, reason, location = TP_CASES[tp]
    constants = {**extra, "cfg_tp_skb_pos": skb, "cfg_tp_reason_pos": reason,
                 "cfg_tp_location_pos": location, "cfg_probe_id": 7}  # fmt: skip
    prog = coll.load_program("tp_skb", attach_btf_id=_tp_id(tp), constants=constants)
    info = prog.info()
    print(f"tp_skb@{tp} {'all' if extra else 'defaults'}: verified_insns={info.verified_insns}")
    assert info.verified_insns > 0
    prog.close()


def test_tp_btf_position_past_the_arguments_is_refused(coll: Collection) -> None:
    """The verifier, not a silent zero, catches a wrong position (consume_skb has two arguments)."""
    with pytest.raises(BPFError) as exc:
        coll.load_program("tp_skb", attach_btf_id=_tp_id("consume_skb"), constants={"cfg_tp_skb_pos": 4})
    assert exc.value.errno == errno.EACCES


def test_fentry_loads_where_allowed(coll: Collection) -> None:
    target = btf.kernel_btf().find_one("ip_rcv", btf.Kind.FUNC)
    try:
        prog = coll.load_program("fentry_skb_1", attach_btf_id=target, constants=EVERYTHING)
    except BPFError as e:
        if e.errno == errno.EPERM:
            pytest.skip("fentry refused by this kernel (lockdown)")
        raise
    info = prog.info()
    print(f"fentry_skb_1@ip_rcv: verified_insns={info.verified_insns}")
    assert info.verified_insns > 0 and info.type == ProgType.TRACING
    prog.close()


def test_the_table_walks_offsets_come_from_btf() -> None:
    """The members the table-walk programs read, from the kernel's BTF (built in here) or its modules'."""
    from pwru import nf_rules
    from pwru.kernel import KernelContext

    kernel = KernelContext(None, (), False)
    try:
        found = nf_rules.offsets(kernel)
    finally:
        kernel.close()
    if not found:
        pytest.skip("neither x_tables nor nf_tables in this kernel's BTF")
    assert set(found) <= set(nf_rules.OFFSETS)
    if "cfg_off_nft_chain_name" in found:
        assert found["cfg_off_nft_pkt_skb"] == 0  # the first member on every kernel since 4.x
        assert found["cfg_off_nft_chain_name"] > found["cfg_off_nft_chain_table"]
