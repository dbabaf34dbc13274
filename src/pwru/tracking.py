"""skb tracking: the probes that keep the kernel's tracked set true, and the non-skb functions.

With ``--filter-track-skb`` an skb that passes the filters joins a set kept in the kernel (``tracked`` in
pwru.bpf.c) and every later event of it is shown, whatever the filters say of it then (after NAT, encapsulation,
a tc program's rewrite). The set is only right if the kernel side learns where skbs end and where copies begin:

* **ends**: the ``kfree_skb`` and ``consume_skb`` tracepoints (every kernel, every backend: they fire on the last
  reference of a dropped or consumed skb), and where kprobes or fentry are allowed the functions every freed skb
  passes: ``kfree_skbmem`` (the slab free of all ``__kfree_skb`` paths), ``napi_skb_cache_put`` (skbs kept for
  reuse by NAPI, 5.12+), ``kfree_skb_add_bulk`` (list frees, 6.3+), ``_kfree_skb_defer`` (5.10's NAPI frees);
  those the kernel has (a static function the compiler inlined has no BTF and no probe). A locked-down kernel
  has only the tracepoints, and frees some skbs without either (the NAPI cache: UDP datagrams read by a socket
  on 6.x, TCP skbs acknowledged): such an skb stays in the set, and a later skb at its address would be shown
  as tracked. The exit report counts them, so the output is never silently wrong about it.
* **copies**: ``skb_clone``, ``skb_copy``, ``__pskb_copy_fclone`` (``pskb_copy``), ``skb_copy_expand``: the skb
  they return joins the set when the one they copied is in it (fexit with fentry, kprobe + kretprobe with the
  kprobe backends); ``veth_convert_skb_to_xdp_buff`` may replace the skb veth hands to XDP by a new one, which
  inherits the old one's place.

``--filter-track-skb-by-stackid`` (and ``--filter-non-skb-funcs``, which implies it) ties the skb to its call
chain, so functions without an skb argument show the skb their call chain works on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from pwru import discovery
from pwru.config import Config
from pwru.ebpf import btf, features
from pwru.ebpf.btf import Kind, Spec
from pwru.ebpf.maps import Map
from pwru.errors import UserError
from pwru.kernel import KernelContext
from pwru.probes import Attach, Attachment, Probe

log = logging.getLogger("pwru")

#: Tracepoints that fire when an skb's last reference goes (dropped, consumed).
FREE_TRACEPOINTS = ("kfree_skb", "consume_skb")
#: Functions every freed skb passes (skb at argument 1), where kprobes or fentry can reach them.
FREE_FUNCTIONS = ("kfree_skbmem", "napi_skb_cache_put", "kfree_skb_add_bulk", "_kfree_skb_defer")
#: Functions returning a copy of their first argument.
COPY_FUNCTIONS = ("skb_clone", "skb_copy", "__pskb_copy_fclone", "skb_copy_expand")
#: Functions that may replace the skb behind their ``struct sk_buff **`` third argument: (module, name).
REPLACE_FUNCTIONS = (("veth", "veth_convert_skb_to_xdp_buff"),)
#: The kernel maps sized by --filter-track-skb-max.
SIZED_MAPS = ("tracked", "chain_skb", "skb_chain")


def enabled(config: Config) -> bool:
    t = config.tracking
    return t.skb or t.by_stackid or bool(t.non_skb_funcs)


def _func(spec: Spec, name: str) -> tuple[int, int] | None:
    """(FUNC id, number of parameters) of ``name`` in ``spec``, or None."""
    ids = spec.find(name, Kind.FUNC)
    if not ids:
        return None
    return ids[0], len(spec.raw_proto_param_types(spec.raw_type_ref(ids[0])))


def _module_func(kernel: KernelContext, module: str | None, name: str) -> tuple[int, int] | None:
    if module is None:
        return _func(kernel.spec, name)
    if module not in btf.module_names():
        return None
    return _func(kernel.module_spec(module), name)


def check_non_skb_funcs(config: Config, backend: str, kernel: KernelContext) -> None:
    """--filter-non-skb-funcs: every name a kernel function, and a backend that can reach functions."""
    names = config.tracking.non_skb_funcs
    if not names:
        return
    unknown = [n for n in names if _func(kernel.spec, n) is None]
    if unknown:
        raise UserError(f"--filter-non-skb-funcs: no kernel function {', '.join(repr(n) for n in unknown)}")
    if backend == "tracepoint":
        raise UserError(
            "--filter-non-skb-funcs needs kprobes or fentry, and this run uses the tracepoint backend "
            "(see --list-backends for what this kernel allows)",
            exit_code=1,
        )


def probes(
    config: Config, backend: str, kernel: KernelContext, plan: Sequence[Probe]
) -> tuple[list[Probe], list[Probe]]:
    """The tracking probes of a run: (skb probes of ``plan`` with their free tracepoints marked, new probes).

    A free tracepoint already traced for events gets ``cfg_tp_frees`` on its own load (so its event is shown
    before the skb leaves the set); the others get ``tp_skb_free``, which shows nothing.
    """
    if not enabled(config):
        return list(plan), []
    marked = [
        dataclasses.replace(p, constants={**p.constants, "cfg_tp_frees": 1})
        if p.kind == "tracepoint" and p.module is None and p.name in FREE_TRACEPOINTS
        else p
        for p in plan
    ]
    traced = {p.name for p in marked if p.kind == "tracepoint" and p.module is None}
    new: list[Probe] = []
    for t in discovery.skb_tracepoints(kernel.spec):
        if t.name in FREE_TRACEPOINTS and t.name not in traced:
            new.append(Probe("tracepoint", t.name, "tp_skb_free", Attach.TP_BTF, None, t.btf_id, t.skb_pos,
                             constants={"cfg_tp_skb_pos": t.skb_pos}, shows=False))  # fmt: skip
    if backend != "tracepoint":
        new += _function_probes(backend, kernel)
        new += _non_skb_probes(config, backend, kernel)
    return marked, new


def _function_probes(backend: str, kernel: KernelContext) -> list[Probe]:
    fentry = backend == "fentry"
    out: list[Probe] = []
    for name in FREE_FUNCTIONS:
        found = _func(kernel.spec, name)
        if found is None:
            continue
        if fentry:
            out.append(Probe("func", name, "fentry_skb_free", Attach.FENTRY, None, found[0], 1, shows=False))
        else:
            out.append(Probe("func", name, "kprobe_skb_free", Attach.KPROBE, None, None, 1, shows=False))
    for name in COPY_FUNCTIONS:
        found = _func(kernel.spec, name)
        if found is None:
            continue
        fid, nargs = found
        if fentry:
            out.append(Probe("func", name, "fexit_skb_copy", Attach.FEXIT, None, fid, 1,
                             constants={"cfg_ret_pos": nargs + 1}, shows=False))  # fmt: skip
        else:
            out.append(Probe("func", name, "kprobe_skb_copy_entry", Attach.KPROBE, None, None, 1, shows=False))
            out.append(Probe("func", name, "kretprobe_skb_copy", Attach.KRETPROBE, None, None, 1, shows=False))
    for module, name in REPLACE_FUNCTIONS:
        found = _module_func(kernel, module, name)
        if found is None:
            continue
        if fentry:
            out.append(Probe("func", name, "fentry_skb_replace_entry", Attach.FENTRY, module, found[0], shows=False))
            out.append(Probe("func", name, "fexit_skb_replace", Attach.FEXIT, module, found[0], shows=False))
        else:
            out.append(Probe("func", name, "kprobe_skb_replace_entry", Attach.KPROBE, module, shows=False))
            out.append(Probe("func", name, "kretprobe_skb_replace", Attach.KRETPROBE, module, shows=False))
    return out


def _non_skb_probes(config: Config, backend: str, kernel: KernelContext) -> list[Probe]:
    # fentry before 5.15 cannot ask for its function's address (bpf_get_func_ip): each load is told it.
    ksyms = None
    if backend == "fentry" and not kernel.feature("get_func_ip", features.get_func_ip).available:
        ksyms = kernel.kallsyms
    out: list[Probe] = []
    for name in config.tracking.non_skb_funcs:
        found = _func(kernel.spec, name)
        assert found is not None  # checked by check_non_skb_funcs
        if backend == "fentry":
            constants = {} if ksyms is None else {"cfg_probe_id": ksyms.address(name) or 0}
            out.append(Probe("func", name, "fentry_non_skb", Attach.FENTRY, None, found[0], constants=constants))
        else:
            method = Attach.KPROBE_MULTI if backend == "kprobe-multi" else Attach.KPROBE
            out.append(Probe("func", name, "kprobe_non_skb", method))
    return out


def report_unfreed(tracked: Map, att: Attachment) -> None:
    """At exit (probes detached): warn about tracked skbs never seen to end, and what that means."""
    left = sum(1 for _ in tracked)
    if not left:
        return
    hooked = sorted({p.name for p in att.attached if not p.shows and p.kind == "func" and p.name in FREE_FUNCTIONS})
    where = (
        f"skb ends were seen at the tracepoints and {', '.join(hooked)}"
        if hooked
        else "this kernel allows no probe on the functions that free skbs, only the kfree_skb and consume_skb "
        "tracepoints, and frees some skbs without them (the NAPI skb cache)"
    )
    log.warning(
        "%d tracked skb%s never seen freed (still alive, or freed unseen: %s); a later skb at such an address "
        "may have been shown as tracked",
        left,
        "" if left == 1 else "s",
        where,
    )
