"""kallsyms parsing and lookups, on synthetic text and on this machine's /proc/kallsyms."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pwru.ebpf import kallsyms
from pwru.ebpf.kallsyms import Kallsyms, Symbol

TEXT = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000100 t helper
ffffffff81000200 T ip_rcv
ffffffff81000300 D some_data
ffffffffc0002000 t mod_fn\t[mymod]
ffffffffc0001000 t dup\t[othermod]
ffffffff81000400 t dup
"""


def test_parse_and_lookup() -> None:
    k = Kallsyms.parse(TEXT)
    assert len(k) == 8
    assert not k.restricted
    assert k.lookup(0xFFFFFFFF81000200) == Symbol("ip_rcv", 0, None)
    assert k.lookup(0xFFFFFFFF81000234) == Symbol("ip_rcv", 0x34, None)
    assert k.lookup(0xFFFFFFFF81000005) == Symbol("_stext", 5, None)  # first listed at a shared address
    assert k.lookup(0xFFFFFFFF80000000) is None
    assert k.lookup(0xFFFFFFFFC0002010) == Symbol("mod_fn", 0x10, "mymod")
    assert k.lookup(0xFFFFFFFFC0001FFF) == Symbol("dup", 0xFFF, "othermod")  # unsorted input gets sorted
    assert str(Symbol("mod_fn", 0x10, "mymod")) == "mod_fn+0x10 [mymod]"
    assert k.address("ip_rcv") == 0xFFFFFFFF81000200
    assert k.address("dup") == 0xFFFFFFFF81000400  # vmlinux preferred
    assert k.address("dup", "othermod") == 0xFFFFFFFFC0001000
    assert k.address("mod_fn", "nope") is None
    assert k.address("missing") is None
    assert {s.module for s in k.symbols("dup")} == {None, "othermod"}
    assert k.names() >= {"ip_rcv", "some_data", "mod_fn"}
    assert k.text_names() == {"_stext", "_text", "helper", "ip_rcv", "mod_fn", "dup"}
    assert k.text_names(exclude=[(0xFFFFFFFF81000100, 0xFFFFFFFF81000300)]) == {
        "_stext",
        "_text",
        "mod_fn",
        "dup",
    }


@pytest.mark.parametrize("slice_", [kallsyms.PARSE_SLICE, 1, 7])
def test_addresses_in_one_pass_agree_with_address(slice_: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kallsyms, "PARSE_SLICE", slice_)  # the names are split a slice at a time
    k = Kallsyms.parse(TEXT)
    wanted = [("ip_rcv", None), ("dup", None), ("dup", "othermod"), ("mod_fn", "nope"), ("missing", None),
              ("mod_fn", None)]  # fmt: skip
    found = k.addresses(wanted)
    assert found == {w: k.address(*w) for w in wanted if k.address(*w) is not None}
    assert found[("dup", None)] == 0xFFFFFFFF81000400 and ("missing", None) not in found
    assert Kallsyms.parse("0000000000000000 T a\n").addresses([("a", None)]) == {}


def test_restricted() -> None:
    k = Kallsyms.parse("0000000000000000 T a\n0000000000000000 t b\n")
    assert k.restricted
    assert k.lookup(0x1234) is None
    assert k.address("a") is None


@pytest.mark.skipif(not Path("/proc/kallsyms").exists(), reason="no /proc/kallsyms")
def test_real_kallsyms() -> None:
    k = Kallsyms.load()
    lines = Path("/proc/kallsyms").read_text().splitlines()
    assert len(k) == len(lines)
    if k.restricted:
        pytest.skip("kptr_restrict hides addresses")
    want = {}
    for line in lines:
        parts = line.split()
        if parts[2] in ("ip_rcv", "tcp_v4_rcv", "kfree_skb_list_reason") and len(parts) == 3:
            want[parts[2]] = int(parts[0], 16)
    assert "ip_rcv" in want
    for name, addr in want.items():
        assert k.address(name) == addr
        assert k.lookup(addr) == Symbol(name, 0, None)
        assert k.lookup(addr + 3) == Symbol(name, 3, None)
    assert "ip_rcv" in k.text_names()


def test_lazy_load_reads_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text("ffffffff81000000 T first\n")
    k = Kallsyms.load(path, lazy=True)
    path.write_text("ffffffff81000000 T second\n")  # not read yet: the new content is what it sees
    assert k.lookup(0xFFFFFFFF81000001) == Symbol("second", 1, None)
    assert len(k) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0xFFFFFFFF81000000, 0xFFFFFFFF81000040),
            st.sampled_from("tTdD"),
            st.sampled_from(["a", "b", "ip_rcv", "x" * 40]),
            st.sampled_from([None, "m1", "m2"]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([8, 64, 1 << 20]),
)
def test_any_order_matches_a_sorted_model(rows: list[tuple[int, str, str, str | None]], slice_: int) -> None:
    text = "".join(f"{a:016x} {t} {n}" + (f"\t[{m}]" if m else "") + "\n" for a, t, n, m in rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kallsyms, "PARSE_SLICE", slice_)
        k = Kallsyms.parse(text)
    model = sorted(range(len(rows)), key=lambda i: rows[i][0])  # stable, as the table promises
    assert [(s.address, s.type, s.name, s.module) for s in k] == [rows[i] for i in model]
    for probe in range(0xFFFFFFFF81000000 - 1, 0xFFFFFFFF81000042, 7):
        below = [i for i in model if rows[i][0] <= probe]
        want = None
        if below:
            top = rows[below[-1]][0]
            first = next(i for i in model if rows[i][0] == top)
            want = Symbol(rows[first][2], probe - top, rows[first][3])
        assert k.lookup(probe) == want
    assert k.text_names() == {n for _, t, n, _ in rows if t in "tT"}
    for name in ("a", "ip_rcv"):
        assert sorted(s.address for s in k.symbols(name)) == sorted(a for a, _, n, _ in rows if n == name)
