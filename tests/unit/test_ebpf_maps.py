"""Pure helpers of maps/prog: CPU list parsing, object names, argument checks that need no kernel."""

from __future__ import annotations

import pytest

from pwru.ebpf.maps import Map, parse_cpu_list
from pwru.ebpf.syscall import MapType, object_name


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", [0]), ("0-3\n", [0, 1, 2, 3]), ("0,2-3,7", [0, 2, 3, 7]), ("0-1,4-5", [0, 1, 4, 5])],
)
def test_parse_cpu_list(text: str, cpus: list[int]) -> None:
    assert parse_cpu_list(text) == cpus


def test_object_name() -> None:
    assert object_name("ok_name.1") == b"ok_name.1"
    assert object_name("has-dash and space") == b"has_dash_and_sp"
    assert object_name("ünï") == b"_n_"
    assert len(object_name("x" * 40)) == 15


def test_key_encoding_without_kernel() -> None:
    m = Map(-1, MapType.HASH, 4, 8, 16)  # never opened: only the encoders are used
    kb = m._key_buf(258)
    assert kb is not None and kb.raw == b"\x02\x01\x00\x00"
    assert m._key_buf(-1) is not None and m._key_buf(-1).raw == b"\xff" * 4  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        m._key_buf(b"abc")
    with pytest.raises(OverflowError):
        m._key_buf(1 << 40)
    with pytest.raises(ValueError):
        m._encode_value(b"1234")
    with pytest.raises(TypeError):
        m._encode_value([b"12345678"])
    m.close()  # closing a never-opened map is harmless
    with pytest.raises(ValueError):
        _ = m.fd
