"""Struct dumps (--output-skb, --output-skb-shared-info): the text the kernel printed for an event's
``struct sk_buff`` / ``struct skb_shared_info`` (``bpf_snprintf_btf``), joined to its event.

The kernel sends each dump as a ``struct skb_dump`` record just before its event, with the event's header (ts,
skb, probe). :class:`DumpStage` takes the dump records out of the batch and files their text under the event's
key in ``batch.dumps``, by the dump's name: ``enum pwru_dump_kind``'s member without ``PWRU_DUMP_``, lower-cased,
which is the struct's name (``sk_buff``, ``skb_shared_info``). An event whose dump has not come (it did not fit
the ring buffer, or the kernel could not print it) is shown without it: no event is held back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pwru.config import Config
from pwru.ebpf import btf
from pwru.ebpf.elf import ObjectSpec
from pwru.errors import UserError
from pwru.output.names import sanitize
from pwru.records import Batch, Buffer

log = logging.getLogger("pwru")

DUMP_RECORD = "skb_dump"
DUMP_KIND_ENUM = "pwru_dump_kind"
DUMP_KIND_PREFIX = "PWRU_DUMP_"
#: Dumps kept for events not seen yet; beyond this the oldest go (their events were lost to a full ring).
MAX_PENDING = 4096

Key = tuple[int, int, int]


def dump_text(raw: bytes) -> str:
    """A dump's text as printable lines: up to its NUL, each line sanitised (the line breaks and the indenting
    tabs kept)."""
    text = raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
    return "\n".join("\t".join(sanitize(part) for part in line.split("\t")) for line in text.split("\n"))


class DumpStage:
    """Takes ``struct skb_dump`` records out of each batch; their text goes to ``batch.dumps`` under the key
    (ts, skb, probe) of the event they belong to, which comes after them in ring order (in this batch or a
    later one)."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._pending: dict[Key, dict[str, str]] = {}
        self._max = max_pending
        self._schema: Any = None
        self._kinds: dict[int, str] = {}
        self._type_of: Callable[[Buffer], tuple[Any, ...]] | None = None
        self._key_of: Callable[[Buffer], tuple[Any, ...]] | None = None

    def _setup(self, batch: Batch) -> None:
        schema = batch.schema
        self._schema = schema
        self._dump_type = schema.type_id(DUMP_RECORD)
        self._event_type = schema.type_id("event")
        self._layout = schema.layout(DUMP_RECORD)
        self._kinds = {v: k for k, v in schema.enum(DUMP_KIND_ENUM, DUMP_KIND_PREFIX).items()}
        self._type_of = schema.type_of
        self._key_of = schema.header.unpacker("ts", "skb", "probe")

    def process(self, batch: Batch) -> Batch:
        if batch.schema is not self._schema:
            self._setup(batch)
        type_of, key_of = self._type_of, self._key_of
        assert type_of is not None and key_of is not None
        dump_type, event_type, pending = self._dump_type, self._event_type, self._pending
        kept: list[bytes] = []
        for buf in batch.records:
            rtype = type_of(buf)[0]
            if rtype == dump_type:
                d = self._layout.decode(buf, len(buf))
                name = self._kinds.get(d.kind, f"dump{d.kind}")
                pending.setdefault((d.ts, d.skb, d.probe), {})[name] = dump_text(d.text)
                continue
            if rtype == event_type and pending:
                key = key_of(buf)
                found = pending.pop(key, None)
                if found is not None:
                    batch.dumps[key] = found
            kept.append(buf)
        while len(pending) > self._max:
            del pending[next(iter(pending))]
        batch.records = kept
        return batch

    def finish(self) -> Batch | None:
        return None


# --- what the run loop asks of this feature ---------------------------------------------------------------------

#: The map the kernel writes a dump in before sending it (its value size is --set-percpu-buf).
DUMP_MAP = "dump_buf"
#: The helper that prints a struct (kernel >= 5.10).
HELPER = "BPF_FUNC_snprintf_btf"


def wanted(config: Config) -> bool:
    """Whether the flags ask for struct dumps."""
    return config.output.skb or config.output.shared_info


def prepare(config: Config, kernel_spec: btf.Spec, obj: ObjectSpec, nf_probes: Sequence[object]) -> None:
    """Before loading: the kernel must have the helper (one line, exit 1, when not); the dump buffer gets its
    --set-percpu-buf size; netfilter probes, whose programs get only the base helpers, are said to come without
    dumps."""
    obj.maps[DUMP_MAP].value_size = config.output.percpu_buf
    if not wanted(config):
        return
    flag = "--output-skb" if config.output.skb else "--output-skb-shared-info"
    try:
        helpers = kernel_spec.enum_values("bpf_func_id")
    except btf.BTFError:
        helpers = {}
    if HELPER not in helpers:
        raise UserError(f"{flag}: this kernel lacks bpf_snprintf_btf() (Linux 5.10 or later)", exit_code=1)
    if config.kernel.kernel_btf:
        log.warning(
            "%s with --kernel-btf: the struct's type ids come from that file, the kernel prints by its own BTF "
            "(the text is right only when the file is the running kernel's)",
            flag,
        )
    if nf_probes:
        log.warning(
            "%s: the netfilter hooks' events come without it (netfilter programs get only the base helpers, "
            "bpf_snprintf_btf is not among them)",
            flag,
        )


def stage(config: Config) -> DumpStage | None:
    """The dump stage when the flags ask for dumps."""
    return DumpStage() if wanted(config) else None
