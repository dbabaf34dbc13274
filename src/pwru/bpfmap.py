"""--output-bpfmap: the BPF map operations (lookup, update, delete) made on a packet's behalf, with map id,
name, key and value, the key and value decoded with the map's BTF when it has one (beyond cilium/pwru's hex).

**Which functions.** A BPF program does not call ``bpf_map_lookup_elem`` and friends through the helper: the
verifier rewrites each call to the map type's own function (``htab_map_update_elem``, ...) and inlines hash and
array lookups (an array lookup becomes arithmetic and calls nothing; a hash lookup calls
``__htab_map_lookup_elem``, which returns the element, whose value follows the key). So the functions are found
in the loaded programs' instructions as the verifier left them (``xlated``): every helper call's target
(``__bpf_call_base`` + its ``imm``) that kallsyms names, kept when its BTF says it is a map function (first
parameter a ``struct bpf_map *``, or a ``u64`` named ``*map`` for the ``BPF_CALL_n`` helpers, and a name ending
``_lookup_elem``, ``_update_elem`` or ``_delete_elem``, as cilium/pwru decides). Where the kernel withholds the
call addresses (kptr_restrict), every map function of the kernel is probed instead.

**Which packet.** A map function has no skb argument: an operation is shown with the skb its call chain works on
(``chain_skb``, --filter-track-skb-by-stackid, which --output-bpfmap turns on), after the kernel side sent the
operation as a ``struct bpfmap_op`` just before the event. pwru's own maps (``own_maps``, filled after loading)
are never shown. Programs loaded after the start that call a map function not probed yet are not followed.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pwru import backends, discovery
from pwru.btf_value import decode
from pwru.config import Config
from pwru.ebpf import btf, btf_kernel, features, prog
from pwru.ebpf.btf import Kind, Spec
from pwru.ebpf.collection import Collection
from pwru.ebpf.errors import EBPFError
from pwru.ebpf.kallsyms import Kallsyms
from pwru.ebpf.maps import Map
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.output.bpfmap import MapOp
from pwru.probes import Attach, Probe
from pwru.records import Batch, Buffer

log = logging.getLogger("pwru")

OPS = ("lookup", "update", "delete")
#: Lookups that return the hash table's element rather than the value (the call inlined hash lookups make).
ELEMENT_LOOKUPS = frozenset({"__htab_map_lookup_elem"})
#: The symbol helper calls are relative to (``imm`` = function - ``__bpf_call_base``).
CALL_BASE = "__bpf_call_base"
RECORD = "bpfmap_op"
OP_ENUM, OP_PREFIX = "pwru_bpfmap_op", "PWRU_BPFMAP_"
OWN_MAPS = "own_maps"
_CALL = 0x85  # BPF_JMP | BPF_CALL
_INSN = struct.Struct("<BBhi")


@dataclass(frozen=True)
class MapFunction:
    """A kernel function that does a map operation: its name, ``op`` (lookup, update, delete), FUNC id and
    parameter count."""

    name: str
    op: str
    btf_id: int
    nargs: int


def _op_of(name: str) -> str | None:
    return next((op for op in OPS if name.endswith(f"_{op}_elem")), None)


def _is_map_param(spec: Spec, param: btf.Param) -> bool:
    t = spec.resolve_type(param.type)
    if isinstance(t, btf.Pointer):
        target = spec.resolve_type(t.type)
        return isinstance(target, btf.Struct) and target.name == "bpf_map"
    return isinstance(t, btf.Int) and t.size == 8 and param.name.endswith("map")


def map_functions(spec: Spec) -> dict[str, MapFunction]:
    """Every map function of the kernel's BTF, by name."""
    out: dict[str, MapFunction] = {}
    for fid, proto in spec.refs_of_kind(Kind.FUNC):
        name = spec.name_of(fid)
        op = _op_of(name)
        if op is None:
            continue
        t = spec.type(proto)
        if isinstance(t, btf.FuncProto) and t.params and _is_map_param(spec, t.params[0]):
            out.setdefault(name, MapFunction(name, op, fid, len(t.params)))
    return out


def call_targets(code: bytes, base: int) -> tuple[set[int], int]:
    """The addresses a program's xlated instructions call as helpers (``imm`` relative to ``base``), and how many
    helper calls had their ``imm`` withheld (0), which are left out."""
    out = set()
    withheld = 0
    for opcode, regs, _off, imm in _INSN.iter_unpack(code[: len(code) // 8 * 8]):
        if opcode == _CALL and regs >> 4 == 0:
            if imm:
                out.add(base + imm)
            else:
                withheld += 1
    return out, withheld


def called_functions(ksyms: Kallsyms, ids: Iterable[int] | None = None) -> set[str] | None:
    """The kernel functions the loaded programs (``ids``, default all) call as helpers, by name; None when the
    kernel withholds the addresses (no ``__bpf_call_base`` in kallsyms, or every call's ``imm`` zeroed)."""
    base = ksyms.address(CALL_BASE)
    if base is None:
        return None
    addresses: set[int] = set()
    withheld = 0
    for prog_id in prog.loaded_ids() if ids is None else ids:
        try:
            with prog.Program.from_id(prog_id) as p:
                code = p.xlated()
        except (EBPFError, OSError):
            continue  # gone meanwhile
        found, zeroed = call_targets(code, base)
        addresses |= found
        withheld += zeroed
    if withheld and not addresses:
        return None
    names = set()
    for a in addresses:
        sym = ksyms.lookup(a)
        if sym is not None and sym.offset == 0 and sym.module is None:
            names.add(sym.name)
    return names


def check(config: Config, backend: str) -> None:
    """Before loading: the map functions are reached by kprobes or fentry only."""
    if config.output.bpfmap and backend not in ("kprobe-multi", "kprobe", "fentry"):
        raise UserError(
            f"--output-bpfmap needs kprobes or fentry on the kernel's map functions, and this run uses the {backend} "
            "backend (see --list-backends for what this kernel allows)",
            exit_code=1,
        )


def probes(config: Config, backend: str, kernel: KernelContext) -> list[Probe]:
    """The map functions' probes, kind ``map_op``: with fentry, ``fentry_bpfmap_update``/``_delete`` and
    ``fexit_bpfmap_lookup[_elem]`` (arguments and result at once); with kprobes, the update and delete at entry
    and a lookup's entry (keeps its arguments, shows nothing) and return probe."""
    if not config.output.bpfmap:
        return []
    functions = map_functions(kernel.spec)
    called = called_functions(kernel.kallsyms)
    if called is None:
        log.warning("--output-bpfmap: the kernel withholds the BPF programs' call addresses (kptr_restrict?): "
                    "every map function of the kernel is probed")  # fmt: skip
        chosen = sorted(functions)
    else:
        chosen = sorted(n for n in called if n in functions)
    chosen = sorted(discovery.probeable(chosen, kernel.kallsyms))
    if not chosen:
        log.warning("--output-bpfmap: no loaded BPF program calls a map function that can be probed (array "
                    "lookups are inlined and call none)")  # fmt: skip
    backend = _method_backend(backend, kernel)
    ksyms = None
    if backend == "fentry" and not kernel.feature("get_func_ip", features.get_func_ip).available:
        ksyms = kernel.kallsyms  # each load is told its function's address (no bpf_get_func_ip before 5.15)
    out: list[Probe] = []
    for name in chosen:
        f = functions[name]
        suffix = "_elem" if name in ELEMENT_LOOKUPS else ""
        if backend == "fentry":
            constants: dict[str, int] = {} if ksyms is None else {"cfg_probe_id": ksyms.address(name) or 0}
            if f.op == "lookup":
                constants["cfg_ret_pos"] = f.nargs + 1
                out.append(Probe("map_op", name, f"fexit_bpfmap_lookup{suffix}", Attach.FEXIT, None, f.btf_id,
                                 constants=constants))  # fmt: skip
            else:
                out.append(Probe("map_op", name, f"fentry_bpfmap_{f.op}", Attach.FENTRY, None, f.btf_id,
                                 constants=constants))  # fmt: skip
            continue
        entry = Attach.KPROBE_MULTI if backend == "kprobe-multi" else Attach.KPROBE
        if f.op == "lookup":
            out.append(Probe("map_op", name, "kprobe_bpfmap_lookup_entry", entry, shows=False))
            out.append(Probe("map_op", name, f"kretprobe_bpfmap_lookup{suffix}", Attach.KRETPROBE))
        else:
            out.append(Probe("map_op", name, f"kprobe_bpfmap_{f.op}", entry))
    return out


def recursion_guarded(spec: Spec) -> bool:
    """Whether the kernel stops a tracing program from running inside itself (``struct bpf_prog``'s per-CPU
    ``active`` count, Linux 5.12+). Without it fentry/fexit on a map function that the program itself calls
    (every map lookup of pwru's programs calls ``__htab_map_lookup_elem``) recurses until the kernel stack
    overflows: a panic, seen on 5.10."""
    try:
        return any(m.name == "active" for m in spec.members("bpf_prog"))
    except btf.BTFError:
        return False


def _method_backend(backend: str, kernel: KernelContext) -> str:
    """The backend the map functions' probes use: the run's, but kprobes instead of fentry on a kernel without
    :func:`recursion_guarded` (kprobe programs never run inside one another); one line, exit 1, when it has
    neither."""
    if backend != "fentry" or recursion_guarded(kernel.spec):
        return backend
    if backends.feature_for("kprobe", kernel).available:
        log.info("--output-bpfmap: kprobes on the map functions (fentry on them would recurse on this kernel)")
        return "kprobe"
    raise UserError(
        "--output-bpfmap with fentry needs Linux 5.12+ (this kernel lets a tracing program recurse into the map "
        "functions it calls) or kprobes, which this kernel refuses",
        exit_code=1,
    )


def mark_own(coll: Collection) -> None:
    """After loading, before attaching: every map of pwru's goes into ``own_maps``, so the map operations of
    pwru's own programs are never shown."""
    own = coll.maps.get(OWN_MAPS)
    if own is None:
        return
    for m in coll.maps.values():
        own[struct.pack("=I", m.info.id)] = b"\x01"


class MapTypes:
    """The key and value types of a map by id, from the map's BTF (read once per map; None when it has none,
    or the map is gone)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Spec, int, int] | None] = {}

    def get(self, map_id: int) -> tuple[Spec, int, int] | None:
        if map_id not in self._known:
            self._known[map_id] = self._read(map_id)
        return self._known[map_id]

    @staticmethod
    def _read(map_id: int) -> tuple[Spec, int, int] | None:
        try:
            with Map.from_id(map_id) as m:
                info = m.info
            if not info.btf_id or not (info.btf_key_type_id or info.btf_value_type_id):
                return None
            return btf.Spec.from_bytes(btf_kernel.raw_btf(info.btf_id)), info.btf_key_type_id, info.btf_value_type_id
        except (EBPFError, OSError, ValueError) as e:
            log.debug("map %d: no BTF types (%s)", map_id, e)
            return None


def _decoded(types: tuple[Spec, int, int] | None, which: int, data: bytes | None, size: int) -> Any:
    if types is None or data is None or len(data) < size:
        return None
    spec, key_id, value_id = types
    tid = (key_id, value_id)[which]
    if not tid:
        return None
    try:
        return decode(spec, tid, data)
    except (btf.BTFError, ValueError, IndexError):
        return None


Key = tuple[int, int, int]
#: Operations kept for events not seen yet; beyond this the oldest go (their events were lost to a full ring).
MAX_PENDING = 4096


class MapOpStage:
    """Takes the ``struct bpfmap_op`` records out of each batch; each becomes a :class:`MapOp` in
    ``batch.map_ops`` under the key (ts, skb, probe) of its event, which follows it in ring order."""

    def __init__(self, types: MapTypes | None = None) -> None:
        self._types = types or MapTypes()
        self._pending: dict[Key, MapOp] = {}
        self._schema: Any = None

    def _setup(self, batch: Batch) -> None:
        schema = self._schema = batch.schema
        self._record = schema.type_id(RECORD)
        self._event = schema.type_id("event")
        self._layout = schema.layout(RECORD)
        self._ops = {v: k.lower() for k, v in schema.enum(OP_ENUM, OP_PREFIX).items()}
        self._type_of = schema.type_of
        self._key_of = schema.header.unpacker("ts", "skb", "probe")

    def op_of(self, buf: Buffer) -> tuple[Key, MapOp]:
        r = self._layout.decode(buf, len(buf))
        op = self._ops.get(r.op, str(r.op))
        types = self._types.get(r.map_id)
        key = bytes(r.key[: r.key_size])
        value = bytes(r.value[: r.value_size]) if r.value_read else None
        found = bool(r.found) if op == "lookup" else None
        return (r.ts, r.skb, r.probe), MapOp(
            r.map_id, r.map_name.decode(errors="replace"), r.map_type, op, r.key_size, r.value_size, key, value, found,
            _decoded(types, 0, key, r.key_size), _decoded(types, 1, value, r.value_size),
        )  # fmt: skip

    def process(self, batch: Batch) -> Batch:
        if batch.schema is not self._schema:
            self._setup(batch)
        record, event, pending = self._record, self._event, self._pending
        kept: list[bytes] = []
        for buf in batch.records:
            rtype = self._type_of(buf)[0]
            if rtype == record:
                key, op = self.op_of(buf)
                pending[key] = op
                continue
            if rtype == event and pending:
                key = self._key_of(buf)
                found = pending.pop(key, None)
                if found is not None:
                    batch.map_ops[key] = found
            kept.append(buf)
        while len(pending) > MAX_PENDING:
            del pending[next(iter(pending))]
        batch.records = kept
        return batch

    def finish(self) -> Batch | None:
        return None


def stage(config: Config) -> MapOpStage | None:
    return MapOpStage() if config.output.bpfmap else None
