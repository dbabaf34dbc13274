"""Netfilter table and chain of a drop, where kprobes or fentry reach the functions that walk the rule sets.

iptables and ip6tables walk a table in ``ipt_do_table`` / ``ip6t_do_table`` (modules ``ip_tables``,
``ip6_tables``), nftables a base chain in ``nft_do_chain`` (``nf_tables``); each returns the verdict. pwru's
probes on them (entry + return with the kprobe backends, fexit with fentry) remember, for an skb that is tracked
or passes the filters, the table (``struct xt_table``'s name) or the base chain and its table (``struct
nft_chain``'s and its ``struct nft_table``'s names) whose verdict was DROP; the skb's next drop event carries
them (``nf_table``, ``nf_chain`` of ``struct event``). nftables (6.x) frees a dropped skb itself inside
``nft_do_chain`` (and returns ``NF_STOLEN``): a drop event during a walk of its own skb takes that walk's
names. The chain is nftables' base chain (the one hooked, the
rule may sit in a chain it jumped to); iptables names no chain (its builtin chain is the hook, ``nf_hook``).
The rule handle (nftables tracing) is left out.

Arguments differ across kernels: 5.10's ``ipt_do_table(skb, state, table)``, 5.16 and later
``ipt_do_table(priv, skb, state)`` (``priv`` the table); ``nft_do_chain(pkt, priv)`` throughout. The variant is
read from the function's BTF. A module not loaded when pwru starts (no rule of that kind yet) is not probed.
With the kprobe backends the entry's arguments wait for the return in a map keyed by the task, so a softirq
walking another table on the same task between them (rare: the walks are short) can make one drop's attribution
wrong or missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pwru import discovery
from pwru.config import Config
from pwru.ebpf import btf
from pwru.ebpf.btf import Kind, Spec
from pwru.kernel import KernelContext
from pwru.probes import Attach, Probe

log = logging.getLogger("pwru")

#: (module, function, kind) of the table walks; kind as pwru.bpf.c's enum nf_walk_kind.
XT, NFT = 1, 2
WALKS = (("ip_tables", "ipt_do_table", XT), ("ip6_tables", "ip6t_do_table", XT), ("nf_tables", "nft_do_chain", NFT))
#: The member offsets the programs read, by constant: (kind, module, struct, member). The types live in the
#: modules' BTF, which the loader's CO-RE relocation (against vmlinux) does not see: user space reads them.
OFFSETS = {
    "cfg_off_xt_table_name": (XT, "x_tables", "xt_table", "name"),
    "cfg_off_nft_pkt_skb": (NFT, "nf_tables", "nft_pktinfo", "skb"),
    "cfg_off_nft_chain_table": (NFT, "nf_tables", "nft_chain", "table"),
    "cfg_off_nft_chain_name": (NFT, "nf_tables", "nft_chain", "name"),
    "cfg_off_nft_table_name": (NFT, "nf_tables", "nft_table", "name"),
}


def enabled(config: Config, backend: str) -> bool:
    """With a backend that reaches functions, unless --filter-trace-netfilter=false (no netfilter attribution)."""
    return backend != "tracepoint" and config.filter.trace_netfilter != "false"


def _find(kernel: KernelContext, module: str, name: str) -> tuple[Spec, int, str | None] | None:
    """(spec, FUNC id, module or None for vmlinux) of ``name``: built in, or in its module when loaded."""
    ids = kernel.spec.find(name, Kind.FUNC)
    if ids:
        return kernel.spec, ids[0], None
    if module not in btf.module_names():
        return None
    spec = kernel.module_spec(module)
    ids = spec.find(name, Kind.FUNC)
    return (spec, ids[0], module) if ids else None


def _positions(spec: Spec, fid: int, kind: int) -> tuple[int, int, int] | None:
    """(skb position, table/chain position, number of parameters), 1-based; for nftables the skb's position is
    the pktinfo's. None for a prototype pwru does not know."""
    params = spec.raw_proto_param_types(spec.raw_type_ref(fid))
    n = len(params)
    if kind == NFT:
        return (1, 2, n) if n == 2 else None
    skb = discovery.skb_param_position(spec, params)
    if skb == 1 and n == 3:
        return 1, 3, n  # 5.10: (skb, state, table)
    if skb == 2 and n == 3:
        return 2, 1, n  # 5.16+: (priv, skb, state)
    return None


def offsets(kernel: KernelContext) -> dict[str, int]:
    """The ``cfg_off_*`` constants found in the kernel's BTF or its loaded modules' (a kind whose structs are
    missing is not probed)."""
    found: dict[str, int] = {}
    for const, (_, module, struct, member) in OFFSETS.items():
        for spec in _specs(kernel, module):
            try:
                found[const] = spec.member_offset(spec.find_one(struct, Kind.STRUCT), member)
                break
            except btf.BTFError:
                continue
    return found


def _specs(kernel: KernelContext, module: str) -> list[Spec]:
    specs = [kernel.spec]
    if module in btf.module_names():
        specs.append(kernel.module_spec(module))
    return specs


def probes(config: Config, backend: str, kernel: KernelContext) -> list[Probe]:
    """The probes of the table walks this kernel has (none with the tracepoint backend)."""
    if not enabled(config, backend):
        return []
    have = offsets(kernel)
    kinds = {k for k in (XT, NFT) if all(c in have for c, o in OFFSETS.items() if o[0] == k)}
    out: list[Probe] = []
    for module, name, kind in WALKS:
        if kind not in kinds:
            log.debug("netfilter tables: %s's structs are not in the BTF", name)
            continue
        found = _find(kernel, module, name)
        if found is None:
            log.debug("netfilter tables: no %s (module %s not loaded)", name, module)
            continue
        spec, fid, mod = found
        pos = _positions(spec, fid, kind)
        if pos is None:
            log.debug("netfilter tables: %s has a prototype pwru does not know", name)
            continue
        skb_pos, priv_pos, nargs = pos
        if backend == "fentry":
            constants = {"cfg_nf_skb_pos": skb_pos, "cfg_nf_priv_pos": priv_pos, "cfg_nf_kind": kind,
                         "cfg_ret_pos": nargs + 1}  # fmt: skip
            out.append(Probe("func", name, "fentry_nf_walk", Attach.FENTRY, mod, fid, constants=constants,
                             shows=False))  # fmt: skip
            out.append(Probe("func", name, "fexit_nf_verdict", Attach.FEXIT, mod, fid, constants=constants,
                             shows=False))  # fmt: skip
            continue
        entry = "kprobe_nft_chain" if kind == NFT else (
            "kprobe_xt_table_skb_first" if skb_pos == 1 else "kprobe_xt_table_priv_first")  # fmt: skip
        out.append(Probe("func", name, entry, Attach.KPROBE, mod, shows=False))
        out.append(Probe("func", name, "kretprobe_nf_verdict", Attach.KRETPROBE, mod, shows=False))
    return out


def constants(plan: Sequence[Probe], has_reasons: bool = True, kernel: KernelContext | None = None) -> dict[str, int]:
    """``cfg_nf_rules`` when the walks are probed: 1, drop events (those with a reason) take the table and chain;
    2 on a kernel without drop reasons (before 5.17), where the drop is a plain ``kfree_skb``: the skb's next
    event after the verdict takes them (nf_hook_slow frees a dropped skb right after the walk)."""
    programs = {"fexit_nf_verdict", "kretprobe_nf_verdict"}
    out = dict.fromkeys(OFFSETS, 0)
    if not any(p.program in programs for p in plan):
        return {"cfg_nf_rules": 0, **out}
    if kernel is not None:
        out.update(offsets(kernel))
    return {"cfg_nf_rules": 1 if has_reasons else 2, **out}
