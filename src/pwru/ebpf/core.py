"""CO-RE (compile once, run everywhere) relocation of a program's instructions against a target BTF.

clang records, for every ``preserve_access_index`` access, a ``bpf_core_relo``: the instruction, the local
(object BTF) root type, an access string (``"0:3:1"``: array index of the root, then member or element
indexes) and what to compute. This module re-computes each value in the *target* BTF (the running kernel's
vmlinux, module BTF as fallback, or a file) and patches the instruction, following the semantics of
libbpf's relocation engine as documented in the kernel's ``Documentation/bpf/llvm_reloc.rst`` and
``libbpf_overview.rst``:

* Candidates are target types of the same kind whose *essential* name (the name without a ``___suffix``)
  equals the local one. Every candidate that matches must give the same value, else the relocation fails.
* Field relocations walk the access string by member *name* (through anonymous structs/unions in the
  target), check the field types are compatible, then compute byte offset, size, signedness or the shifts
  that extract a bitfield from a 64-bit load.
* ``*_EXISTS`` and ``TYPE_MATCHES`` give 0 when nothing matches; any other failed relocation *poisons* its
  instruction with a call to helper ``0xbad2310``: the verifier rejects that only if it is reachable, so
  code guarded by ``bpf_core_field_exists()`` keeps working on kernels lacking the field.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pwru.ebpf import asm, btf
from pwru.ebpf.asm import Class, Instruction, Mode, Size
from pwru.ebpf.elf import CoreRelo, CoreReloKind
from pwru.ebpf.errors import EBPFError

__all__ = ["POISON_HELPER", "CoreError", "CoreResult", "PoisonedLdImm64", "Target", "relocate"]

#: The helper id a poisoned instruction calls (libbpf's convention, recognised by the verifier's message).
POISON_HELPER = 0xBAD2310

_FIELD_KINDS = frozenset(
    {
        CoreReloKind.FIELD_BYTE_OFFSET,
        CoreReloKind.FIELD_BYTE_SIZE,
        CoreReloKind.FIELD_EXISTS,
        CoreReloKind.FIELD_SIGNED,
        CoreReloKind.FIELD_LSHIFT_U64,
        CoreReloKind.FIELD_RSHIFT_U64,
    }
)
_TYPE_KINDS = frozenset(
    {
        CoreReloKind.TYPE_ID_LOCAL,
        CoreReloKind.TYPE_ID_TARGET,
        CoreReloKind.TYPE_EXISTS,
        CoreReloKind.TYPE_SIZE,
        CoreReloKind.TYPE_MATCHES,
    }
)
_ENUM_KINDS = frozenset({CoreReloKind.ENUMVAL_EXISTS, CoreReloKind.ENUMVAL_VALUE})
_EXISTS_KINDS = frozenset(
    {
        CoreReloKind.FIELD_EXISTS,
        CoreReloKind.TYPE_EXISTS,
        CoreReloKind.ENUMVAL_EXISTS,
        CoreReloKind.TYPE_MATCHES,
    }
)


class CoreError(EBPFError, ValueError):
    """A relocation that cannot be computed or applied (malformed record, ambiguous target, bad insn)."""


@dataclass(frozen=True, slots=True)
class CoreResult:
    """What happened to one relocation: the local and target values, or ``poisoned`` with the reason."""

    relo: CoreRelo
    local: int
    target: int | None
    poisoned: bool = False
    reason: str = ""


class PoisonedLdImm64(Instruction):
    """An ld_imm64 whose relocation failed: two slots, each a call to :data:`POISON_HELPER`."""

    @property
    def slots(self) -> int:
        return 2

    def encode(self) -> bytes:
        one = struct.pack("<BBhi", Class.JMP | asm.JmpOp.CALL, 0, 0, POISON_HELPER)
        return one + one


def _poison(insn: Instruction) -> Instruction:
    call = Class.JMP | asm.JmpOp.CALL
    if insn.is_ld_imm64:
        return PoisonedLdImm64(call, 0, 0, 0, POISON_HELPER, label=insn.label)
    return Instruction(call, 0, 0, 0, POISON_HELPER, label=insn.label)


# ---------------------------------------------------------------------------------------------------------
# Target BTF


class Target:
    """Where candidates are looked for: one BTF (a file) or vmlinux then every module's split BTF."""

    def __init__(self, spec: btf.Spec | None = None, *, modules: bool | None = None) -> None:
        self.base = spec if spec is not None else btf.kernel_btf()
        self.use_modules = (spec is None) if modules is None else modules
        self._module_specs: list[btf.Spec] | None = None
        self._cands: dict[tuple[str, str], list[tuple[btf.Spec, int]]] = {}
        #: Outcomes of relocations already computed, per local spec (by identity) and relocation: every program
        #: of an object repeats its shared functions' relocations (seconds per start under emulation).
        self.outcomes: dict[int, tuple[btf.Spec, dict[tuple[int, int, str], tuple[_Outcome, _Outcome]]]] = {}

    def _modules(self) -> list[btf.Spec]:
        if self._module_specs is None:
            self._module_specs = []
            if self.use_modules:
                for name in btf.module_names():
                    try:
                        self._module_specs.append(btf.module_btf(name))
                    except (OSError, btf.BTFError):
                        continue
        return self._module_specs

    def candidates(self, name: str, kind: btf.Kind) -> list[tuple[btf.Spec, int]]:
        """Target types whose essential name is ``name`` and whose kind is compatible with ``kind``."""
        key = (name, _kind_class(kind))
        hit = self._cands.get(key)
        if hit is not None:
            return hit
        out = [(self.base, t) for t in _find_essential(self.base, name, kind)]
        if not out:
            for mod in self._modules():
                out += [(mod, t) for t in _find_essential(mod, name, kind) if t >= mod.first_id]
        self._cands[key] = out
        return out


def _kind_class(kind: btf.Kind) -> str:
    if kind in (btf.Kind.ENUM, btf.Kind.ENUM64):
        return "enum"
    return kind.name


def essential_name(name: str) -> str:
    """``name`` without a ``___flavour`` suffix (``task_struct___old`` -> ``task_struct``)."""
    pos = name.find("___")
    return name[:pos] if pos > 0 else name


def _find_essential(spec: btf.Spec, name: str, kind: btf.Kind) -> list[int]:
    kc = _kind_class(kind)
    ids = spec.find(name)
    # Flavoured target names (rare in kernels) are matched too.
    return [t for t in ids if _kind_class(spec.kind_of(t)) == kc]


# ---------------------------------------------------------------------------------------------------------
# Access specs


@dataclass(frozen=True, slots=True)
class _Acc:
    index: int
    name: str | None  # member name; None for an array index (the root is one)
    member_type: int = 0  # local member type, for compatibility checks


@dataclass(frozen=True, slots=True)
class _Field:
    bit_offset: int
    bitfield: int  # bits, 0 for a plain field
    type_id: int  # resolved field type
    spec: btf.Spec


def _parse_access(access: str) -> list[int]:
    try:
        idx = [int(p) for p in access.split(":")]
    except ValueError:
        raise CoreError(f"bad access string {access!r}") from None
    if not idx or any(i < 0 for i in idx):
        raise CoreError(f"bad access string {access!r}")
    return idx


def _member_bits(spec: btf.Spec, m: btf.Member) -> tuple[int, int]:
    """``(extra bit offset, bitfield size)``: bitfields of kind_flag=0 structs live in their INT type."""
    if m.bitfield_size:
        return 0, m.bitfield_size
    t = spec.resolve_type(m.type)
    if isinstance(t, btf.Int) and (t.offset or (t.bits and t.bits != t.size * 8)):
        return t.offset, t.bits
    return 0, 0


def _local_field(spec: btf.Spec, root: int, idx: list[int]) -> tuple[list[_Acc], _Field]:
    cur = spec.resolve(root)
    bit_off = idx[0] * _size(spec, cur) * 8
    accs = [_Acc(idx[0], None)]
    bitfield = 0
    for i in idx[1:]:
        t = spec.type(cur)
        if isinstance(t, btf.Struct | btf.Union):
            if i >= len(t.members):
                raise CoreError(f"member index {i} out of range in {t.name or 'anonymous'}")
            m = t.members[i]
            extra, bitfield = _member_bits(spec, m)
            bit_off += m.bit_offset + extra
            if m.name:
                accs.append(_Acc(i, m.name, m.type))
            cur = spec.resolve(m.type)
        elif isinstance(t, btf.Array):
            bitfield = 0
            bit_off += i * _size(spec, t.type) * 8
            accs.append(_Acc(i, None))
            cur = spec.resolve(t.type)
        else:
            raise CoreError(f"access through a {t.kind.name}")
    return accs, _Field(bit_off, bitfield, cur, spec)


def _size(spec: btf.Spec, tid: int) -> int:
    try:
        return spec.size_of(tid)
    except btf.BTFError as e:
        raise CoreError(str(e)) from None


def _match_field(local: btf.Spec, accs: list[_Acc], target: btf.Spec, cand: int) -> _Field | None:
    cur = target.resolve(cand)
    bit_off = accs[0].index * _size(target, cur) * 8
    bitfield = 0
    for acc in accs[1:]:
        t = target.type(cur)
        if acc.name is not None:
            if not isinstance(t, btf.Struct | btf.Union):
                return None
            hit = target.find_member(t, acc.name)
            if hit is None:
                return None
            m, extra = hit
            if not _fields_compat(local, acc.member_type, target, m.type):
                return None
            bextra, bitfield = _member_bits(target, m)
            bit_off += extra + m.bit_offset + bextra
            cur = target.resolve(m.type)
        else:
            if not isinstance(t, btf.Array):
                return None
            if t.nelems and acc.index >= t.nelems:
                return None
            bitfield = 0
            bit_off += acc.index * _size(target, t.type) * 8
            cur = target.resolve(t.type)
    return _Field(bit_off, bitfield, cur, target)


_INTLIKE = (btf.Int, btf.Enum, btf.Enum64)


def _fields_compat(local: btf.Spec, lid: int, target: btf.Spec, tid: int) -> bool:
    """libbpf-style field compatibility: same shape class; ints/enums of any size; any pointers."""
    for _ in range(32):
        lt = local.resolve_type(lid)
        tt = target.resolve_type(tid)
        if isinstance(lt, _INTLIKE) and isinstance(tt, _INTLIKE):
            return True
        if isinstance(lt, btf.Pointer) and isinstance(tt, btf.Pointer):
            return True
        if isinstance(lt, btf.Fwd | btf.Struct | btf.Union) and isinstance(
            tt, btf.Fwd | btf.Struct | btf.Union
        ):
            if isinstance(lt, btf.Union) != isinstance(tt, btf.Union) and not isinstance(lt, btf.Fwd):
                return False
            return essential_name(lt.name) == essential_name(tt.name)
        if isinstance(lt, btf.Array) and isinstance(tt, btf.Array):
            lid, tid = lt.type, tt.type
            continue
        if isinstance(lt, btf.Float) and isinstance(tt, btf.Float):
            return lt.size == tt.size
        return False
    return False


def _types_compat(local: btf.Spec, lid: int, target: btf.Spec, tid: int, depth: int = 0) -> bool:
    """Type compatibility for type-based relocations (names of composites are not compared deeper)."""
    if depth > 16:
        return False
    lt = local.resolve_type(lid)
    tt = target.resolve_type(tid)
    if isinstance(lt, btf.Void) or isinstance(tt, btf.Void):
        return isinstance(lt, btf.Void) and isinstance(tt, btf.Void)
    if isinstance(lt, btf.Fwd | btf.Struct | btf.Union) and isinstance(tt, btf.Fwd | btf.Struct | btf.Union):
        return True
    if isinstance(lt, btf.Enum | btf.Enum64) and isinstance(tt, btf.Enum | btf.Enum64):
        return True
    if type(lt) is not type(tt):
        return False
    if isinstance(lt, btf.Int) and isinstance(tt, btf.Int):
        return lt.offset == 0 and tt.offset == 0
    if isinstance(lt, btf.Pointer) and isinstance(tt, btf.Pointer):
        return _types_compat(local, lt.type, target, tt.type, depth + 1)
    if isinstance(lt, btf.Array) and isinstance(tt, btf.Array):
        return _types_compat(local, lt.type, target, tt.type, depth + 1)
    if isinstance(lt, btf.FuncProto) and isinstance(tt, btf.FuncProto):
        if len(lt.params) != len(tt.params):
            return False
        if not _types_compat(local, lt.return_type, target, tt.return_type, depth + 1):
            return False
        return all(
            _types_compat(local, a.type, target, b.type, depth + 1)
            for a, b in zip(lt.params, tt.params, strict=True)
        )
    return isinstance(lt, btf.Float) and lt.size == getattr(tt, "size", -1)


def _types_match(local: btf.Spec, lid: int, target: btf.Spec, tid: int, depth: int = 0) -> bool:
    """TYPE_MATCHES: compatibility plus, for composites, every local member present with a matching type,
    and for enums every local enumerator present."""
    if not _types_compat(local, lid, target, tid, depth):
        return False
    lt = local.resolve_type(lid)
    tt = target.resolve_type(tid)
    if isinstance(lt, btf.Struct | btf.Union) and isinstance(tt, btf.Struct | btf.Union):
        if type(lt) is not type(tt) or essential_name(lt.name) != essential_name(tt.name):
            return False
        for m in lt.members:
            hit = next((x for x in tt.members if x.name == m.name), None)
            if hit is None or depth > 4:
                return False
            if not _types_match(local, m.type, target, hit.type, depth + 1):
                return False
        return True
    if isinstance(lt, btf.Enum | btf.Enum64) and isinstance(tt, btf.Enum | btf.Enum64):
        names = {essential_name(v.name) for v in tt.values}
        return all(essential_name(v.name) in names for v in lt.values)
    if isinstance(lt, btf.Int) and isinstance(tt, btf.Int):
        return lt.size == tt.size and lt.signed == tt.signed
    return True


# ---------------------------------------------------------------------------------------------------------
# Values


def _field_value(kind: CoreReloKind, f: _Field) -> tuple[int, int]:
    """``(value, byte size of the load)`` for a field relocation."""
    spec, t = f.spec, f.spec.type(f.type_id)
    if kind == CoreReloKind.FIELD_EXISTS:
        return 1, 0
    if f.bitfield:
        if not isinstance(t, _INTLIKE):
            raise CoreError("bitfield of a non-integer type")
        byte_sz = t.size
        if byte_sz <= 0:
            raise CoreError(f"bitfield of a {byte_sz}-byte integer type")
        byte_off = f.bit_offset // 8 // byte_sz * byte_sz
        while f.bit_offset + f.bitfield - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise CoreError("bitfield does not fit in a 64-bit load")
            byte_sz *= 2
            byte_off = f.bit_offset // 8 // byte_sz * byte_sz
        bit_sz = f.bitfield
    else:
        if f.bit_offset % 8:
            raise CoreError("unaligned non-bitfield member")
        byte_sz = _size(spec, f.type_id)
        byte_off = f.bit_offset // 8
        bit_sz = byte_sz * 8
    if kind == CoreReloKind.FIELD_BYTE_OFFSET:
        return byte_off, byte_sz
    if kind == CoreReloKind.FIELD_BYTE_SIZE:
        return byte_sz, byte_sz
    if kind == CoreReloKind.FIELD_SIGNED:
        signed = (isinstance(t, btf.Int) and t.signed) or (isinstance(t, btf.Enum | btf.Enum64) and t.signed)
        return int(signed), byte_sz
    if kind == CoreReloKind.FIELD_LSHIFT_U64:
        return 64 - (f.bit_offset + bit_sz - byte_off * 8), byte_sz
    if kind == CoreReloKind.FIELD_RSHIFT_U64:
        return 64 - bit_sz, byte_sz
    raise CoreError(f"not a field relocation: {kind.name}")


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: int | None  # None: no candidate matched
    size: int = 0  # field byte size (FIELD_BYTE_OFFSET memory-access adjustment)
    intlike: bool = False
    bitfield: bool = False
    reason: str = ""


def _compute(relo: CoreRelo, local: btf.Spec, target: Target | None) -> tuple[_Outcome, _Outcome]:
    """Local and target outcomes of one relocation (target None: compute the local value only)."""
    kind = relo.kind
    root = relo.type_id
    if kind == CoreReloKind.TYPE_ID_LOCAL:
        return _Outcome(root), _Outcome(root)
    ltype = local.type(root)
    name = essential_name(getattr(ltype, "name", "") or "")
    if kind in _FIELD_KINDS:
        accs, lf = _local_field(local, root, _parse_access(relo.access))
        lval, lsize = _field_value(kind, lf)
        lout = _Outcome(
            lval, lsize, isinstance(lf.spec.type(lf.type_id), (*_INTLIKE, btf.Pointer)), bool(lf.bitfield)
        )
        if target is None:
            return lout, lout
        if not name:
            raise CoreError(f"field relocation on anonymous type {root}")
        results: list[_Outcome] = []
        for tspec, cand in target.candidates(name, local.kind_of(root)):
            tf = _match_field(local, accs, tspec, cand)
            if tf is None:
                continue
            tval, tsize = _field_value(kind, tf)
            ft = tspec.type(tf.type_id)
            results.append(_Outcome(tval, tsize, isinstance(ft, (*_INTLIKE, btf.Pointer)), bool(tf.bitfield)))
        return lout, _agree(results, relo, f"no {name} in the target has {_access_text(local, root, relo)}")
    if kind in _TYPE_KINDS:
        lval = {
            CoreReloKind.TYPE_ID_TARGET: root,
            CoreReloKind.TYPE_EXISTS: 1,
            CoreReloKind.TYPE_MATCHES: 1,
            CoreReloKind.TYPE_SIZE: _size(local, root) if kind == CoreReloKind.TYPE_SIZE else 0,
        }[kind]
        lout = _Outcome(lval)
        if target is None:
            return lout, lout
        if not name:
            raise CoreError(f"type relocation on anonymous type {root}")
        results = []
        for tspec, cand in target.candidates(name, local.kind_of(root)):
            check = _types_match if kind == CoreReloKind.TYPE_MATCHES else _types_compat
            if not check(local, root, tspec, cand):
                continue
            if kind == CoreReloKind.TYPE_ID_TARGET:
                results.append(_Outcome(cand))
            elif kind == CoreReloKind.TYPE_SIZE:
                results.append(_Outcome(_size(tspec, cand)))
            else:
                results.append(_Outcome(1))
        return lout, _agree(results, relo, f"no compatible {ltype.kind.name.lower()} {name} in the target")
    if kind in _ENUM_KINDS:
        idx = _parse_access(relo.access)
        lenum = local.resolve_type(root)
        if not isinstance(lenum, btf.Enum | btf.Enum64) or len(idx) != 1 or idx[0] >= len(lenum.values):
            raise CoreError(f"bad enum relocation {relo}")
        lv = lenum.values[idx[0]]
        lout = _Outcome(1 if kind == CoreReloKind.ENUMVAL_EXISTS else lv.value)
        if target is None:
            return lout, lout
        want = essential_name(lv.name)
        results = []
        for tspec, cand in target.candidates(name, local.kind_of(root)):
            tenum = tspec.resolve_type(cand)
            assert isinstance(tenum, btf.Enum | btf.Enum64)
            hit = next((v for v in tenum.values if essential_name(v.name) == want), None)
            if hit is not None:
                results.append(_Outcome(1 if kind == CoreReloKind.ENUMVAL_EXISTS else hit.value))
        return lout, _agree(results, relo, f"no enumerator {lv.name} in enum {name} of the target")
    raise CoreError(f"unsupported relocation kind {kind!r}")


def _access_text(local: btf.Spec, root: int, relo: CoreRelo) -> str:
    try:
        accs, _ = _local_field(local, root, _parse_access(relo.access))
    except CoreError:
        return relo.access
    return ".".join(a.name if a.name is not None else f"[{a.index}]" for a in accs[1:]) or relo.access


def _agree(results: list[_Outcome], relo: CoreRelo, why: str) -> _Outcome:
    if not results:
        return _Outcome(None, reason=why)
    vals = {r.value or 0 for r in results}
    if len(vals) > 1:
        raise CoreError(f"relocation {relo.kind.name} {relo.access!r}: candidates disagree ({sorted(vals)})")
    return results[0]


# ---------------------------------------------------------------------------------------------------------
# Patching


def relocate(
    insns: list[Instruction],
    relos: Sequence[CoreRelo],
    local: btf.Spec,
    target: Target | btf.Spec | None = None,
) -> list[CoreResult]:
    """Apply ``relos`` (indexes into ``insns``) in place; returns one :class:`CoreResult` per relocation.

    ``target`` is a :class:`Target`, a BTF spec (a ``--kernel-btf`` file) or None for the running kernel.
    A poisoned ld_imm64 becomes a :class:`PoisonedLdImm64`, which keeps its two slots.
    """
    tgt = target if isinstance(target, Target) else Target(target)
    out: list[CoreResult] = []
    # keyed by id(local) with the spec kept beside, so the id cannot be reused while the entry lives
    done = tgt.outcomes.setdefault(id(local), (local, {}))[1]
    for relo in relos:
        if not 0 <= relo.index < len(insns):
            raise CoreError(f"relocation for instruction {relo.index} outside the program")
        key = (int(relo.kind), relo.type_id, relo.access)
        outcome = done.get(key)
        if outcome is None:
            outcome = done[key] = _compute(relo, local, tgt)
        lout, tout = outcome
        assert lout.value is not None
        insn = insns[relo.index]
        if not lout.bitfield:  # clang sizes bitfield loads by record alignment, libbpf by type: no check
            _check_local(insn, relo, lout.value)
        if tout.value is None and relo.kind in _EXISTS_KINDS:
            tout = _Outcome(0)
        if tout.value is None:
            insns[relo.index] = _poison(insn)
            out.append(CoreResult(relo, lout.value, None, True, tout.reason))
            continue
        problem = _patch(insn, relo, lout, tout)
        if problem:
            insns[relo.index] = _poison(insn)
            out.append(CoreResult(relo, lout.value, tout.value, True, problem))
        else:
            out.append(CoreResult(relo, lout.value, tout.value))
    return out


def _check_local(insn: Instruction, relo: CoreRelo, value: int) -> None:
    """The compiled instruction must hold the local value; anything else means we misread the record."""
    cls = insn.cls
    if cls in (Class.ALU, Class.ALU64) and insn.source == asm.Source.K:
        have = insn.imm
    elif cls in (Class.LDX, Class.ST, Class.STX) and insn.mode == Mode.MEM:
        have = insn.off
    elif insn.is_ld_imm64 and insn.src == 0:
        have = insn.imm
    else:
        raise CoreError(f"relocation {relo.kind.name} on unsupported instruction {insn}")
    if have != value and not (insn.is_ld_imm64 and have == value & 0xFFFFFFFFFFFFFFFF):
        raise CoreError(
            f"instruction {relo.index} ({insn}) holds {have}, expected the local value {value} "
            f"of {relo.kind.name} {relo.access!r}"
        )


def _patch(insn: Instruction, relo: CoreRelo, lout: _Outcome, tout: _Outcome) -> str:
    """Patch ``insn`` with the target value; returns a reason when it cannot be (then it is poisoned)."""
    value = tout.value
    assert value is not None
    cls = insn.cls
    if cls in (Class.ALU, Class.ALU64):
        if not -(1 << 31) <= value < (1 << 31):
            return f"value {value} does not fit a 32-bit immediate"
        insn.imm = value
        return ""
    if cls in (Class.LDX, Class.ST, Class.STX):
        if relo.kind != CoreReloKind.FIELD_BYTE_OFFSET:
            return f"{relo.kind.name} cannot patch a memory access"
        if not -(1 << 15) <= value < (1 << 15):
            return f"offset {value} does not fit 16 bits"
        insn.off = value
        if cls != Class.ST and not lout.bitfield and tout.size != lout.size:
            if insn.size.nbytes != lout.size or not (lout.intlike and tout.intlike):
                return f"field size changed from {lout.size} to {tout.size} bytes"
            if tout.size not in (1, 2, 4, 8):
                return f"field of {tout.size} bytes cannot be loaded"
            insn.op = (insn.op & ~0x18) | Size.of_bytes(tout.size)
        return ""
    if insn.is_ld_imm64:
        insn.imm = value & 0xFFFFFFFFFFFFFFFF
        return ""
    return f"unsupported instruction {insn}"


def local_values(insns: Sequence[Instruction], relos: Sequence[CoreRelo], local: btf.Spec) -> list[int]:
    """The values clang computed for the local BTF (used by tests and to validate records)."""
    del insns
    return [_compute(r, local, None)[0].value or 0 for r in relos]
