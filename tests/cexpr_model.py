"""A model for testing pwru.cexpr: a small kernel-like BTF, memory images of it, a generator of well-typed
expressions over it, and a reference evaluator written from the documented semantics (not from the compiler).

The BTF's root struct is named ``sk_buff`` (the compiler's root for ``skb``) and holds every kind of member the
compiler handles: integers of each size and signedness, an enum, bitfields (signed and not, straddling bytes),
nested and anonymous structs and unions, arrays of integers and of structs, char arrays, and pointers to a
struct and to bytes. Memory: the root image and the images its pointers point at, each padded so reads near a
struct's end never straddle a region's end (the compiler reads bitfields with the narrowest covering width).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from pwru.cexpr.parse import Binary, Index, IntLit, Member, Name, Node, StrLit, Unary
from pwru.ebpf import btf

M64 = (1 << 64) - 1
ROOT_BASE = 0x4000_0000_0000
INNER_BASE = 0x4100_0000_0000
BYTES_BASE = 0x4200_0000_0000
UNMAPPED = 0x4F00_0000_0000
PAD = 16


def model_btf() -> btf.Spec:
    empty = btf._HEADER.pack(btf.BTF_MAGIC, 1, 0, btf._HEADER.size, 0, 0, 0, 1) + b"\0"
    s = btf.Spec.from_bytes(empty)
    u8 = s.add(btf.Int("unsigned char", 1, 0, 0, 8))
    char = s.add(btf.Int("char", 1, btf.INT_SIGNED, 0, 8))
    s8 = s.add(btf.Int("signed char", 1, btf.INT_SIGNED, 0, 8))
    u16 = s.add(btf.Int("unsigned short", 2, 0, 0, 16))
    s16 = s.add(btf.Int("short", 2, btf.INT_SIGNED, 0, 16))
    u32 = s.add(btf.Int("unsigned int", 4, 0, 0, 32))
    s32 = s.add(btf.Int("int", 4, btf.INT_SIGNED, 0, 32))
    u64 = s.add(btf.Int("unsigned long", 8, 0, 0, 64))
    s64 = s.add(btf.Int("long", 8, btf.INT_SIGNED, 0, 64))
    boolean = s.add(btf.Int("_Bool", 1, btf.INT_BOOL, 0, 8))
    u32_t = s.add(btf.Typedef("__u32", u32))
    cu32 = s.add(btf.Const(u32_t))
    kind = s.add(btf.Enum("kind", 4, (btf.EnumValue("K_A", 0), btf.EnumValue("K_B", 1), btf.EnumValue("K_C", 7))))
    name8 = s.add(btf.Array(char, u32, 8))
    name16 = s.add(btf.Array(char, u32, 16))
    inner = s.add(btf.Struct("inner", 24, (
        btf.Member("a", u32, 0),
        btf.Member("b", s16, 32),
        btf.Member("bits", u8, 48, 3),
        btf.Member("sbits", s8, 51, 4),
        btf.Member("wide", u16, 55, 9),  # straddles bytes 6 and 7
        btf.Member("name", name8, 64),
        btf.Member("flag", boolean, 128),
        btf.Member("c", s8, 136),
    ), kind_flag=True))  # fmt: skip
    inner_ptr = s.add(btf.Pointer(inner))
    bytes_ptr = s.add(btf.Pointer(u8))
    char_ptr = s.add(btf.Pointer(char))
    u32x4 = s.add(btf.Array(cu32, u32, 4))
    inner_x2 = s.add(btf.Array(inner, u32, 2))
    anon_union = s.add(btf.Union("", 4, (btf.Member("ua", u32, 0), btf.Member("ub", u16, 0))))
    anon_struct = s.add(btf.Struct("", 8, (btf.Member("sa", s32, 0), btf.Member("sb", u16, 32))))
    s.add(btf.Struct("sk_buff", 176, (
        btf.Member("x", u64, 0),
        btf.Member("y", s32, 64),
        btf.Member("z", u16, 96),
        btf.Member("w", u8, 112),
        btf.Member("v", s8, 120),
        btf.Member("in", inner, 128),
        btf.Member("ptr", inner_ptr, 320),
        btf.Member("arr", u32x4, 384),
        btf.Member("bytes", bytes_ptr, 512),
        btf.Member("", anon_union, 576),
        btf.Member("kind", kind, 608),
        btf.Member("ins", inner_x2, 640),
        btf.Member("big", u32, 1024, 20),
        btf.Member("huge", u64, 1044, 40),
        btf.Member("sneg", s64, 1088, 0),
        btf.Member("", anon_struct, 1152),
        btf.Member("dev_name", name16, 1216),
        btf.Member("label", char_ptr, 1088 + 256),
    ), kind_flag=True))  # fmt: skip
    del s64, u64
    return btf.Spec.from_bytes(s.encode())


ROOT_SIZE = 176  # covers label at byte 168
INNER_SIZE = 24


@dataclass
class Image:
    """The memory an expression sees: regions by base address."""

    regions: dict[int, bytes]

    def read(self, addr: int, size: int) -> int:
        """``size`` bytes at ``addr`` little-endian, 0 when they are not all inside one region (as the
        kernel's probe read: all or nothing)."""
        for base, data in self.regions.items():
            if base <= addr and addr + size <= base + len(data):
                return int.from_bytes(data[addr - base : addr - base + size], "little")
        return 0

    def read_bytes(self, addr: int, size: int) -> bytes:
        for base, data in self.regions.items():
            if base <= addr and addr + size <= base + len(data):
                return data[addr - base : addr - base + size]
        return bytes(size)


@st.composite
def images(draw: st.DrawFn) -> Image:
    root = bytearray(draw(st.binary(min_size=ROOT_SIZE + PAD, max_size=ROOT_SIZE + PAD)))
    inner = bytearray(draw(st.binary(min_size=INNER_SIZE + PAD, max_size=INNER_SIZE + PAD)))
    raw = draw(st.binary(min_size=64, max_size=64))
    words = (INNER_BASE, 0, UNMAPPED)
    struct.pack_into("<Q", root, 40, draw(st.sampled_from(words)))
    struct.pack_into("<Q", root, 64, draw(st.sampled_from((BYTES_BASE, 0, UNMAPPED))))
    struct.pack_into("<Q", root, 168, draw(st.sampled_from((BYTES_BASE, BYTES_BASE + 8, 0))))
    texts = st.sampled_from((b"", b"lo", b"eth0", b"veth123", b"abcdefg", b"abcdefgh"))
    for buf, at, size in ((root, 24, 8), (root, 88, 8), (root, 112, 8), (root, 152, 16), (inner, 8, 8)):
        if draw(st.booleans()):  # make the char arrays often hold the strings the expressions compare with
            text = draw(texts)
            buf[at : at + len(text) + (len(text) < size)] = text + (b"\0" if len(text) < size else b"")
    if draw(st.booleans()):
        raw = b"lo\0" + raw[3:]
    return Image({ROOT_BASE: bytes(root), INNER_BASE: bytes(inner), BYTES_BASE: raw})


# --- expressions -------------------------------------------------------------------------------------------------

SCALARS = (
    "skb->x", "skb->y", "skb->z", "skb->w", "skb->v", "skb->in.a", "skb->in.b", "skb->in.bits", "skb->in.sbits",
    "skb->in.wide", "skb->in.flag", "skb->in.c", "skb->in.name[1]", "skb->ptr->a", "skb->ptr->sbits",
    "skb->ptr->name[0]", "skb->arr[0]", "skb->arr[3]", "skb->bytes[0]", "skb->bytes[9]", "skb->ua", "skb->ub",
    "skb->kind", "skb->ins[1].b", "skb->ins[0].wide", "skb->big", "skb->huge", "skb->sneg", "skb->sa", "skb->sb",
    "skb->dev_name[2]", "skb->label[1]", "skb->arr[skb->w & 7]", "skb->arr[skb->v]", "skb->ins[skb->z & 1].sbits",
    "skb->bytes[skb->w & 31]", "skb->ins[skb->w & 1].name[skb->v & 7]", "skb->ptr",
)  # fmt: skip
STRINGS = ("skb->in.name", "skb->ptr->name", "skb->dev_name", "skb->ins[skb->w & 1].name", "skb->label")
LITERALS = ('""', '"lo"', '"eth0"', '"veth123"', '"veth1234"', '"abcdefg"', '"abcdefgh"')


@st.composite
def constants(draw: st.DrawFn) -> str:
    edges = st.sampled_from((0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 63))
    n = draw(st.one_of(st.integers(0, 16), st.integers(0, 1 << 32), st.integers(0, M64), edges))
    form = draw(st.sampled_from(("dec", "hex", "oct", "bin", "u")))
    if form == "hex":
        return hex(n)
    if form == "oct":
        return "0" + oct(n)[2:] if n else "0"
    if form == "bin":
        return bin(n)
    return f"{n}u" if form == "u" else str(n)


def expressions(max_leaves: int = 8) -> st.SearchStrategy[str]:
    leaves = st.one_of(st.sampled_from(SCALARS), constants())
    string_cmp = st.builds(lambda a, op, b: f"({a} {op} {b})", st.sampled_from(STRINGS), st.sampled_from(("==", "!=")),
                           st.sampled_from(LITERALS))  # fmt: skip
    ops = ("||", "&&", "|", "^", "&", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*")

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(ops), inner)
        shift = st.builds(lambda a, op, n: f"({a}) {op} {n}", inner, st.sampled_from(("<<", ">>")), st.integers(0, 63))
        unary = st.builds(lambda op, a: f"{op}({a})", st.sampled_from(("!", "~", "-", "+")), inner)
        return st.one_of(binary, shift, unary, inner.map(lambda a: f"({a})"))

    return st.recursive(st.one_of(leaves, string_cmp), extend, max_leaves=max_leaves)


# --- the reference ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class V:
    value: int  # mod 2**64
    unsigned: bool
    pointer: bool = False


class Reference:
    """Evaluates an expression's syntax tree over an image, by the semantics the README documents."""

    def __init__(self, spec: btf.Spec, image: Image) -> None:
        self.spec, self.image = spec, image
        self.root = next(i for i in spec.find("sk_buff") if spec.kind_of(i) == btf.Kind.STRUCT)

    # places: (address, type id, bitfield (bit offset, bits) or None); address 0 reads as 0

    def place(self, node: Node) -> tuple[int, int, tuple[int, int] | None]:
        if isinstance(node, Member):
            if node.arrow:
                ptr = self.value(node.base)
                return self._member(ptr.value, self._pointee(node.base), node.name)
            addr, tid, _ = self.place(node.base)
            return self._member(addr, self.spec.resolve(tid), node.name)
        if isinstance(node, Index):
            idx = self.value(node.index)
            i = _s64(idx.value)
            addr, tid, _ = self.place(node.base)
            t = self.spec.resolve_type(tid)
            if isinstance(t, btf.Array):
                size = self.spec.size_of(t.type)
                if not 0 <= i < t.nelems:
                    return 0, t.type, None
                return (addr + i * size) & M64 if addr else 0, t.type, None
            assert isinstance(t, btf.Pointer)
            ptr = self.value(node.base)
            size = self.spec.size_of(t.type)
            return (ptr.value + i * size) & M64 if ptr.value else 0, t.type, None
        raise TypeError(f"not a place: {node}")

    def _member(self, addr: int, struct_id: int, name: str) -> tuple[int, int, tuple[int, int] | None]:
        comp = self.spec.type(struct_id)
        assert isinstance(comp, btf.Struct | btf.Union), comp
        hit = self.spec.find_member(comp, name)
        assert hit is not None
        m, extra = hit
        bit_offset = m.bit_offset + extra
        if m.bitfield_size:
            return (addr + bit_offset // 8) if addr else 0, m.type, (bit_offset % 8, m.bitfield_size)
        return (addr + bit_offset // 8) if addr else 0, m.type, None

    def _pointee(self, node: Node) -> int:
        """The struct a pointer-valued node points at."""
        if isinstance(node, Name):
            return self.root
        t = self.spec.resolve_type(self.place(node)[1])
        assert isinstance(t, btf.Pointer)
        return self.spec.resolve(t.type)

    def load(self, addr: int, tid: int, bits: tuple[int, int] | None) -> V:
        t = self.spec.resolve_type(tid)
        if isinstance(t, btf.Pointer):
            return V(self.image.read(addr, 8) if addr else 0, True, True)
        assert isinstance(t, btf.Int | btf.Enum), t
        signed = bool(t.signed)
        if bits is not None:
            shift, n = bits
            raw = self.image.read(addr, next(w for w in (1, 2, 4, 8) if shift + n <= 8 * w)) if addr else 0
            v = (raw >> shift) & ((1 << n) - 1)
            if signed and v >> (n - 1):
                v -= 1 << n
            return V(v & M64, t.size == 8 and not signed)  # a bitfield keeps its declared type, as gcc's
        size = t.size
        v = self.image.read(addr, size) if addr else 0
        if signed and v >> (8 * size - 1):
            v -= 1 << (8 * size)
        return V(v & M64, size == 8 and not signed)

    def value(self, node: Node) -> V:
        if isinstance(node, Name):
            return V(ROOT_BASE, True, True) if node.name == "skb" else _fail(f"unknown {node.name}")
        if isinstance(node, IntLit):
            return V(node.value & M64, node.unsigned or node.value >= 1 << 63)
        if isinstance(node, Member | Index):
            return self.load(*self.place(node))
        if isinstance(node, Unary):
            v = self.value(node.operand)
            if node.op == "!":
                return V(int(v.value == 0), False)
            if v.pointer:
                raise TypeError("pointer arithmetic")
            if node.op == "+":
                return v
            return V((-v.value if node.op == "-" else ~v.value) & M64, v.unsigned)
        if isinstance(node, Binary):
            return self.binary(node)
        raise TypeError(f"{node}")

    def binary(self, node: Binary) -> V:
        op = node.op
        if op in ("&&", "||"):
            left = self.value(node.left).value != 0
            if op == "&&":
                return V(int(left and self.value(node.right).value != 0), False)
            return V(int(left or self.value(node.right).value != 0), False)
        if isinstance(node.right, StrLit) or isinstance(node.left, StrLit):
            lit, other = (node.right, node.left) if isinstance(node.right, StrLit) else (node.left, node.right)
            assert isinstance(lit, StrLit)
            addr, tid, _ = self.place(other)
            t = self.spec.resolve_type(tid)
            if isinstance(t, btf.Array):
                length = min(len(lit.value) + 1, t.nelems)
            else:
                assert isinstance(t, btf.Pointer)
                addr, length = self.image.read(addr, 8) if addr else 0, len(lit.value) + 1
            want = lit.value.ljust(length, b"\0")[:length]
            got = b"".join(self.image.read_bytes(addr + i, min(8, length - i)) if addr else bytes(min(8, length - i))
                           for i in range(0, length, 8))  # fmt: skip
            equal = got == want
            return V(int(equal if op == "==" else not equal), False)
        left, right = self.value(node.left), self.value(node.right)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            if left.pointer != right.pointer and not (isinstance(node.left, IntLit) or isinstance(node.right, IntLit)):
                raise TypeError("pointer vs integer")
            signed = not (left.unsigned or right.unsigned)
            a, b = (_s64(left.value), _s64(right.value)) if signed else (left.value, right.value)
            result = {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
            return V(int(result), False)
        if left.pointer or right.pointer:
            raise TypeError("pointer arithmetic")
        if op in ("<<", ">>"):
            n = right.value & 63
            if op == "<<":
                return V((left.value << n) & M64, left.unsigned)
            return V((left.value >> n if left.unsigned else (_s64(left.value) >> n) & M64), left.unsigned)
        fn = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "&": lambda a, b: a & b,
              "|": lambda a, b: a | b, "^": lambda a, b: a ^ b}[op]  # fmt: skip
        return V(fn(left.value, right.value) & M64, left.unsigned or right.unsigned)


def _s64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _fail(why: str) -> V:
    raise TypeError(why)
