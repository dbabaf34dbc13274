"""pwru.cexpr without root: the parser (precedence, every operator, errors with positions), the type checker
against BTF (a model struct, and the running kernel's struct sk_buff when present), and the compiled code run
in tests/ebpf_vm.py against a reference evaluator written from the documented semantics (tests/cexpr_model.py),
on generated expressions and memory images. The real kernel runs the code in tests/e2e/test_skb_expr.py."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings

from pwru.cexpr import ExprError, compile_filter, compile_metadata
from pwru.cexpr.emit import MAX_PENDING
from pwru.cexpr.parse import Binary, IntLit, Member, ParseError, Unary, parse
from pwru.ebpf import btf
from tests.cexpr_model import ROOT_BASE, Image, Reference, expressions, images, model_btf
from tests.ebpf_vm import Env, Memory, Program

VMLINUX = Path("/sys/kernel/btf/vmlinux")


@functools.cache
def spec() -> btf.Spec:
    return model_btf()


def shape(text: str) -> str:
    """The tree as fully parenthesised text: precedence made visible."""

    def show(n: object) -> str:
        if isinstance(n, Binary):
            return f"({show(n.left)} {n.op} {show(n.right)})"
        if isinstance(n, Unary):
            return f"({n.op}{show(n.operand)})"
        if isinstance(n, Member):
            return f"{show(n.base)}{'->' if n.arrow else '.'}{n.name}"
        if isinstance(n, IntLit):
            return str(n.value)
        return getattr(n, "name", None) or repr(getattr(n, "value", n))

    return show(parse(text))


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a || b && c", "(a || (b && c))"),
        ("a && b | c", "(a && (b | c))"),
        ("a | b ^ c & d", "(a | (b ^ (c & d)))"),
        ("a & b == c", "(a & (b == c))"),
        ("a == b < c", "(a == (b < c))"),
        ("a < b << c", "(a < (b << c))"),
        ("a << b + c", "(a << (b + c))"),
        ("a + b * c", "(a + (b * c))"),
        ("a - b - c", "((a - b) - c)"),
        ("a != b != c", "((a != b) != c)"),
        ("!a == b", "((!a) == b)"),
        ("-a * ~b", "((-a) * (~b))"),
        ("!!a", "(!(!a))"),
        ("(a || b) && c", "((a || b) && c)"),
        ("skb->dev->ifindex >= 0x10", "(skb->dev->ifindex >= 16)"),
        ("a <= b >> 2 > c", "((a <= (b >> 2)) > c)"),
        ("s.x.y", "s.x.y"),
        ("052 + 0b11 + 10u + 0XFFul", "(((42 + 3) + 10) + 255)"),
    ],
)
def test_precedence_and_associativity_are_cs(text: str, tree: str) -> None:
    assert shape(text) == tree


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("skb->", 6, "expected a member name after '->'"),
        ("skb->len ==", 12, "expected an operand"),
        ("(skb->len", 10, "expected ')' to close the '(' at column 1"),
        ("skb->cb[1", 10, "expected ']' to close the '['"),
        ("skb->len 1", 10, "unexpected '1' after a complete expression"),
        ("skb->len / 2", 10, "division is not supported"),
        ("skb->len % 2", 10, "remainder is not supported"),
        ("skb->len = 2", 10, "assignment is not supported"),
        ("*skb", 1, "dereferencing with * is not supported"),
        ("skb->len == 0x", 13, "invalid integer '0x'"),
        ("skb->len == 09", 13, "invalid integer '09'"),
        ("skb->len == 1_000", 13, "invalid integer '1_000'"),
        ("skb->len == 99999999999999999999999", 13, "does not fit in 64 bits"),
        ('skb->dev->name == "eth0', 19, "unterminated string"),
        ('skb->dev->name == "\\q"', 20, "unknown escape"),
        ("skb->len $ 1", 10, "unexpected character '$'"),
        ("", 1, "empty expression"),
    ],
)
def test_syntax_errors_name_their_column(text: str, column: int, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(text)
    assert message in info.value.message
    assert info.value.start + 1 == column
    with pytest.raises(ExprError) as full:
        compile_filter(text, spec())
    line = str(full.value)
    assert line.startswith(f"column {column}: ") and "\n" not in line and message in line


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("skb->nope == 1", 6, "struct sk_buff has no member 'nope'"),
        ("skb->in.nope", 9, "struct inner has no member 'nope'"),
        ("sk->x", 1, "unknown name 'sk' (the expression starts from skb)"),
        ("skb->in->a", 1, "-> needs a pointer to a struct, and struct inner is not one"),
        ("skb->ptr.a", 1, ". needs a struct, and struct inner * is not one (use -> through a pointer)"),
        ("skb->x->a", 1, "-> needs a pointer to a struct, and unsigned long is not one"),
        ("skb->in", 1, "struct inner is a struct, not a value"),
        ("skb->arr == 1", 1, "u32[4] is an array: index it, or compare it with a string"),
        ("skb->arr[4]", 10, "index 4 is outside"),
        ("skb->arr[-1]", 10, "index -1 is outside"),
        ("skb->x[1]", 1, "[] needs an array or a pointer, and unsigned long is neither"),
        ("skb->ptr + 1", 1, "struct inner * is a pointer, which integer arithmetic does not take"),
        ("skb->ptr == skb->x", 1, "compares a pointer with an integer that is not a constant"),
        ('skb->x == "eth0"', 1, "a string compares with a char array or char *, and unsigned long is neither"),
        ('skb->in.name == "eth0eth0e"', 17, "longer than char[8]"),
        ('"a" == "b"', 1, "comparing two strings"),
        ('skb->in.name == "a\\0b"', 17, "has a NUL inside"),
        ("skb->x << 64", 11, "shift by 64: outside 0..63"),
        ('skb->x + "a"', 10, "a string can only be compared"),
    ],
)
def test_type_errors_name_what_and_where(text: str, column: int, message: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_filter(text, spec())
    line = str(info.value)
    assert message in line, line
    assert line.startswith(f"column {column}: "), line
    assert "\n" not in line


def test_nesting_beyond_the_stack_budget_is_refused() -> None:
    deep = "skb->x"
    for _ in range(MAX_PENDING + 1):
        deep = f"skb->y + ({deep})"
    with pytest.raises(ExprError, match="nests too deeply"):
        compile_filter(deep, spec())
    fine = "skb->x"
    for _ in range(MAX_PENDING - 1):
        fine = f"skb->y + ({fine})"
    compile_filter(fine, spec())


def run(expr: str, image: Image) -> int:
    body = compile_filter(expr, spec())
    mem = Memory()
    for base, data in image.regions.items():
        mem.add(base, data)
    return Program(body).run(Env(mem), ROOT_BASE, 0)


@given(expr=expressions(), image=images())
@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@example(expr='skb->in.name == "eth0"', image=Image({ROOT_BASE: bytes(24) + b"eth0\0" + bytes(171)}))
@example(expr="skb->in.sbits < 0 && skb->in.wide > 256", image=Image({ROOT_BASE: bytes(22) + b"\xff\xff" + bytes(168)}))
@example(expr="skb->sneg >> 3 < -1", image=Image({ROOT_BASE: bytes(136) + b"\x80" * 8 + bytes(48)}))
@example(expr="skb->in.b < skb->huge", image=Image({ROOT_BASE: bytes(20) + b"\x00\x80" + bytes(170)}))
def test_compiled_code_agrees_with_the_reference(expr: str, image: Image) -> None:
    """The eBPF the compiler emits, run in the Python eBPF machine, gives the value the reference evaluator
    computes from the syntax tree and the documented semantics."""
    try:
        compile_filter(expr, spec())
    except ExprError as e:
        assume("pointer" not in e.message and "nests too deeply" not in e.message)
        raise
    want = Reference(spec(), image).value(parse(expr)).value
    assert run(expr, image) == want, expr


def test_metadata_layout_and_values() -> None:
    exprs = ["skb->x", "skb->y", "skb->in.name", "skb->kind", "skb->in.flag", "skb->ptr", "skb->z + skb->w",
             "skb->dev_name"]  # fmt: skip
    body, fields, size = compile_metadata(exprs, spec())
    assert [f.name for f in fields] == ["x", "y", "name", "kind", "flag", "ptr", "skb->z+skb->w", "dev_name"]
    assert [(f.slot.offset, f.slot.size) for f in fields] == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8), (40, 8),
                                                             (48, 8), (56, 16)]  # fmt: skip
    assert size == 72
    root = bytearray(192)
    root[0:8] = (2**64 - 2).to_bytes(8, "little")
    root[8:12] = (-5 & 0xFFFFFFFF).to_bytes(4, "little")
    root[24:29] = b"eth0\0"
    root[76:80] = (7).to_bytes(4, "little")
    root[32] = 1
    root[12:14] = (300).to_bytes(2, "little")
    root[14] = 5
    root[152:159] = b"veth99\0"
    mem = Memory()
    mem.add(ROOT_BASE, root)
    mem.add(0x5000_0000_0000, bytes(size), writable=True)
    Program(body).run(Env(mem), ROOT_BASE, 0x5000_0000_0000)
    out = bytes(mem.find(0x5000_0000_0000, size)[0])  # type: ignore[index]
    assert [f.value(out) for f in fields] == [2**64 - 2, -5, "eth0", "K_C", True, "0x0", 305, "veth99"]
    with pytest.raises(ExprError, match="at most 16"):
        compile_metadata(["skb->x"] * 17, spec())
    with pytest.raises(ExprError, match="is a struct"):
        compile_metadata(["skb->in"], spec())
    with pytest.raises(ExprError, match="is an array: index it"):
        compile_metadata(["skb->arr"], spec())


@pytest.mark.skipif(not VMLINUX.exists(), reason="no kernel BTF")
def test_the_running_kernels_sk_buff() -> None:
    """pwru's own CI expression and the members a user reaches for compile against the real struct sk_buff
    (bitfields such as pkt_type included); a typo names the struct."""
    kernel = btf.kernel_btf()
    for expr in ("skb->dev->ifindex == 1", "skb->pkt_type == 0 && skb->len > 0", 'skb->dev->name == "lo"',
                 "skb->protocol == 0x0008 || skb->mark & 0xff", "skb->sk->__sk_common.skc_family == 2",
                 "skb->cb[skb->len & 63] != 0", "!(skb->dev->flags & 1)"):  # fmt: skip
        assert compile_filter(expr, kernel)
    with pytest.raises(ExprError, match="struct sk_buff has no member 'lenn'"):
        compile_filter("skb->lenn > 1", kernel)
