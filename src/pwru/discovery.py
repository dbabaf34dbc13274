"""What can be traced: kernel functions and tracepoints that carry a ``struct sk_buff *``, and drop reasons.

Everything comes from BTF: a FUNC whose FUNC_PROTO has a parameter resolving (through typedefs and
qualifiers) to a pointer to ``struct sk_buff`` is a function target; a ``typedef ... btf_trace_<name>``
(pointer to a prototype whose first parameter is the tracepoint's ``void *`` context) with such a parameter
is a tracepoint target. Whether a function target can actually be probed is a separate question answered by
:func:`probeable`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pwru.ebpf import btf
from pwru.ebpf.btf import Kind, Spec
from pwru.ebpf.kallsyms import Kallsyms

TRACEPOINT_PREFIX = "btf_trace_"
SKB_DROP_REASON_SUBSYS_SHIFT = 16

#: Where the ftrace list of functions that can be traced lives (tracefs, or tracefs under debugfs).
FILTER_FUNCTIONS_PATHS = (
    Path("/sys/kernel/tracing/available_filter_functions"),
    Path("/sys/kernel/debug/tracing/available_filter_functions"),
)
#: The kernel's list of functions kprobes refuse (``NOKPROBE_SYMBOL`` and blacklisted areas).
KPROBE_BLACKLIST_PATH = Path("/sys/kernel/debug/kprobes/blacklist")

#: Text areas the kernel never lets kprobes into (``kernel/kprobes.c`` blacklists them as areas, x86 adds
#: entry code), bounded by ``__<area>_text_start`` / ``__<area>_text_end`` symbols in kallsyms. Init text is
#: freed after boot. ``cpuidle`` text lies inside ``noinstr``; it is listed for kernels where it does not.
DENIED_TEXT_AREAS = ("entry", "irqentry", "noinstr", "cpuidle", "kprobes", "init")

_MARKER = re.compile(r"^(_stext|_etext|_sinittext|_einittext|__\w+_text_(start|end))$")

#: A module to discover in: its name and its split BTF, parsed by the caller (once per run: pwru.kernel).
ModuleArg = tuple[str, Spec]


@dataclass(frozen=True, slots=True)
class Target:
    """A traceable kernel function or tracepoint.

    ``btf_id`` is the FUNC id (functions) or the ``btf_trace_<name>`` TYPEDEF id (tracepoints), in vmlinux's
    BTF or, when ``module`` is set, in that module's split BTF. Positions are 1-based argument numbers; for
    tracepoints they do not count the leading ``void *`` of the BTF prototype (which is also how ``tp_btf``
    programs see their arguments).
    """

    name: str
    module: str | None
    btf_id: int
    skb_pos: int
    reason_pos: int | None = None
    location_pos: int | None = None
    kind: Literal["func", "tracepoint"] = "func"


class _Classifier:
    """Memoised "is this type id an skb pointer / a drop reason / void *" answers for one spec."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.skb_structs = set(spec.find("sk_buff", Kind.STRUCT)) | set(spec.find("sk_buff", Kind.FWD))
        self.reason_enums = set(spec.find("skb_drop_reason", Kind.ENUM))
        self._skb: dict[int, bool] = {}
        self._reason: dict[int, bool] = {}

    def is_skb_ptr(self, tid: int) -> bool:
        hit = self._skb.get(tid)
        if hit is None:
            spec = self.spec
            r = spec.resolve(tid)
            hit = spec.kind_of(r) == Kind.PTR and spec.resolve(spec.raw_type_ref(r)) in self.skb_structs
            self._skb[tid] = hit
        return hit

    def is_reason(self, tid: int) -> bool:
        hit = self._reason.get(tid)
        if hit is None:
            hit = self.spec.resolve(tid) in self.reason_enums
            self._reason[tid] = hit
        return hit

    def is_void_ptr(self, tid: int) -> bool:
        spec = self.spec
        r = spec.resolve(tid)
        return spec.kind_of(r) == Kind.PTR and spec.resolve(spec.raw_type_ref(r)) == 0

    def positions(self, params: tuple[int, ...], max_pos: int) -> tuple[int, int | None] | None:
        """1-based (skb position, reason position) or None when no skb pointer sits at <= max_pos."""
        skb_pos = 0
        reason_pos = None
        for i, tid in enumerate(params, 1):
            if tid == 0:  # varargs (last) or malformed
                continue
            if not skb_pos and i <= max_pos and self.is_skb_ptr(tid):
                skb_pos = i
            elif reason_pos is None and self.is_reason(tid):
                reason_pos = i
        return (skb_pos, reason_pos) if skb_pos else None


def skb_param_position(spec: Spec, params: tuple[int, ...]) -> int:
    """The 1-based position of the first ``struct sk_buff *`` among a prototype's ``params`` (0: none)."""
    c = _Classifier(spec)
    return next((i for i, tid in enumerate(params, 1) if tid and c.is_skb_ptr(tid)), 0)


def _wrapped(wrappers: list[tuple[int, int]], ids: set[int]) -> set[int]:
    """``ids`` plus every qualifier/typedef that (transitively) wraps one of them."""
    found = set(ids)
    while True:
        new = {tid for tid, ref in wrappers if ref in found and tid not in found}
        if not new:
            return found
        found |= new


def _skb_pointer_ids(spec: Spec, structs: set[int]) -> set[int]:
    """Ids of every type resolving to a pointer to one of ``structs`` (pointers, then qualifier wrappers)."""
    wrappers = [pair for k in _QUALIFIER_KINDS for pair in spec.refs_of_kind(k)]
    if spec.base is not None:  # a module's qualifiers may wrap the base's pointers and the other way round
        wrappers += [pair for k in _QUALIFIER_KINDS for pair in spec.base.refs_of_kind(k)]
    pointee = _wrapped(wrappers, structs)
    ptrs = {tid for tid, ref in spec.refs_of_kind(Kind.PTR) if ref in pointee}
    if spec.base is not None:
        ptrs |= {tid for tid, ref in spec.base.refs_of_kind(Kind.PTR) if ref in pointee}
    return _wrapped(wrappers, ptrs)


_QUALIFIER_KINDS = (Kind.TYPEDEF, Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPE_TAG)


def _functions_of(spec: Spec, module: str | None, max_pos: int) -> list[Target]:
    cls = _Classifier(spec)
    if not cls.skb_structs:
        return []
    # Phase 1 (cheap, over every prototype): does an skb pointer appear among the first max_pos params?
    skb_ptrs = _skb_pointer_ids(spec, cls.skb_structs)
    hits: dict[int, tuple[int, int | None] | None] = {}
    for proto, params in spec.proto_param_table(max_pos):
        if not skb_ptrs.isdisjoint(params):
            hits[proto] = None
    # Phase 2 (the few hits): exact positions.
    for proto in hits:
        hits[proto] = cls.positions(spec.raw_proto_param_types(proto), max_pos)
    targets = []
    for fid, proto in spec.refs_of_kind(Kind.FUNC):
        pos = hits.get(proto)
        if pos is not None:
            targets.append(Target(spec.name_of(fid), module, fid, pos[0], pos[1], None, "func"))
    return targets


def skb_functions(spec: Spec, max_pos: int = 5, modules: Iterable[ModuleArg] = ()) -> list[Target]:
    """Every FUNC taking ``struct sk_buff *`` at argument position ``<= max_pos``, vmlinux's then modules'.

    ``spec`` is vmlinux's BTF; ``modules`` are ``(name, split BTF)`` pairs.
    """
    targets = _functions_of(spec, None, max_pos)
    for name, mspec in modules:
        targets += _functions_of(mspec, name, max_pos)
    return targets


def _tracepoints_of(spec: Spec, module: str | None) -> list[Target]:
    cls = _Classifier(spec)
    if not cls.skb_structs:
        return []
    targets = []
    for tid in spec.ids_of_kind(Kind.TYPEDEF):
        name = spec.name_of(tid)
        if not name.startswith(TRACEPOINT_PREFIX):
            continue
        ptr = spec.raw_type_ref(tid)
        if spec.kind_of(ptr) != Kind.PTR:
            continue
        proto = spec.raw_type_ref(ptr)
        if spec.kind_of(proto) != Kind.FUNC_PROTO:
            continue
        params = spec.raw_proto_param_types(proto)[1:]  # drop the tracepoint's void *__data
        pos = cls.positions(params, len(params))
        if pos is None:
            continue
        skb_pos, reason_pos = pos
        location_pos = None
        if reason_pos is not None and skb_pos < len(params) and cls.is_void_ptr(params[skb_pos]):
            location_pos = skb_pos + 1
        tp_name = name[len(TRACEPOINT_PREFIX) :]
        targets.append(Target(tp_name, module, tid, skb_pos, reason_pos, location_pos, "tracepoint"))
    return targets


def skb_tracepoints(spec: Spec, modules: Iterable[ModuleArg] = ()) -> list[Target]:
    """Tracepoints whose ``btf_trace_<name>`` prototype carries a ``struct sk_buff *``.

    ``location_pos`` is set for prototypes with a drop reason whose parameter right after the skb is a
    ``void *`` (the caller's address, as in ``kfree_skb``).
    """
    targets = _tracepoints_of(spec, None)
    for name, mspec in modules:
        targets += _tracepoints_of(mspec, name)
    return targets


# ---------------------------------------------------------------------------------------------------------
# Probeable functions


def read_filter_functions() -> set[str] | None:
    """ftrace's ``available_filter_functions`` (names only), or None when it cannot be read."""
    for path in FILTER_FUNCTIONS_PATHS:
        try:
            text = path.read_text()
        except OSError:
            continue
        return {line.split()[0] for line in text.splitlines() if line.strip()}
    return None


def _read_kprobe_blacklist(path: Path = KPROBE_BLACKLIST_PATH) -> set[str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    # "0xffffffff81000000-0xffffffff81000010\tname [module]"
    return {parts[1] for parts in (line.split() for line in text.splitlines()) if len(parts) >= 2}


def kallsyms_probeable(
    ksyms: Kallsyms, blacklist: set[str] | None = None, names: Iterable[str] | None = None
) -> set[str]:
    """Text symbols a kprobe could take, judged from kallsyms alone.

    Kept: ``t``/``T`` symbols. Dropped: those inside the :data:`DENIED_TEXT_AREAS` (found by their
    ``__<area>_text_start``/``_end`` marker symbols; ``init`` uses ``_sinittext``/``_einittext``), the marker
    symbols themselves, and the names in ``blacklist`` (the kernel's kprobe blacklist when readable); with
    ``names`` only those are considered. What
    cannot be known from here: ``NOKPROBE_SYMBOL`` functions outside those areas when the blacklist file is
    not readable; a kprobe attach then fails for that one function and the backend reports it.
    """
    areas: list[tuple[int, int]] = []
    for area in DENIED_TEXT_AREAS:
        if area == "init":
            start, end = ksyms.address("_sinittext"), ksyms.address("_einittext")
        else:
            start, end = ksyms.address(f"__{area}_text_start"), ksyms.address(f"__{area}_text_end")
        if start is not None and end is not None and start < end:
            areas.append((start, end))
    text = ksyms.text_names(exclude=areas)
    if names is not None:
        text &= set(names)
    text -= blacklist or set()
    return {n for n in text if not _MARKER.match(n)}


def probeable(
    names: Iterable[str],
    ksyms: Kallsyms | None = None,
    filter_functions: Callable[[], set[str] | None] = read_filter_functions,
) -> set[str]:
    """The subset of function ``names`` that can really be probed.

    Source of truth, in order: ftrace's ``available_filter_functions`` (what fentry and kprobe-multi can
    attach to) when readable (``filter_functions``: :func:`read_filter_functions`, or a run's read of it begun
    earlier, ``KernelContext.filter_functions``); otherwise (e.g. EPERM under lockdown, or tracefs not mounted)
    kallsyms text symbols filtered by :func:`kallsyms_probeable`, using ``/sys/kernel/debug/kprobes/blacklist``
    if it can be read. ``ksyms`` defaults to a fresh read of ``/proc/kallsyms``.
    """
    wanted = set(names)
    available = filter_functions()
    if available is not None:
        return wanted & available
    ksyms = ksyms if ksyms is not None else Kallsyms.load()
    return kallsyms_probeable(ksyms, _read_kprobe_blacklist(), wanted)


# ---------------------------------------------------------------------------------------------------------
# Drop reasons


#: The kernel's helper ids (``BPF_FUNC_<name>``): the helper's kernel function is ``bpf_<name>``.
HELPER_ENUM, HELPER_PREFIX = "bpf_func_id", "BPF_FUNC_"
#: The name of an skb parameter as the kernel's ``BPF_CALL_n(bpf_x, struct sk_buff *, skb, ...)`` keeps it: the
#: function the macro makes takes ``u64`` arguments (so no ``struct sk_buff *`` in its BTF) under those names.
HELPER_SKB_PARAM = "skb"


def skb_helpers(spec: Spec) -> list[Target]:
    """The kernel functions behind the BPF helpers that take an skb: for each ``BPF_FUNC_<name>`` of ``enum
    bpf_func_id``, the FUNC ``bpf_<name>`` whose first parameter is named ``skb`` (``bpf_skb_store_bytes``,
    ``bpf_l3_csum_replace``, ``bpf_skb_vlan_push``, ...). The skb is that first argument (``skb_pos`` 1)."""
    helpers: set[str] = set()
    for tid in spec.find(HELPER_ENUM):
        if isinstance(spec.type(tid), btf.Enum | btf.Enum64):
            helpers |= {v.name.removeprefix(HELPER_PREFIX) for v in _enum_values(spec, tid)}
    targets = []
    for fid, proto in spec.refs_of_kind(Kind.FUNC):
        name = spec.name_of(fid)
        if not name.startswith("bpf_") or name[4:] not in helpers:
            continue
        t = spec.type(proto)
        if isinstance(t, btf.FuncProto) and t.params and t.params[0].name == HELPER_SKB_PARAM:
            targets.append(Target(name, None, fid, 1))
    return targets


def _enum_values(spec: Spec, tid: int) -> tuple[btf.EnumValue, ...]:
    t = spec.type(tid)
    assert isinstance(t, btf.Enum | btf.Enum64)
    return t.values


def drop_reasons(spec: Spec, modules: Iterable[ModuleArg] = ()) -> dict[int, str]:
    """``{value: name}`` of ``enum skb_drop_reason`` plus subsystem-encoded reasons.

    A subsystem reason has ``value >> 16`` equal to a non-core member of ``enum skb_drop_reason_subsys``;
    its names come from the subsystem's own ``*drop_reason*`` enum (e.g. mac80211's ``mac80211_drop_reason``,
    openvswitch's ``ovs_drop_reason``) in vmlinux's or a module's BTF. Names are as the kernel spells them;
    the ``..._MAX``/``__...`` sentinels are left out.
    """
    reasons: dict[int, str] = {}
    for tid in spec.find("skb_drop_reason", Kind.ENUM):
        for v in _enum_values(spec, tid):
            if v.name != "SKB_DROP_REASON_MAX":
                reasons.setdefault(v.value, v.name)
    subsystems = set()
    for tid in spec.find("skb_drop_reason_subsys", Kind.ENUM):
        for v in _enum_values(spec, tid):
            if v.value and not v.name.endswith("_NUM"):
                subsystems.add(v.value)
    if not subsystems:
        return reasons
    specs: list[Spec] = [spec] + [m for _, m in modules]
    for s in specs:
        for kind in (Kind.ENUM, Kind.ENUM64):
            for tid in s.ids_of_kind(kind):
                name = s.name_of(tid)
                if "drop_reason" not in name or name.startswith("skb_drop_reason"):
                    continue
                for v in _enum_values(s, tid):
                    if v.value >> SKB_DROP_REASON_SUBSYS_SHIFT in subsystems and not v.name.startswith("__"):
                        reasons.setdefault(v.value, v.name)
    return reasons
