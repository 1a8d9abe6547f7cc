"""What an HTB tree reports about its classes: modes, counters, token state, leaf details.

Read-only views for statistics and tests, kept apart from the per-packet code in ``htb.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imqd.qdisc.counters import C_BORROWS, C_BYTES, C_DROPS, C_LENDS, C_PACKETS
from imqd.qdisc.htb_class import CAN_SEND, CANT_SEND, MAY_BORROW, MBUFFER, ClassState

if TYPE_CHECKING:
    from imqd.qdisc.htb import HTB


def mode_name(vals: Any, c: ClassState, now: float) -> str:
    """``c``'s own mode at ``now`` from its token slot: ``can_send``, ``may_borrow`` or ``cant_send``."""
    b = c.base
    tc = vals[b + 2]
    if tc != tc:
        return CAN_SEND
    if now < tc - vals[b + 1]:
        return CANT_SEND
    if now >= tc - vals[b]:
        return CAN_SEND
    return MAY_BORROW


def class_stats(htb: HTB, now: float) -> dict[str, dict[str, Any]]:
    """Per class counters and token state (tokens in seconds and bytes, projected to ``now``)."""
    vals = htb._vals
    cv = htb._cvals
    order = list(htb._classes.values())
    backlog: dict[str, list[int]] = {cl.name: [0, 0] for cl in order}
    for cl in order:
        if cl.q is not None:
            n, nb = cl.q.backlog_packets, cl.q.backlog_bytes
            for c in cl.chain:
                backlog[c.name][0] += n
                backlog[c.name][1] += nb
    out: dict[str, dict[str, Any]] = {}
    with htb.tokens.locked():
        for cl in order:
            b = cl.base
            cb = cl.cbase
            tc = vals[b + 2]
            diff = min(max(now - tc, 0.0), MBUFFER) if tc == tc else 0.0
            toks = min(vals[b] + diff, cl.buffer) if tc == tc else cl.buffer
            ctoks = min(vals[b + 1] + diff, cl.cbuffer) if tc == tc else cl.cbuffer
            out[cl.name] = {
                "parent": cl.parent_name,
                "level": cl.level,
                "prio": cl.prio,
                "rate": cl.params.rate,
                "ceil": cl.params.ceil,
                "slot": cl.slot,
                "bytes": int(cv[cb + C_BYTES]),
                "packets": int(cv[cb + C_PACKETS]),
                "drops": int(cv[cb + C_DROPS]),
                "backlog_packets": backlog[cl.name][0],
                "backlog_bytes": backlog[cl.name][1],
                "borrows": int(cv[cb + C_BORROWS]),
                "lends": int(cv[cb + C_LENDS]),
                "tokens": toks,
                "ctokens": ctoks,
                "tokens_bytes": toks / cl.spb,
                "ctokens_bytes": ctoks / cl.cspb,
                "mode": mode_name(vals, cl, now),
                "leaf": leaf_stats(htb, cl),
            }
    return out


def leaf_stats(htb: HTB, cl: ClassState) -> dict[str, Any] | None:
    """The leaf queue's own statistics (None for an inner class)."""
    if cl.spec is None:
        return None
    q = cl.q
    if cl.lazy:  # the queue object comes and goes: its limits are the spec's, its drops the counter's
        limits = cl.spec.as_dict()
        return {"kind": cl.spec.kind, "backlog_packets": q.backlog_packets if q is not None else 0,
                "backlog_bytes": q.backlog_bytes if q is not None else 0,
                "drops": int(htb._cvals[cl.cbase + C_DROPS]),
                "limit_packets": limits.get("limit_packets", 1000), "limit_bytes": limits.get("limit_bytes")}
    stats = getattr(q, "stats", None)
    if stats is not None:
        return stats()  # type: ignore[no-any-return]
    return {"kind": cl.spec.kind, "backlog_packets": q.backlog_packets, "backlog_bytes": q.backlog_bytes}
