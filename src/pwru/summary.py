"""--summary: how the selected skbs ended, counted in the kernel.

The free tracepoints are where an skb's last reference goes: ``kfree_skb`` (dropped, with the drop reason and
location) and ``consume_skb`` (consumed: freed after use: read from a socket, sent, merged). Every ``tp_skb``
load on one of them is told its verdict (``cfg_tp_verdict``, a member of ``enum pwru_verdict``) so the program
knows it ends the skb: it forgets the skb's netfilter attribution there, and with ``--summary`` counts the end
in the per-CPU hash ``summary`` keyed by ``struct summary_key`` (pwru.h).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from pwru.probes import Probe

#: The free tracepoints and the verdict (``enum pwru_verdict`` member, lower-cased) each one gives.
END_TRACEPOINTS: dict[str, str] = {"kfree_skb": "dropped", "consume_skb": "consumed"}
#: The program that traces skb tracepoints.
TP_PROGRAM = "tp_skb"


def mark_ends(probes: Sequence[Probe], verdicts: Mapping[str, int]) -> list[Probe]:
    """``probes`` with ``cfg_tp_verdict`` set on the ``tp_skb`` loads of the free tracepoints (``verdicts``: the
    object's ``enum pwru_verdict``, lower-cased names without the prefix -> values)."""
    out = []
    for p in probes:
        verdict = END_TRACEPOINTS.get(p.name) if p.kind == "tracepoint" and p.module is None else None
        if verdict is not None and p.program == TP_PROGRAM:
            p = dataclasses.replace(p, constants={**p.constants, "cfg_tp_verdict": verdicts[verdict]})
        out.append(p)
    return out
