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
    """Renders the metadata tail of event records (``offset``: where the tail starts in a record)."""

    def __init__(self, fields: Sequence[MetadataField], offset: int) -> None:
        self.fields = tuple(fields)
        self.offset = offset
        self._size = max((f.slot.offset + f.slot.size for f in self.fields), default=0)
        self._text: dict[bytes, str] = {}
        self._json: dict[bytes, str] = {}

    def _tail(self, buf: Buffer) -> bytes:
        return bytes(buf[self.offset : self.offset + self._size])

    def text(self, buf: Buffer) -> str:
        """`` name=value`` for each field (strings quoted), with the leading space; empty without fields."""
        if not self.fields:
            return ""
        tail = self._tail(buf)
        hit = self._text.get(tail)
        if hit is None:
            parts = []
            for f in self.fields:
                v = f.value(tail)
                if isinstance(v, bool):
                    shown = "true" if v else "false"
                else:
                    shown = f'"{sanitize(str(v))}"' if f.is_string else sanitize(str(v))
                parts.append(f" {sanitize(f.name)}={shown}")
            hit = remember(self._text, tail, "".join(parts))
        return hit

    def json(self, buf: Buffer) -> str:
        """The ``"skb_metadata":{...}`` member (without braces around it); empty without fields."""
        if not self.fields:
            return ""
        tail = self._tail(buf)
        hit = self._json.get(tail)
        if hit is None:
            values = {f.expr: f.value(tail) for f in self.fields}
            hit = remember(self._json, tail, _encoder.encode({"skb_metadata": values})[1:-1])
        return hit
