"""--output-skb-metadata's values as the outputs show them: `` name=value`` after a text line (cilium/pwru's
form: the expression's last member as the name), ``"skb_metadata":{"<expression>":value,...}`` in JSON.

The values sit in the event record's ``metadata`` tail, laid out by :func:`pwru.cexpr.compile_metadata`,
whose fields say where each is and how to show it. Both pieces are cached by the tail's bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pwru.output.fields import remember
from pwru.output.names import sanitize
from pwru.records import Buffer

if TYPE_CHECKING:  # the output layer loads no kernel-side module (pwru.cexpr emits eBPF)
    from pwru.cexpr import MetadataField

__all__ = ["MetadataFormat"]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class MetadataFormat:
    """Renders the metadata tail of event records (``offset``: where the tail starts in a record). An XDP
    program's event (the byte at ``xdp_mark`` set: struct event's ``xdp_ctx``) shows the fields over ``xdp``
    (--output-xdp-metadata), every other event those over ``skb``."""

    def __init__(self, fields: Sequence[MetadataField], offset: int, xdp_mark: int | None = None) -> None:
        self.fields = tuple(f for f in fields if f.root == "skb")
        self.xdp_fields = tuple(f for f in fields if f.root == "xdp")
        self.offset = offset
        self._mark = xdp_mark
        self._size = {
            False: max((f.slot.offset + f.slot.size for f in self.fields), default=0),
            True: max((f.slot.offset + f.slot.size for f in self.xdp_fields), default=0),
        }
        self._text: dict[tuple[bool, bytes], str] = {}
        self._json: dict[tuple[bool, bytes], str] = {}

    def _key(self, buf: Buffer) -> tuple[tuple[MetadataField, ...], tuple[bool, bytes]]:
        xdp = self._mark is not None and buf[self._mark] != 0
        fields = self.xdp_fields if xdp else self.fields
        return fields, (xdp, bytes(buf[self.offset : self.offset + self._size[xdp]]))

    def text(self, buf: Buffer) -> str:
        """`` name=value`` for each field (strings quoted), with the leading space; empty without fields."""
        fields, key = self._key(buf)
        if not fields:
            return ""
        tail = key[1]
        hit = self._text.get(key)
        if hit is None:
            parts = []
            for f in fields:
                v = f.value(tail)
                if isinstance(v, bool):
                    shown = "true" if v else "false"
                else:
                    shown = f'"{sanitize(str(v))}"' if f.is_string else sanitize(str(v))
                parts.append(f" {sanitize(f.name)}={shown}")
            hit = remember(self._text, key, "".join(parts))
        return hit

    def json(self, buf: Buffer) -> str:
        """The ``"skb_metadata":{...}`` member (without braces around it; pwru's key for the XDP fields too);
        empty without fields."""
        fields, key = self._key(buf)
        if not fields:
            return ""
        hit = self._json.get(key)
        if hit is None:
            values = {f.expr: f.value(key[1]) for f in fields}
            hit = remember(self._json, key, _encoder.encode({"skb_metadata": values})[1:-1])
        return hit
