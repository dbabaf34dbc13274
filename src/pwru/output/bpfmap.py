"""--output-bpfmap's map operations as the outputs show them.

Text: cilium/pwru's block after the event's line (``map_id``, ``map_name``, ``key(N):`` and ``value(N):`` each
followed by a hex dump laid out as Go's ``encoding/hex.Dump``), then our lines: ``map_op`` (what was done, a
lookup's outcome) and, when the map has BTF, ``key_decoded`` / ``value_decoded`` (the bytes read as the map's key
and value types, :mod:`pwru.btf_value`). JSON (pwru has no key for it): ``"bpfmap": {...}`` with the same facts,
bytes as hex strings and the decoded values as JSON values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pwru.btf_value import c_text
from pwru.output.names import sanitize

#: The JSON key of an event's map operation.
JSON_KEY = "bpfmap"


def hex_dump(data: bytes) -> str:
    """Go's ``hex.Dump``: 16 bytes a line, ``offset  xx xx ... xx  xx ... xx  |ascii|``, each line ending in a
    newline; empty for no bytes."""
    out = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        cells = "".join(f"{b:02x} " + (" " if i == 7 else "") for i, b in enumerate(chunk))
        ascii_ = "".join(chr(b) if 32 <= b <= 126 else "." for b in chunk)
        out.append(f"{off:08x}  {cells:<49} |{ascii_}|\n")
    return "".join(out)


@dataclass(frozen=True)
class MapOp:
    """One map operation: ``op`` is ``lookup``, ``update`` or ``delete``; ``key`` the bytes read (at most the
    kernel's cap of the map's ``key_size``), ``value`` those of the value read (an update's new one, a lookup's
    found one) or None; ``found`` a lookup's outcome (None for the others); ``key_decoded`` / ``value_decoded``
    the bytes decoded with the map's BTF (None without it, or when the bytes were cut)."""

    map_id: int
    map_name: str
    map_type: int
    op: str
    key_size: int
    value_size: int
    key: bytes
    value: bytes | None
    found: bool | None = None
    key_decoded: Any = None
    value_decoded: Any = None

    def what(self) -> str:
        if self.found is None:
            return self.op
        return f"{self.op} ({'found' if self.found else 'not found'})"

    def text(self) -> str:
        """The lines that follow the event's line (no trailing newline)."""
        lines = [
            f"map_id: {self.map_id}",
            f"map_name: {sanitize(self.map_name)}",
            f"key({self.key_size}):",
            hex_dump(self.key).rstrip("\n"),
            f"value({self.value_size}):",
            hex_dump(self.value or b"").rstrip("\n"),
            f"map_op: {self.what()}",
        ]
        if self.key_decoded is not None:
            lines.append(f"key_decoded: {sanitize(c_text(self.key_decoded))}")
        if self.value_decoded is not None:
            lines.append(f"value_decoded: {sanitize(c_text(self.value_decoded))}")
        return "\n".join(line for line in lines if line)

    def json(self) -> dict[str, Any]:
        """The ``bpfmap`` member's value."""
        out: dict[str, Any] = {
            "map_id": self.map_id,
            "map_name": self.map_name,
            "map_type": self.map_type,
            "op": self.op,
            "key_size": self.key_size,
            "key": self.key.hex(),
            "value_size": self.value_size,
        }
        if self.found is not None:
            out["found"] = self.found
        if self.value is not None:
            out["value"] = self.value.hex()
        if self.key_decoded is not None:
            out["key_decoded"] = self.key_decoded
        if self.value_decoded is not None:
            out["value_decoded"] = self.value_decoded
        return out
