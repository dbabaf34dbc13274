"""Backends: how pwru's skb probes reach every skb-carrying function or tracepoint.

=============  =========================================================  ==========================================
backend        attaches                                                   needs from the kernel
=============  =========================================================  ==========================================
kprobe-multi   one link per skb argument position, by symbol names        CONFIG_FPROBE (>= 5.18), kprobes allowed
kprobe         one perf kprobe per function, attached in parallel          CONFIG_KPROBES, kprobes allowed
fentry         one program load + link per function                       BTF trampolines (>= 5.5), not locked down
tracepoint     one tp_btf program per tracepoint carrying an skb          BTF (>= 5.5); works under lockdown
=============  =========================================================  ==========================================

A backend is a choice of :class:`~pwru.probes.Attach` method for the skb probes: :func:`skb_probes` turns
discovery's targets (narrowed by ``--filter-func``) into :class:`~pwru.probes.Probe` declarations that
:func:`pwru.probes.execute` attaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pwru import discovery
from pwru.discovery import Target
from pwru.ebpf import features
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.probes import Attach, Probe

#: In the order ``--backend auto`` tries them (see the README for the measurements behind it).
NAMES = ("kprobe-multi", "kprobe", "fentry", "tracepoint")
#: Highest skb argument position the kprobe-type programs read (registers on every architecture).
MAX_KPROBE_POS = 5
#: How each backend attaches, and the prefix of its programs in pwru's object.
METHODS = {"kprobe-multi": Attach.KPROBE_MULTI, "kprobe": Attach.KPROBE, "fentry": Attach.FENTRY,
           "tracepoint": Attach.TP_BTF}  # fmt: skip
PROGRAM_PREFIX = {Attach.KPROBE_MULTI: "kprobe", Attach.KPROBE: "kprobe", Attach.FENTRY: "fentry"}
TP_PROGRAM = "tp_skb"

#: The kernel function and tracepoint the backend probes try (every kernel with networking has both).
PROBE_FUNCTION = "ip_rcv"
PROBE_TRACEPOINT = "kfree_skb"
#: The feature probe that tells whether each backend works on this kernel.
FEATURE_PROBES: dict[str, Callable[[], features.Feature]] = {
    "kprobe-multi": lambda: features.kprobe_multi(PROBE_FUNCTION),
    "kprobe": lambda: features.kprobe(PROBE_FUNCTION),
    "fentry": lambda: features.fentry(PROBE_FUNCTION),
    "tracepoint": lambda: features.tp_btf(PROBE_TRACEPOINT),
}


def feature_for(backend: str, kernel: KernelContext) -> features.Feature:
    return kernel.feature(backend, FEATURE_PROBES[backend])


def choose(requested: str, kernel: KernelContext) -> str:
    """The backend to use: ``requested`` if the kernel allows it, or the first allowed one for ``auto``."""
    if requested != "auto":
        f = feature_for(requested, kernel)
        if not f.available:
            allowed = [b for b in NAMES if b != requested and feature_for(b, kernel).available]
            hint = f"; use --backend {allowed[0]}" if allowed else ""
            raise UserError(f"--backend {requested}: not available on this kernel: {f.reason}{hint}")
        return requested
    reasons = []
    for name in NAMES:
        f = feature_for(name, kernel)
        if f.available:
            return name
        reasons.append(f"{name}: {f.reason}")
    raise UserError("no backend works on this kernel: " + "; ".join(reasons), exit_code=1)


def skb_targets(backend: str, kernel: KernelContext, allowed: Callable[[str], bool]) -> list[Target]:
    """Discovery for one backend, narrowed by ``allowed`` (--filter-func, tried on the display name and the
    bare name) and, for functions, to what can be probed."""
    modules = kernel.modules()
    if backend == "tracepoint":
        found = discovery.skb_tracepoints(kernel.spec, modules)
    else:
        found = discovery.skb_functions(kernel.spec, MAX_KPROBE_POS, modules)
        ok = discovery.probeable({t.name for t in found}, filter_functions=kernel.filter_functions)
        found = [t for t in found if t.name in ok]
    seen: set[tuple[str, str | None]] = set()
    out = []
    for t in found:
        key = (t.name, t.module)
        if key in seen or (not allowed(display_name(t)) and not allowed(t.name)):
            continue
        seen.add(key)
        out.append(t)
    return out


def display_name(t: Target) -> str:
    """How a target is named to users: ``ip_rcv``, ``nf_hook_slow``, ``veth_xmit[veth]``, ``tp:kfree_skb``."""
    base = f"tp:{t.name}" if t.kind == "tracepoint" else t.name
    return f"{base}[{t.module}]" if t.module else base


def program_variant(prefix: str, t: Target, available: set[str]) -> str:
    """The program for a target's skb (and drop reason) position. The object has reason variants only for the
    positions drop functions use (``kfree_skb_reason``: 1/2, ``sk_skb_reason_drop``: 2/3); elsewhere the skb
    variant traces the function without its reason."""
    if t.reason_pos is not None:
        name = f"{prefix}_skb_{t.skb_pos}_reason_{t.reason_pos}"
        if name in available:
            return name
    return f"{prefix}_skb_{t.skb_pos}"


def skb_probes(backend: str, targets: Sequence[Target], programs: set[str], kernel: KernelContext) -> list[Probe]:
    """The skb probes of a backend: one per target, with the program variant for its argument positions.

    Tracepoints load ``tp_skb`` once each, told by per-load constants where the skb, drop reason and location
    sit. fentry programs before 5.15 cannot ask for their function's address (bpf_get_func_ip), so each load
    is told it as a constant instead, from kallsyms.
    """
    method = METHODS[backend]
    if method is Attach.TP_BTF:
        return [
            Probe(
                "tracepoint", t.name, TP_PROGRAM, method, t.module, t.btf_id, t.skb_pos, t.reason_pos,
                t.location_pos,
                constants={"cfg_tp_skb_pos": t.skb_pos, "cfg_tp_reason_pos": t.reason_pos or 0,
                           "cfg_tp_location_pos": t.location_pos or 0},
            )
            for t in targets
        ]
    prefix = PROGRAM_PREFIX[method]
    ksyms = None
    if method is Attach.FENTRY and not kernel.feature("get_func_ip", features.get_func_ip).available:
        ksyms = kernel.kallsyms
    probes = []
    for t in targets:
        constants = {} if ksyms is None else {"cfg_probe_id": ksyms.address(t.name, t.module) or 0}
        program = program_variant(prefix, t, programs)
        probes.append(Probe("func", t.name, program, method, t.module, t.btf_id, t.skb_pos, t.reason_pos, None,
                            constants=constants))  # fmt: skip
    return probes
