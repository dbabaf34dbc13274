"""Maps against the real kernel: create, element access, iteration, per-CPU values, queues, freeze."""

from __future__ import annotations

import errno
import os

import pytest

from pwru.ebpf.maps import Map, possible_cpus
from pwru.ebpf.syscall import BPF_EXIST, BPF_NOEXIST, BPFError, MapType

pytestmark = pytest.mark.root


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_hash_crud_and_iteration() -> None:
    with Map.create(MapType.HASH, 4, 8, 64, name="t_hash") as m:
        assert m.lookup(1) is None
        for i in range(10):
            m.update(i, (i * 3).to_bytes(8, "little"))
        assert m.lookup(7) == (21).to_bytes(8, "little")
        assert m.lookup_u64(7) == 21
        assert sorted(int.from_bytes(k, "little") for k in m) == list(range(10))
        assert dict(m.items())[(4).to_bytes(4, "little")] == (12).to_bytes(8, "little")
        with pytest.raises(BPFError) as e:
            m.update(3, bytes(8), BPF_NOEXIST)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(BPFError) as e:
            m.update(99, bytes(8), BPF_EXIST)
        assert e.value.errno == errno.ENOENT
        assert m.delete(3) is True
        assert m.delete(3) is False
        assert 3 not in m and 4 in m
        with pytest.raises(KeyError):
            _ = m[3]
        with pytest.raises(ValueError):
            m.update(1, b"short")
        with pytest.raises(ValueError):
            m.lookup(b"\x00\x01")


def test_info_and_close_idempotent() -> None:
    m = Map.create(MapType.ARRAY, 4, 16, 8, name="t-info/with junk")
    info = m.info
    assert info.type == MapType.ARRAY and info.key_size == 4 and info.value_size == 16
    assert info.max_entries == 8 and info.id > 0
    assert info.name == "t_info_with_jun"  # sanitised and cut to 15 characters
    fd = m.fd
    again = Map.from_id(info.id)
    assert again.info.id == info.id
    again.close()
    m.close()
    m.close()
    assert not _fd_open(fd)
    with pytest.raises(ValueError):
        _ = m.fd


def test_array_int_keys_and_freeze() -> None:
    with Map.create(MapType.ARRAY, 4, 4, 4, flags=0) as m:
        assert list(m.keys()) == [i.to_bytes(4, "little") for i in range(4)]
        m[2] = b"abcd"
        assert m[2] == b"abcd"
        assert m.lookup(10) is None
        m.freeze()
        with pytest.raises(BPFError) as e:
            m[1] = b"wxyz"
        assert e.value.errno == errno.EPERM
        assert m[2] == b"abcd"


def test_percpu_values() -> None:
    n = possible_cpus()
    with Map.create(MapType.PERCPU_ARRAY, 4, 12, 2) as m:
        assert m.is_percpu and m.percpu_stride == 16
        values = [bytes([i + 1]) * 12 for i in range(n)]
        m.update(1, values)
        assert m.lookup(1) == values
        m.update(0, (5).to_bytes(12, "little"))  # one value for every CPU
        assert m.lookup(0) == [(5).to_bytes(12, "little")] * n
        assert m.lookup_u64(0) == 5 * n
        with pytest.raises(ValueError):
            m.update(0, [bytes(12)] * (n + 1))
    with Map.create(MapType.PERCPU_HASH, 8, 8, 16) as h:
        h.update(b"k" * 8, [i.to_bytes(8, "little") for i in range(n)])
        [(k, v)] = list(h.items())
        assert k == b"k" * 8 and v == [i.to_bytes(8, "little") for i in range(n)]


def test_lookup_u64_sums_a_per_cpu_counter() -> None:
    n = possible_cpus()
    with Map.create(MapType.PERCPU_ARRAY, 4, 8, 1) as m:
        m.update(0, [(1000 + cpu).to_bytes(8, "little") for cpu in range(n)])
        assert m.lookup_u64(0) == sum(1000 + cpu for cpu in range(n))
    with Map.create(MapType.PERCPU_ARRAY, 4, 16, 1) as wide:  # a counter followed by other data
        wide.update(0, (7).to_bytes(8, "little") + b"\xff" * 8)
        assert wide.lookup_u64(0) == 7 * n
    with Map.create(MapType.HASH, 4, 8, 4) as h:
        assert h.lookup_u64(3) is None
        h.update(3, (1 << 63).to_bytes(8, "little"))
        assert h.lookup_u64(3) == 1 << 63  # unsigned


def test_queue_and_stack() -> None:
    with Map.create(MapType.QUEUE, 0, 4, 3) as q:
        assert q.pop() is None
        for i in range(3):
            q.push(i.to_bytes(4, "little"))
        with pytest.raises(BPFError) as e:
            q.push(b"full")
        assert e.value.errno == errno.E2BIG
        q.push(b"\x09\x00\x00\x00", BPF_EXIST)  # drops the oldest
        assert q.peek() == (1).to_bytes(4, "little")
        assert [q.pop() for _ in range(4)] == [
            (1).to_bytes(4, "little"),
            (2).to_bytes(4, "little"),
            (9).to_bytes(4, "little"),
            None,
        ]
        with pytest.raises(TypeError):
            list(q.keys())
    with Map.create(MapType.STACK, 0, 4, 3) as s:
        s.push(b"aaaa")
        s.push(b"bbbb")
        assert s.pop() == b"bbbb"


def test_ringbuf_and_stack_trace_maps_create() -> None:
    with Map.ringbuf(4096 * 4, name="rb") as rb:
        assert rb.info.type == MapType.RINGBUF and rb.info.max_entries == 4096 * 4
    with pytest.raises(BPFError) as e:
        Map.ringbuf(5000)
    assert e.value.errno == errno.EINVAL
    with Map.create(MapType.STACK_TRACE, 4, 8 * 127, 16) as st:
        assert st.stack_trace(3) == []


def test_hash_lookup_and_delete() -> None:
    with Map.create(MapType.HASH, 4, 4, 4) as m:
        m.update(1, b"one!")
        assert m.lookup_and_delete(1) == b"one!"
        assert m.lookup(1) is None
        assert m.lookup_and_delete(1) is None
