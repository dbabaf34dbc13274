"""C expressions over a kernel struct: types from BTF (syntax tree -> typed tree).

The one root name (``skb``: a ``struct sk_buff *``) has the type the kernel's BTF gives it; every member,
index and operator is checked against the types BTF gives the operands. An unknown member, a type that does
not fit an operator, an index out of an array's bounds are :class:`CheckError` naming the span at fault.

Semantics, decided here (and documented in the README):
- Values are computed in 64 bits, like C's ``long``: a member narrower than 64 bits is widened by its own
  signedness; the result of an operator is unsigned when an operand is a 64-bit unsigned value (or a pointer,
  or an integer constant with a ``u`` suffix or above 2**63-1), else signed. A comparison or ``>>`` is signed
  when its operands are.
- Reading memory never faults: what cannot be read (a NULL pointer, an index out of bounds at run time) reads
  as 0, so ``skb->sk->sk_mark == 0`` is true for an skb without a socket.
- ``==``/``!=`` between a ``char`` array (or ``char *``) and a string literal compares as ``strcmp`` would, up
  to the array's end.
"""

from __future__ import annotations

from dataclasses import dataclass

from pwru.cexpr.parse import Binary, Index, IntLit, Member, Name, Node, StrLit, Unary
from pwru.ebpf import btf

__all__ = [
    "Arith",
    "ArrayType",
    "CType",
    "CheckError",
    "Compare",
    "Const",
    "IntType",
    "Load",
    "Logic",
    "Not",
    "Place",
    "PtrType",
    "Root",
    "StrEq",
    "StructType",
    "Value",
    "check",
    "check_place_or_value",
    "root_type",
]

#: Longest string literal a comparison or metadata read takes (bytes, NUL included); bounds the code size.
MAX_STRING = 64


class CheckError(ValueError):
    """A type error at ``start``..``end`` of the expression."""

    def __init__(self, message: str, node: Node, start: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.start = node.start if start is None else start
        self.end = max(node.end, self.start + 1)


# --- types -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntType:
    size: int
    signed: bool
    name: str
    enum: int | None = None  # BTF id of the enum (names for output)
    boolean: bool = False


@dataclass(frozen=True)
class PtrType:
    target: int  # BTF id of the pointee (qualifiers resolved)
    name: str


@dataclass(frozen=True)
class StructType:
    tid: int
    name: str


@dataclass(frozen=True)
class ArrayType:
    elem: int  # BTF id of the element type
    nelems: int
    name: str


CType = IntType | PtrType | StructType | ArrayType


def _describe(spec: btf.Spec, tid: int, depth: int = 0) -> str:
    """A C-ish name of a type, for messages."""
    if tid == 0:
        return "void"
    t = spec.type(tid)
    if depth > 8:
        return "..."
    if isinstance(t, btf.Pointer):
        return f"{_describe(spec, t.type, depth + 1)} *"
    if isinstance(t, btf.Array):
        return f"{_describe(spec, t.type, depth + 1)}[{t.nelems}]"
    if isinstance(t, btf.Const | btf.Volatile | btf.Restrict | btf.TypeTag):
        return _describe(spec, t.type, depth + 1)
    if isinstance(t, btf.Struct):
        return f"struct {t.name or '(anonymous)'}"
    if isinstance(t, btf.Union):
        return f"union {t.name or '(anonymous)'}"
    if isinstance(t, btf.Enum | btf.Enum64):
        return f"enum {t.name or '(anonymous)'}"
    return t.name or t.kind.name.lower()


def ctype(spec: btf.Spec, tid: int, node: Node) -> CType:
    """The expression type of BTF type ``tid`` (typedefs and qualifiers resolved)."""
    name = _describe(spec, tid)
    rid = spec.resolve(tid) if tid else 0
    t = spec.type(rid) if rid else btf.Void()
    if isinstance(t, btf.Int):
        return IntType(t.size, t.signed, name, boolean=bool(t.encoding & btf.INT_BOOL))
    if isinstance(t, btf.Enum | btf.Enum64):
        return IntType(t.size, t.signed, name, enum=rid)
    if isinstance(t, btf.Pointer):
        return PtrType(spec.resolve(t.type) if t.type else 0, name)
    if isinstance(t, btf.Struct | btf.Union):
        return StructType(rid, name)
    if isinstance(t, btf.Array):
        return ArrayType(t.type, t.nelems, name)
    raise CheckError(f"{name} is a type expressions cannot use", node)


# --- the typed tree ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """Something that has a 64-bit value at run time."""

    node: Node

    @property
    def unsigned(self) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Root(Value):
    type: PtrType

    @property
    def unsigned(self) -> bool:
        return True


@dataclass(frozen=True)
class Const(Value):
    value: int  # as a signed or unsigned 64-bit number, see is_unsigned
    is_unsigned: bool

    @property
    def unsigned(self) -> bool:
        return self.is_unsigned


@dataclass(frozen=True)
class Place:
    """Memory at ``base + offset + index * scale`` of type ``type``; a bitfield when ``bits`` is set
    (``(bit offset from offset, bit count)``). A dynamic ``index`` outside ``[0, bound)`` (when ``bound``) makes
    the address 0, whose reads give 0."""

    node: Node
    base: Value
    offset: int
    type: CType
    index: Value | None = None
    scale: int = 0
    bound: int | None = None
    bits: tuple[int, int] | None = None


@dataclass(frozen=True)
class AddrOf(Value):
    """The address of a place (a nested index needs it as a base)."""

    place: Place

    @property
    def unsigned(self) -> bool:
        return True


@dataclass(frozen=True)
class Load(Value):
    place: Place

    @property
    def unsigned(self) -> bool:
        t = self.place.type
        return isinstance(t, PtrType) or (isinstance(t, IntType) and t.size == 8 and not t.signed)


@dataclass(frozen=True)
class Arith(Value):
    op: str  # + - * & | ^ << >> neg ~
    left: Value
    right: Value | None  # None for the unary ones

    @property
    def unsigned(self) -> bool:
        if self.op in ("<<", ">>"):
            return self.left.unsigned  # C: the type of the promoted left operand
        return self.left.unsigned or (self.right is not None and self.right.unsigned)


@dataclass(frozen=True)
class Compare(Value):
    op: str  # == != < <= > >=
    left: Value
    right: Value

    @property
    def signed(self) -> bool:
        return not (self.left.unsigned or self.right.unsigned)

    @property
    def unsigned(self) -> bool:
        return False


@dataclass(frozen=True)
class Logic(Value):
    op: str  # && ||
    left: Value
    right: Value

    @property
    def unsigned(self) -> bool:
        return False


@dataclass(frozen=True)
class Not(Value):
    operand: Value

    @property
    def unsigned(self) -> bool:
        return False


@dataclass(frozen=True)
class StrEq(Value):
    """``place`` (a char array, or the memory a ``char *`` points at) equals ``text`` as C strings:
    the first ``length`` bytes compared (NUL included when it fits)."""

    address: Value
    text: bytes
    length: int
    negate: bool

    @property
    def unsigned(self) -> bool:
        return False


# --- the checker ---------------------------------------------------------------------------------------------


def root_type(spec: btf.Spec, struct_name: str) -> int:
    ids = [i for i in spec.find(struct_name) if spec.kind_of(i) in (btf.Kind.STRUCT, btf.Kind.UNION)]
    if not ids:
        raise btf.BTFError(f"the kernel's BTF has no struct {struct_name}")
    return ids[0]


class _Checker:
    def __init__(self, spec: btf.Spec, root_name: str, root_struct: int) -> None:
        self.spec = spec
        self.root_name = root_name
        self.root = PtrType(root_struct, f"{_describe(spec, root_struct)} *")

    # places and values

    def place_or_value(self, node: Node) -> Place | Value:
        if isinstance(node, Name):
            if node.name != self.root_name:
                raise CheckError(f"unknown name {node.name!r} (the expression starts from {self.root_name})", node)
            return Root(node, self.root)
        if isinstance(node, IntLit):
            unsigned = node.unsigned or node.value >= 1 << 63
            return Const(node, node.value, unsigned)
        if isinstance(node, StrLit):
            raise CheckError("a string can only be compared (== or !=) with a char array", node)
        if isinstance(node, Member):
            return self.member(node)
        if isinstance(node, Index):
            return self.index(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        raise CheckError(f"unexpected {type(node).__name__}", node)

    def value(self, node: Node) -> Value:
        got = self.place_or_value(node)
        if isinstance(got, Value):
            return got
        t = got.type
        if isinstance(t, StructType):
            raise CheckError(f"{t.name} is a struct, not a value: name one of its members", node)
        if isinstance(t, ArrayType):
            raise CheckError(f"{t.name} is an array: index it, or compare it with a string", node)
        return Load(node, got)

    def scalar(self, node: Node) -> Value:
        """An integer operand (pointer arithmetic is not C's here: refused)."""
        v = self.value(node)
        t = self.type_of(v)
        if isinstance(t, PtrType):
            raise CheckError(f"{t.name} is a pointer, which integer arithmetic does not take", node)
        return v

    @staticmethod
    def type_of(v: Value) -> CType | None:
        if isinstance(v, Root):
            return v.type
        if isinstance(v, Load):
            return v.place.type
        return None

    def member(self, node: Member) -> Place:
        base = self.place_or_value(node.base)
        if node.arrow:
            if isinstance(base, Place) and not isinstance(base.type, PtrType):
                hint = " (use . on a struct)" if isinstance(base.type, StructType) else ""
                raise CheckError(f"-> needs a pointer to a struct, and {base.type.name} is not one{hint}", node.base)
            ptr = self.value(node.base) if isinstance(base, Place) else base
            t = self.type_of(ptr)
            if not isinstance(t, PtrType):
                raise CheckError(f"-> needs a pointer to a struct, and {self._name(ptr)} is not one", node.base)
            target = self.spec.type(t.target) if t.target else btf.Void()
            if not isinstance(target, btf.Struct | btf.Union):
                raise CheckError(f"-> needs a pointer to a struct, and {t.name} is not one", node.base)
            return self._field(node, ptr, 0, t.target, None, 0, None)
        if not isinstance(base, Place) or not isinstance(base.type, StructType):
            what = base.type.name if isinstance(base, Place) else self._name(base)
            hint = " (use -> through a pointer)" if isinstance(self._type(base), PtrType) else ""
            raise CheckError(f". needs a struct, and {what} is not one{hint}", node.base)
        return self._field(node, base.base, base.offset, base.type.tid, base.index, base.scale, base.bound)

    def _type(self, got: Place | Value) -> CType | None:
        return got.type if isinstance(got, Place) else self.type_of(got)

    def _name(self, v: Value) -> str:
        t = self.type_of(v)
        return t.name if t is not None else "an integer"

    def _field(self, node: Member, base: Value, offset: int, struct_id: int, index: Value | None, scale: int,
               bound: int | None) -> Place:  # fmt: skip
        comp = self.spec.type(struct_id)
        assert isinstance(comp, btf.Struct | btf.Union)
        try:
            hit = self.spec.find_member(comp, node.name)
        except btf.BTFError as e:
            raise CheckError(str(e), node) from None
        if hit is None:
            raise CheckError(f"{_describe(self.spec, struct_id)} has no member {node.name!r}", node, node.name_start)
        m, extra = hit
        m = btf.Member(m.name, m.type, m.bit_offset + extra, m.bitfield_size)
        bit_offset, bit_size = self.spec.bitfield(m)
        t = ctype(self.spec, m.type, node)
        if bit_size:
            if not isinstance(t, IntType):
                raise CheckError(f"bitfield {node.name!r} is not an integer", node)
            byte = bit_offset // 8
            return Place(node, base, offset + byte, t, index, scale, bound, (bit_offset - byte * 8, bit_size))
        if bit_offset % 8:
            raise CheckError(f"member {node.name!r} does not start on a byte", node)
        return Place(node, base, offset + bit_offset // 8, t, index, scale, bound)

    def index(self, node: Index) -> Place:
        base = self.place_or_value(node.base)
        idx = self.scalar(node.index)
        if isinstance(base, Place) and isinstance(base.type, ArrayType):
            arr = base.type
            elem = ctype(self.spec, arr.elem, node)
            size = self._size(arr.elem, node)
            if isinstance(idx, Const):
                if arr.nelems and not 0 <= _signed(idx) < arr.nelems:
                    raise CheckError(f"index {_signed(idx)} is outside {arr.name}", node.index)
                return Place(node, base.base, base.offset + _signed(idx) * size, elem, base.index, base.scale,
                             base.bound)  # fmt: skip
            if base.index is not None:  # a second dynamic index: from the first's address
                return Place(node, AddrOf(node.base, base), 0, elem, idx, size, arr.nelems or None)
            return Place(node, base.base, base.offset, elem, idx, size, arr.nelems or None)
        ptr = self.value(node.base) if isinstance(base, Place) else base
        t = self.type_of(ptr)
        if not isinstance(t, PtrType):
            raise CheckError(f"[] needs an array or a pointer, and {self._name(ptr)} is neither", node.base)
        if t.target == 0:
            raise CheckError(f"[] cannot index {t.name}: void has no size", node.base)
        elem = ctype(self.spec, t.target, node)
        size = self._size(t.target, node)
        if isinstance(idx, Const):
            return Place(node, ptr, _signed(idx) * size, elem)
        return Place(node, ptr, 0, elem, idx, size, None)

    def _size(self, tid: int, node: Node) -> int:
        try:
            return self.spec.size_of(tid)
        except btf.BTFError as e:
            raise CheckError(str(e), node) from None

    def unary(self, node: Unary) -> Value:
        if node.op == "!":
            return Not(node, self.value(node.operand))
        v = self.scalar(node.operand)
        if node.op == "+":
            return v
        if isinstance(v, Const):
            value = -v.value if node.op == "-" else ~v.value
            return Const(node, value & ((1 << 64) - 1) if v.unsigned else value, v.unsigned)
        return Arith(node, "neg" if node.op == "-" else "~", v, None)

    def binary(self, node: Binary) -> Value:
        op = node.op
        if op in ("&&", "||"):
            return Logic(node, op, self.value(node.left), self.value(node.right))
        if op in ("==", "!=") and (isinstance(node.left, StrLit) or isinstance(node.right, StrLit)):
            return self.string_compare(node)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            left, right = self.value(node.left), self.value(node.right)
            lp, rp = isinstance(self.type_of(left), PtrType), isinstance(self.type_of(right), PtrType)
            if lp != rp and not (isinstance(left, Const) or isinstance(right, Const)):
                raise CheckError(f"{op} compares a pointer with an integer that is not a constant", node)
            return Compare(node, op, left, right)
        left, right = self.scalar(node.left), self.scalar(node.right)
        if op in ("<<", ">>") and isinstance(right, Const) and not 0 <= _signed(right) < 64:
            raise CheckError(f"shift by {_signed(right)}: outside 0..63", node.right)
        return Arith(node, op, left, right)

    def string_compare(self, node: Binary) -> Value:
        lit, other = (node.right, node.left) if isinstance(node.right, StrLit) else (node.left, node.right)
        assert isinstance(lit, StrLit)
        if isinstance(other, StrLit):
            raise CheckError("comparing two strings: one side must be a char array of the kernel", node)
        got = self.place_or_value(other)
        t = self._type(got)
        text = lit.value
        if b"\0" in text:
            raise CheckError("the string has a NUL inside: it would compare only up to it", lit)
        if isinstance(got, Place) and isinstance(t, ArrayType) and self._is_char(t.elem):
            if t.nelems and len(text) > t.nelems:
                raise CheckError(f"the string ({len(text)} bytes) is longer than {t.name}", lit)
            length = min(len(text) + 1, t.nelems) if t.nelems else len(text) + 1
            address: Value = AddrOf(other, got)
        elif isinstance(t, PtrType) and t.target and self._is_char(t.target):
            length = len(text) + 1
            address = self.value(other) if isinstance(got, Place) else got
        else:
            what = t.name if t is not None else "an integer"
            raise CheckError(f"a string compares with a char array or char *, and {what} is neither", other)
        if length > MAX_STRING:
            raise CheckError(f"the string is longer than {MAX_STRING - 1} bytes", lit)
        return StrEq(node, address, text, length, node.op == "!=")

    def _is_char(self, tid: int) -> bool:
        t = self.spec.type(self.spec.resolve(tid)) if tid else None
        return isinstance(t, btf.Int) and t.size == 1


def _signed(c: Const) -> int:
    v = c.value
    return v - (1 << 64) if v >= 1 << 63 else v


def check(tree: Node, spec: btf.Spec, root_name: str, root_struct: int) -> Value:
    """The typed tree of a filter expression (anything with a value; non-zero is true)."""
    return _Checker(spec, root_name, root_struct).value(tree)


def check_place_or_value(tree: Node, spec: btf.Spec, root_name: str, root_struct: int) -> Place | Value:
    """The typed tree of a metadata expression: a place keeps its type (for output: char arrays, enums)."""
    c = _Checker(spec, root_name, root_struct)
    got = c.place_or_value(tree)
    if isinstance(got, Place) and isinstance(got.type, StructType):
        raise CheckError(f"{got.type.name} is a struct, not a value: name one of its members", tree)
    if isinstance(got, Place) and isinstance(got.type, ArrayType) and not c._is_char(got.type.elem):
        raise CheckError(f"{got.type.name} is an array: index it", tree)
    return got
