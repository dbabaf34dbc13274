"""C expressions over a kernel struct: the lexer and the parser (source text -> syntax tree).

A small hand-written precedence-climbing parser: the grammar is a fixed subset of C's, so no parsing library
pays for itself, and every error can name its column. No ``eval``, no regular-expression parsing beyond the
token patterns.

Grammar (C's precedence and associativity, lowest first)::

    expr     := binary(1)
    binary(p):= unary { OP(p') binary(p'+1) }       for each binary OP of precedence p' >= p, left-assoc
                || (1)  && (2)  | (3)  ^ (4)  & (5)  == != (6)  < <= > >= (7)  << >> (8)  + - (9)  * (10)
    unary    := ('!' | '~' | '-' | '+') unary | postfix
    postfix  := primary { '->' NAME | '.' NAME | '[' expr ']' }
    primary  := NAME | INTEGER | STRING | '(' expr ')'

Integers in any C base (``42``, ``0x2a``, ``052``, ``0b101010``) with optional ``u``/``l`` suffixes; strings
in double quotes with C's simple escapes (``\\n``, ``\\t``, ``\\\\``, ``\\"``, ``\\0``, ``\\xHH``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BINARY_PRECEDENCE",
    "Binary",
    "Index",
    "IntLit",
    "Member",
    "Name",
    "Node",
    "ParseError",
    "StrLit",
    "Unary",
    "parse",
]


class ParseError(ValueError):
    """A syntax error at ``start``..``end`` (0-based character offsets into the expression)."""

    def __init__(self, message: str, start: int, end: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.start = start
        self.end = max(end if end is not None else start + 1, start + 1)


@dataclass(frozen=True)
class Node:
    start: int
    end: int


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class IntLit(Node):
    value: int
    unsigned: bool  # a ``u`` suffix


@dataclass(frozen=True)
class StrLit(Node):
    value: bytes


@dataclass(frozen=True)
class Member(Node):
    base: Node
    name: str
    arrow: bool  # ``->`` (through a pointer) rather than ``.``
    name_start: int  # where the member's name starts (errors about it point there)


@dataclass(frozen=True)
class Index(Node):
    base: Node
    index: Node


@dataclass(frozen=True)
class Unary(Node):
    op: str  # ! ~ - +
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


BINARY_PRECEDENCE = {
    "||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6,
    "<": 7, "<=": 7, ">": 7, ">=": 7, "<<": 8, ">>": 8, "+": 9, "-": 9, "*": 10,
}  # fmt: skip
_PUNCT = sorted({*BINARY_PRECEDENCE, "!", "~", "->", ".", "[", "]", "(", ")"}, key=len, reverse=True)
#: Operators of C that this subset leaves out, named in the error rather than "unexpected character".
_NOT_SUPPORTED = {"/": "division", "%": "remainder", "?": "the conditional operator", "=": "assignment",
                  ",": "the comma operator", "'": "character constants"}  # fmt: skip
_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, '"': 34, "'": 39, "a": 7, "b": 8, "f": 12, "v": 11}


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "int", "str", "op", "end"
    text: str
    start: int
    end: int
    value: int | bytes | None = None
    unsigned: bool = False


def _lex_int(text: str, i: int) -> tuple[_Token, int]:
    j = i
    while j < len(text) and (text[j].isalnum() or text[j] == "_"):
        j += 1
    word = text[i:j]
    body = word.rstrip("uUlL")
    suffix = word[len(body) :].lower()
    if suffix.count("u") > 1 or suffix.count("l") > 2 or (suffix.count("l") == 2 and "ll" not in suffix):
        raise ParseError(f"invalid integer suffix in {word!r}", i, j)
    low = body.lower()
    try:
        if low.startswith("0x"):
            value = int(body[2:], 16) if body[2:] else None
        elif low.startswith("0b"):
            value = int(body[2:], 2) if body[2:] else None
        elif len(body) > 1 and body.startswith("0"):
            value = int(body[1:], 8)
        else:
            value = int(body, 10)
    except ValueError:
        value = None
    if value is None or "_" in body:
        raise ParseError(f"invalid integer {word!r}", i, j)
    if value >= 1 << 64:
        raise ParseError(f"integer {word!r} does not fit in 64 bits", i, j)
    return _Token("int", word, i, j, value, "u" in suffix), j


def _lex_str(text: str, i: int) -> tuple[_Token, int]:
    out = bytearray()
    j = i + 1
    while True:
        if j >= len(text):
            raise ParseError("unterminated string", i, j)
        c = text[j]
        if c == '"':
            return _Token("str", text[i : j + 1], i, j + 1, bytes(out)), j + 1
        if c == "\\":
            if j + 1 >= len(text):
                raise ParseError("unterminated string", i, j + 1)
            e = text[j + 1]
            if e == "x":
                digits = ""
                k = j + 2
                while k < len(text) and len(digits) < 2 and text[k] in "0123456789abcdefABCDEF":
                    digits += text[k]
                    k += 1
                if not digits:
                    raise ParseError("\\x needs hex digits", j, k)
                out.append(int(digits, 16))
                j = k
                continue
            if e not in _ESCAPES:
                raise ParseError(f"unknown escape \\{e}", j, j + 2)
            out.append(_ESCAPES[e])
            j += 2
            continue
        out += c.encode()
        j += 1


def tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c.isascii() and (c.isalpha() or c == "_"):
            j = i
            while j < len(text) and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(_Token("name", text[i:j], i, j))
            i = j
            continue
        if c.isdigit():
            tok, i = _lex_int(text, i)
            tokens.append(tok)
            continue
        if c == '"':
            tok, i = _lex_str(text, i)
            tokens.append(tok)
            continue
        for p in _PUNCT:
            if text.startswith(p, i):
                tokens.append(_Token("op", p, i, i + len(p)))
                i += len(p)
                break
        else:
            what = _NOT_SUPPORTED.get(c)
            raise ParseError(f"{what} is not supported" if what else f"unexpected character {c!r}", i)
    tokens.append(_Token("end", "", len(text), len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, op: str, opener: _Token | None = None) -> _Token:
        tok = self.tok
        if tok.kind == "op" and tok.text == op:
            return self.take()
        where = f" to close the {opener.text!r} at column {opener.start + 1}" if opener else ""
        raise ParseError(f"expected {op!r}{where}, found {self._describe(tok)}", tok.start, tok.end)

    @staticmethod
    def _describe(tok: _Token) -> str:
        return "the end of the expression" if tok.kind == "end" else repr(tok.text)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ParseError("empty expression", 0)
        node = self.binary(1)
        if self.tok.kind != "end":
            tok = self.tok
            raise ParseError(f"unexpected {self._describe(tok)} after a complete expression", tok.start, tok.end)
        return node

    def binary(self, min_prec: int) -> Node:
        left = self.unary()
        while True:
            tok = self.tok
            prec = BINARY_PRECEDENCE.get(tok.text) if tok.kind == "op" else None
            if prec is None or prec < min_prec:
                return left
            self.take()
            right = self.binary(prec + 1)
            left = Binary(left.start, right.end, tok.text, left, right)

    def unary(self) -> Node:
        tok = self.tok
        if tok.kind == "op" and tok.text in ("!", "~", "-", "+"):
            self.take()
            operand = self.unary()
            return Unary(tok.start, operand.end, tok.text, operand)
        if tok.kind == "op" and tok.text in ("*", "&"):
            what = "dereferencing with *" if tok.text == "*" else "taking an address with &"
            raise ParseError(f"{what} is not supported (use -> and [])", tok.start, tok.end)
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while self.tok.kind == "op" and self.tok.text in ("->", ".", "["):
            tok = self.take()
            if tok.text == "[":
                index = self.binary(1)
                close = self.expect("]", tok)
                node = Index(node.start, close.end, node, index)
                continue
            name = self.tok
            if name.kind != "name":
                raise ParseError(f"expected a member name after {tok.text!r}, found {self._describe(name)}",
                                 name.start, name.end)  # fmt: skip
            self.take()
            node = Member(node.start, name.end, node, name.text, tok.text == "->", name.start)
        return node

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "name":
            return Name(tok.start, tok.end, tok.text)
        if tok.kind == "int":
            assert isinstance(tok.value, int)
            return IntLit(tok.start, tok.end, tok.value, tok.unsigned)
        if tok.kind == "str":
            assert isinstance(tok.value, bytes)
            return StrLit(tok.start, tok.end, tok.value)
        if tok.kind == "op" and tok.text == "(":
            inner = self.binary(1)
            self.expect(")", tok)
            return inner
        raise ParseError(f"expected an operand, found {self._describe(tok)}", tok.start, tok.end)


def parse(text: str) -> Node:
    """The syntax tree of ``text``; raises :class:`ParseError` with the offending span."""
    return _Parser(text).parse()
