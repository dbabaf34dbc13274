"""C expressions over the kernel's structs, compiled against its BTF into eBPF: ``--filter-skb-expr`` (a
condition on the skb) and ``--output-skb-metadata`` (values shown with each event).

``parse`` (text -> syntax tree), ``check`` (types from BTF -> typed tree), ``emit`` (typed tree -> the body of
a stub subprogram of pwru.bpf.c, spliced in as the pcap filter's is). Errors of any stage are
:class:`ExprError`: one line naming the fault and its column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pwru.cexpr.check import (
    ArrayType,
    CheckError,
    CType,
    IntType,
    Place,
    PtrType,
    check,
    check_place_or_value,
    root_type,
)
from pwru.cexpr.emit import EmitError, MetadataSlot, emit_filter, emit_metadata, metadata_slots
from pwru.cexpr.parse import Member, Node, ParseError, parse
from pwru.ebpf import btf
from pwru.ebpf.asm import Instruction

__all__ = [
    "MAX_METADATA",
    "ROOTS",
    "ExprError",
    "MetadataField",
    "compile_filter",
    "compile_metadata",
]

#: The root name of each kind of expression and the struct it points at.
ROOTS = {"skb": "sk_buff", "xdp": "xdp_buff"}
#: How many metadata expressions one run may show (cilium/pwru allows 4).
MAX_METADATA = 16


class ExprError(ValueError):
    """An expression refused, as one line: ``column N: what is wrong, in "<expression>"``."""

    def __init__(self, expr: str, message: str, start: int, end: int) -> None:
        self.expr, self.message, self.start, self.end = expr, message, start, end
        shown = expr if len(expr) <= 120 else expr[:117] + "..."
        super().__init__(f'column {start + 1}: {message}, in "{shown}"')


def _tree(expr: str) -> Node:
    try:
        return parse(expr)
    except ParseError as e:
        raise ExprError(expr, e.message, e.start, e.end) from None


def _root(spec: btf.Spec, root: str) -> int:
    try:
        return root_type(spec, ROOTS[root])
    except btf.BTFError as e:
        raise ExprError(root, str(e), 0, len(root)) from None


def compile_filter(expr: str, spec: btf.Spec, root: str = "skb") -> list[Instruction]:
    """The body of the filter stub for ``expr`` (true when non-zero) against kernel BTF ``spec``."""
    tree = _tree(expr)
    try:
        typed = check(tree, spec, root, _root(spec, root))
        return emit_filter(typed)
    except (CheckError, EmitError) as e:
        raise ExprError(expr, e.message, e.start, e.end) from None


@dataclass(frozen=True)
class MetadataField:
    """One ``--output-skb-metadata`` expression: its text, the short name the text output shows (the last
    member's name, as cilium/pwru; the whole expression when it is not a member chain), where its value sits
    in the record's metadata bytes, and how to show it."""

    expr: str
    name: str
    slot: MetadataSlot
    type: CType
    signed: bool
    enum: dict[int, str]
    root: str = "skb"  # what the expression is over: skb (--output-skb-metadata) or xdp (--output-xdp-metadata)

    @property
    def is_string(self) -> bool:
        """A char array: its value is text (a pointer's, shown as hex, is not)."""
        return isinstance(self.type, ArrayType)

    def value(self, data: bytes) -> int | str | bool:
        """The value, from the record's metadata bytes: an int (enums: the enumerator's name when one has
        it), a bool, or a string (char arrays, up to the first NUL; pointers as hex)."""
        raw = bytes(data[self.slot.offset : self.slot.offset + self.slot.size])
        if isinstance(self.type, ArrayType):
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        n = int.from_bytes(raw.ljust(8, b"\0"), "little", signed=self.signed)
        if isinstance(self.type, PtrType):
            return f"{n:#x}"
        if isinstance(self.type, IntType) and self.type.boolean:
            return bool(n)
        if self.enum:
            return self.enum.get(n, n)
        return n


def compile_metadata(
    exprs: Sequence[str], spec: btf.Spec, root: str = "skb"
) -> tuple[list[Instruction], list[MetadataField], int]:
    """The body of the metadata stub, the fields it fills, and the bytes they take (a multiple of 8)."""
    if len(exprs) > MAX_METADATA:
        raise ExprError(exprs[MAX_METADATA], f"at most {MAX_METADATA} metadata expressions", 0, 1)
    root_id = _root(spec, root)
    items = []
    for expr in exprs:
        tree = _tree(expr)
        try:
            items.append((expr, tree, check_place_or_value(tree, spec, root, root_id)))
        except CheckError as e:
            raise ExprError(expr, e.message, e.start, e.end) from None
    typed = [item for _, _, item in items]
    try:
        body = emit_metadata(typed)
    except EmitError as e:
        bad = next(expr for expr, tree, _ in items if e.start < len(expr))
        raise ExprError(bad, e.message, e.start, e.end) from None
    fields = []
    slots = metadata_slots(typed)
    for (expr, tree, item), slot in zip(items, slots, strict=True):
        t: CType = item.type if isinstance(item, Place) else IntType(8, not item.unsigned, "long")
        signed = isinstance(t, IntType) and t.signed  # a narrower value was widened by its own signedness
        enum: dict[int, str] = {}
        if isinstance(t, IntType) and t.enum is not None:
            enum = {v.value: v.name for v in spec.type(t.enum).values}  # type: ignore[union-attr]
        name = tree.name if isinstance(tree, Member) else "".join(expr.split())
        fields.append(MetadataField(expr.strip(), name, slot, t, signed, enum, root))
    size = slots[-1].offset + (slots[-1].size + 7) // 8 * 8 if slots else 0
    return body, fields, size

