"""BPF maps: create one, read and write its elements, iterate it, freeze it.

A :class:`Map` owns one file descriptor. Keys and values are ``bytes`` of the map's key and value size; an
``int`` key is accepted too and encoded little-endian in ``key_size`` bytes (array maps, int-keyed hashes).
Per-CPU maps exchange one value per possible CPU: lookups return a list, updates take a list (or one value
for every CPU). Queue and stack maps have no keys: use :meth:`Map.push`, :meth:`Map.pop` and :meth:`Map.peek`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pwru.ebpf import syscall
from pwru.ebpf.fd import FDObject
from pwru.ebpf.syscall import BPFError, Cmd, MapType

_PERCPU_TYPES = frozenset(
    {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH, MapType.PERCPU_CGROUP_STORAGE}
)
_KEYLESS_TYPES = frozenset({MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER})

Key = bytes | int


def parse_cpu_list(text: str) -> list[int]:
    """Parse a kernel CPU list such as ``0-3,6,8-9`` into the CPU numbers it names."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep:
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(lo))
    return cpus


@functools.cache
def possible_cpus() -> int:
    """How many CPUs the kernel counts as possible: the number of slots in a per-CPU map value."""
    with open("/sys/devices/system/cpu/possible") as f:
        return len(parse_cpu_list(f.read()))


def _round8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports about a map (``BPF_OBJ_GET_INFO_BY_FD``)."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str
    btf_id: int
    map_extra: int
    btf_key_type_id: int = 0  # the key's and value's types in the map's BTF (btf_id), 0 when it has none
    btf_value_type_id: int = 0


class Map(FDObject):
    """A kernel BPF map, owning its file descriptor.

    Build one with :meth:`create` (a new map), :meth:`from_fd` (adopt a descriptor) or :meth:`from_id`.
    ``close()`` may be called any number of times; the object is a context manager.
    """

    _what = "map"

    def __init__(
        self,
        fd: int,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int = 0,
        name: str = "",
    ) -> None:
        super().__init__(fd)
        self.type = MapType(map_type) if map_type in MapType._value2member_map_ else map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.name = name

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        *,
        flags: int = 0,
        name: str = "",
        btf_fd: int | None = None,
        btf_key_type_id: int = 0,
        btf_value_type_id: int = 0,
        btf_vmlinux_value_type_id: int = 0,
        map_extra: int = 0,
        inner_map_fd: int = 0,
        numa_node: int | None = None,
    ) -> Map:
        """Create a map (``BPF_MAP_CREATE``). Raises :class:`BPFError` with the kernel's errno on refusal."""
        attr = syscall.MapCreateAttr(
            map_type=int(map_type),
            key_size=key_size,
            value_size=value_size,
            max_entries=max_entries,
            map_flags=flags,
            inner_map_fd=inner_map_fd,
            map_extra=map_extra,
        )
        if numa_node is not None:
            attr.map_flags |= 1 << 2  # BPF_F_NUMA_NODE
            attr.numa_node = numa_node
        attr.map_name = syscall.object_name(name)
        if btf_fd is not None:
            attr.btf_fd = btf_fd
            attr.btf_key_type_id = btf_key_type_id
            attr.btf_value_type_id = btf_value_type_id
            attr.btf_vmlinux_value_type_id = btf_vmlinux_value_type_id
        fd = syscall.bpf(Cmd.MAP_CREATE, attr)
        return cls(fd, map_type, key_size, value_size, max_entries, flags, name)

    @classmethod
    def ringbuf(cls, size: int, *, name: str = "") -> Map:
        """A ring buffer map of ``size`` bytes (a power of two, a multiple of the page size)."""
        return cls.create(MapType.RINGBUF, 0, 0, size, name=name)

    @classmethod
    def from_fd(cls, fd: int) -> Map:
        """Adopt an existing map descriptor (the new object owns and will close it)."""
        info = _map_info(fd)
        return cls(fd, info.type, info.key_size, info.value_size, info.max_entries, info.flags, info.name)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open the map with kernel id ``map_id``."""
        return cls.from_fd(syscall.get_fd_by_id(Cmd.MAP_GET_FD_BY_ID, map_id))

    # --- life cycle: fd, closed, close() and the context manager come from FDObject ---------------

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, MapType) else str(self.type)
        return f"Map({self.name!r}, {t}, fd={self._fd})"

    @property
    def info(self) -> MapInfo:
        """The kernel's view of the map (id, type, sizes, flags, name, BTF id)."""
        return _map_info(self.fd)

    @property
    def is_percpu(self) -> bool:
        return self.type in _PERCPU_TYPES

    @property
    def percpu_stride(self) -> int:
        """Bytes per CPU in a per-CPU value buffer (the value size rounded up to 8)."""
        return _round8(self.value_size)

    def freeze(self) -> None:
        """Make the map read-only for user space from now on (``BPF_MAP_FREEZE``)."""
        syscall.map_freeze(self.fd)

    # --- element access ----------------------------------------------------------------------------

    def _key_buf(self, key: Key | None) -> ctypes.Array[ctypes.c_char] | None:
        if key is None:
            return None
        kb = key.to_bytes(self.key_size, "little", signed=key < 0) if isinstance(key, int) else bytes(key)
        if len(kb) != self.key_size:
            raise ValueError(f"key is {len(kb)} bytes, map {self.name or '?'} wants {self.key_size}")
        return ctypes.create_string_buffer(kb, len(kb))

    def _value_buf_size(self) -> int:
        if self.is_percpu:
            return self.percpu_stride * possible_cpus()
        return self.value_size

    def _encode_value(self, value: bytes | Sequence[bytes]) -> ctypes.Array[ctypes.c_char]:
        if self.is_percpu:
            n = possible_cpus()
            values = [bytes(value)] * n if isinstance(value, bytes | bytearray | memoryview) else list(value)
            if len(values) != n:
                raise ValueError(f"per-CPU map wants {n} values, got {len(values)}")
            stride = self.percpu_stride
            buf = ctypes.create_string_buffer(stride * n)
            for i, v in enumerate(values):
                if len(v) != self.value_size:
                    raise ValueError(f"value is {len(v)} bytes, map wants {self.value_size}")
                ctypes.memmove(ctypes.addressof(buf) + i * stride, bytes(v), len(v))
            return buf
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("value must be bytes for a map that is not per-CPU")
        vb = bytes(value)
        if len(vb) != self.value_size:
            raise ValueError(f"value is {len(vb)} bytes, map {self.name or '?'} wants {self.value_size}")
        return ctypes.create_string_buffer(vb, max(len(vb), 1))

    def _decode_value(self, buf: ctypes.Array[ctypes.c_char]) -> bytes | list[bytes]:
        raw = buf.raw
        if self.is_percpu:
            s = self.percpu_stride
            return [raw[i * s : i * s + self.value_size] for i in range(possible_cpus())]
        return raw[: self.value_size]

    def _elem(self, cmd: Cmd, key: Key | None, value: object = None, flags: int = 0) -> None:
        kb = self._key_buf(key)
        attr = syscall.MapElemAttr(map_fd=self.fd, key=syscall.addr(kb), flags=flags)
        if value is not None:
            attr.value = syscall.addr(value)
        syscall.bpf(cmd, attr)

    def _elem_or_absent(self, cmd: Cmd, key: Key | None, value: object = None) -> bool:
        """Run an element command; False when the kernel says there is no such element (ENOENT)."""
        try:
            self._elem(cmd, key, value)
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def _read(self, cmd: Cmd, key: Key | None) -> bytes | list[bytes] | None:
        buf = ctypes.create_string_buffer(max(self._value_buf_size(), 1))
        return self._decode_value(buf) if self._elem_or_absent(cmd, key, buf) else None

    def lookup(self, key: Key | None) -> bytes | list[bytes] | None:
        """The value at ``key``, or None when absent. Per-CPU maps return one value per possible CPU."""
        return self._read(Cmd.MAP_LOOKUP_ELEM, key)

    def __getitem__(self, key: Key) -> bytes | list[bytes]:
        v = self.lookup(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key: Key, value: bytes | Sequence[bytes]) -> None:
        self.update(key, value)

    def __delitem__(self, key: Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes | int):
            return False
        return self.lookup(key) is not None

    def update(self, key: Key | None, value: bytes | Sequence[bytes], flags: int = syscall.BPF_ANY) -> None:
        """Set ``key`` to ``value`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._elem(Cmd.MAP_UPDATE_ELEM, key, self._encode_value(value), flags)

    def delete(self, key: Key) -> bool:
        """Remove ``key``; False when it was not there."""
        return self._elem_or_absent(Cmd.MAP_DELETE_ELEM, key)

    def lookup_and_delete(self, key: Key | None) -> bytes | list[bytes] | None:
        """Atomically read and remove ``key`` (hash maps on kernels >= 5.14; queues/stacks: key None)."""
        return self._read(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, key)

    # Queue / stack maps.
    def push(self, value: bytes, flags: int = syscall.BPF_ANY) -> None:
        """Queue/stack: add ``value`` (``BPF_EXIST`` makes a full map drop its oldest element)."""
        self.update(None, value, flags)

    def pop(self) -> bytes | None:
        """Queue/stack: remove and return the next element, or None when empty."""
        v = self.lookup_and_delete(None)
        assert not isinstance(v, list)
        return v

    def peek(self) -> bytes | None:
        """Queue/stack: the next element without removing it, or None when empty."""
        v = self.lookup(None)
        assert not isinstance(v, list)
        return v

    # --- iteration ---------------------------------------------------------------------------------

    def next_key(self, key: Key | None) -> bytes | None:
        """The key after ``key`` (None: the first key), or None at the end (``BPF_MAP_GET_NEXT_KEY``)."""
        out = ctypes.create_string_buffer(max(self.key_size, 1))
        return out.raw[: self.key_size] if self._elem_or_absent(Cmd.MAP_GET_NEXT_KEY, key, out) else None

    def keys(self) -> Iterator[bytes]:
        """Every key, in the kernel's order. Keys deleted meanwhile may make a hash walk restart."""
        if self.type in _KEYLESS_TYPES or self.key_size == 0:
            raise TypeError(f"{self!r} has no keys")
        key = self.next_key(None)
        seen = 0
        while key is not None:
            yield key
            seen += 1
            if seen > max(self.max_entries, 1) * 4:
                return  # a map changing under us must not make us loop forever
            key = self.next_key(key)

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """(key, value) pairs; keys that vanish between the two calls are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def values(self) -> Iterator[bytes | list[bytes]]:
        for _, value in self.items():
            yield value

    # --- conveniences ------------------------------------------------------------------------------

    def lookup_u64(self, key: Key) -> int | None:
        """The value at ``key`` read as an unsigned little-endian 64-bit counter, or None when absent.

        For a per-CPU map (``PERCPU_ARRAY``, ``PERCPU_HASH``, ...) this is the **sum** of every CPU's value,
        the total a per-CPU counter stands for. Only the first 8 bytes of a value count (a value of fewer
        bytes is read whole); a map whose values are larger holds more than one counter.
        """
        v = self.lookup(key)
        if v is None:
            return None
        values = v if isinstance(v, list) else [v]
        return sum(int.from_bytes(x[:8], "little") for x in values)

    def stack_trace(self, stack_id: int) -> list[int]:
        """A stack trace map's frames for ``stack_id``: instruction addresses, innermost first."""
        raw = self.lookup(stack_id)
        if raw is None or isinstance(raw, list):
            return []
        frames: list[int] = []
        for off in range(0, len(raw) - 7, 8):
            ip = int.from_bytes(raw[off : off + 8], "little")
            if ip == 0:
                break
            frames.append(ip)
        return frames


def _map_info(fd: int) -> MapInfo:
    info = syscall.MapInfo()
    syscall.obj_get_info_by_fd(fd, info)
    return MapInfo(
        id=info.id,
        type=info.type,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
        name=info.name.decode(errors="replace"),
        btf_id=info.btf_id,
        map_extra=info.map_extra,
        btf_key_type_id=info.btf_key_type_id,
        btf_value_type_id=info.btf_value_type_id,
    )
