"""--output-bpfmap's discovery against real loaded programs (this machine allows loading tc programs, not probing
the map functions: the probes themselves are tested in the lab, tests/e2e/test_lab_tc.py): the map functions the
test datapath's programs call, found in their xlated instructions, and a map's key and value types read back
from its BTF."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pwru import bpfmap
from pwru.btf_value import decode
from pwru.ebpf import btf
from pwru.ebpf.kallsyms import Kallsyms

from .conftest import sh
from .datapath import BPFFS, compile_datapath

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, int], Path]]:
    """The datapath's programs loaded and pinned (not attached): program name -> id, and the maps' pin dir."""
    obj = compile_datapath(tmp_path_factory.mktemp("bpfmap"))
    tag = uuid.uuid4().hex[:8]
    pins, maps = BPFFS / f"pwt-bm-{tag}", BPFFS / f"pwt-bm-{tag}-maps"
    try:
        sh("bpftool", "prog", "loadall", str(obj), str(pins), "pinmaps", str(maps), timeout=120)
        ids = {}
        for name in ("tc_entry", "nat_rewrite", "xdp_drop"):
            info = json.loads(sh("bpftool", "-j", "prog", "show", "pinned", str(pins / name)).stdout)
            ids[name] = int(info["id"])
        yield ids, maps
    finally:
        for pinned in (pins, maps):
            shutil.rmtree(pinned, ignore_errors=True)


def test_the_programs_map_functions_are_found(loaded: tuple[dict[str, int], Path]) -> None:
    ids, _ = loaded
    ksyms = Kallsyms.load()
    functions = bpfmap.map_functions(btf.Spec.load("/sys/kernel/btf/vmlinux"))
    rewrite = bpfmap.called_functions(ksyms, [ids["nat_rewrite"]])
    assert rewrite is not None
    # the inlined hash lookup's call, the update and delete the verifier sent to the hash map's own functions,
    # and the skb helpers (not map functions)
    assert {n for n in rewrite if n in functions} == {"__htab_map_lookup_elem", "htab_map_update_elem",
                                                     "htab_map_delete_elem"}  # fmt: skip
    assert {"bpf_skb_store_bytes", "bpf_l3_csum_replace", "bpf_l4_csum_replace"} <= rewrite
    entry = bpfmap.called_functions(ksyms, [ids["tc_entry"]])
    assert entry is not None and {n for n in entry if n in functions} == {"__htab_map_lookup_elem"}
    assert bpfmap.called_functions(ksyms, [ids["xdp_drop"]]) == set()  # it calls nothing


def test_a_maps_key_and_value_types_come_from_its_btf(loaded: tuple[dict[str, int], Path]) -> None:
    _, maps = loaded
    info = json.loads(sh("bpftool", "-j", "map", "show", "pinned", str(maps / "flows")).stdout)
    types = bpfmap.MapTypes().get(int(info["id"]))
    assert types is not None
    spec, key_id, value_id = types
    key = bytes([10, 99, 0, 9]) + (7000).to_bytes(2, "big") + bytes([17, 0])
    assert decode(spec, key_id, key) == {"daddr": 0x0900630A, "dport": 0x581B, "proto": 17, "pad": 0}
    note = (1).to_bytes(8, "little") + b"natted\0\0"
    assert decode(spec, value_id, note) == {"packets": 1, "tag": "natted"}
    assert bpfmap.MapTypes().get(0x7FFFFFF0) is None  # no such map
