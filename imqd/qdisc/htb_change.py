"""``HTB.change``: replace the whole class set, all-or-nothing (the kernel's ``htb_init`` and ``tc qdisc
replace`` in one path).  :class:`~imqd.qdisc.htb.HTB`'s ``__init__`` is an empty tree + ``change``, and
``HTB.update`` (:mod:`imqd.qdisc.htb_update`) hands it every delta it cannot apply in place.

:func:`~imqd.qdisc.htb_plan.plan_change` validates the new set and plans it without touching the tree (a
``ValueError`` changes nothing); ``_commit`` then applies the plan, which cannot fail: surviving classes keep
their token state and their queued packets, the rest are handed back or re-enqueued into ``fallback``, and the
scheduler, the slot and position indexes and the C lanes are rebuilt over the new tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.counters import FIELDS_PER_COUNTER_SLOT, zero_backlog, zero_row
from imqd.qdisc.htb_class import MAX_DEPTH, NO_KEY, ClassState, HTBClassParams
from imqd.qdisc.htb_plan import ChangePlan, plan_change
from imqd.qdisc.htb_rows import RowScheduler
from imqd.qdisc.htb_scan import ScanScheduler

if TYPE_CHECKING:
    from imqd.qdisc.htb import HTB

#: With scheduler "auto": the scan for trees of up to AUTO_SCAN_LEAVES leaves, where looking at every backlogged
#: leaf costs less than keeping the rows current (measured: ~1.5x less per packet with 1-3 busy leaves,
#: break-even near 8), the rows above.  Both answer the same (tests/unit/test_htb_rows.py); HTB switches when a
#: change or an update crosses it.
AUTO_SCAN_LEAVES = 8


class FullChange:
    """``HTB.change`` and what it rebuilds (mixed into :class:`~imqd.qdisc.htb.HTB`)."""

    def change(
        self: HTB, classes: Sequence[HTBClassParams], now: float, fallback: str | None = None
    ) -> list[QueuedPacket]:
        """Replace the whole class set; all-or-nothing.

        Packets of classes that still exist as leaves stay queued (moved into
        the new leaf if its kind changes); token state of surviving classes is
        kept.  Packets of removed classes, or of leaves that became inner
        classes, are re-enqueued into the leaf ``fallback`` if given, else
        *returned*: the caller must release them.  Packets a leaf drops in the
        process (a smaller limit, a full fallback) go to :meth:`take_dropped`.
        Raises ``ValueError`` and changes nothing if the new tree is invalid.
        """
        plan = plan_change(self._classes, classes, fallback, self.tokens, self.counters)
        return self._commit(plan, now, fallback)

    def _commit(self: HTB, plan: ChangePlan, now: float, fallback: str | None) -> list[QueuedPacket]:
        params = plan.params
        kids = plan.kids
        depth = plan.depth
        slot_of = plan.slot_of
        new_leaves = plan.new_leaves
        positions = plan.positions
        returned: list[QueuedPacket] = []
        orphans: list[QueuedPacket] = []
        dropped = self._dq_dropped  # drops are reported through take_dropped(), never lost
        old_classes = self._classes
        self._vals = self.tokens.values
        cvals = self._cvals = self.counters.values

        classes: dict[str, ClassState] = {}
        for rank, p in enumerate(params):
            cl = old_classes.get(p.name)
            is_new = cl is None
            if cl is None:
                cl = ClassState(p.name)
            is_leaf = p.name not in kids
            old_slot = -1 if is_new else cl.slot
            cl.set_params(p, 0 if is_leaf else MAX_DEPTH - 1 - depth[p.name], slot_of[p.name],
                          FIELDS_PER_COUNTER_SLOT)
            cl.lo, cl.hi = positions[p.name]
            cl.idx = cl.lo
            cl.defined = rank
            cl.nchildren = len(kids.get(p.name, ()))
            if not self._started:
                zero_backlog(cvals, cl.slot)  # a new worker holds nothing; its totals continue
            elif is_new or old_slot != cl.slot:
                zero_row(cvals, cl.slot)  # a class new to this tree starts counting at 0
            old_q = cl.q
            if not is_leaf:
                if old_q is not None:  # a leaf became an inner class: its packets have to go elsewhere
                    orphans.extend(old_q.drain())
                    self._collect_dropped(cl, dropped)
                if cl.spec is not None:
                    cl.deficit = [0] * MAX_DEPTH
                cl.set_leaf(None, None)
            elif p.name in new_leaves:
                if cl.spec is None:  # new, or an inner class that became a leaf
                    cl.deficit = [0] * MAX_DEPTH
                self._replace_leaf(cl, p, new_leaves[p.name], now)
            classes[p.name] = cl
        order = list(classes.values())
        for name, cl in old_classes.items():
            if name not in classes and cl.q is not None:
                orphans.extend(cl.q.drain())
                self._collect_dropped(cl, dropped)
                self._pool_sync(cl, 0)

        for cl in order:
            cl.parent = classes[cl.parent_name] if cl.parent_name is not None else None
        for cl in order:
            chain = [cl]
            while chain[-1].parent is not None:
                chain.append(chain[-1].parent)  # type: ignore[arg-type]
            cl.chain = tuple(chain)

        vals = self._vals
        with self._locked():
            for s in plan.fresh:
                self.tokens.reset(s)
            for cl in order:
                b = cl.base
                if vals[b + 2] != vals[b + 2]:  # fresh slot: both buckets full
                    vals[b] = cl.buffer
                    vals[b + 1] = cl.cbuffer
                    vals[b + 2] = now
                else:  # a smaller burst takes effect at once
                    if vals[b] > cl.buffer:
                        vals[b] = cl.buffer
                    if vals[b + 1] > cl.cbuffer:
                        vals[b + 1] = cl.cbuffer

        self._classes = classes
        self._leaf_map = {cl.name: cl for cl in order if cl.spec is not None}
        self._index_positions()
        self._index_slots()
        self._defined = len(order)  # the rank the next class update() adds gets
        active = []
        for cl in order:
            cl.active = cl.q is not None and cl.q.backlog_packets > 0
            if cl.active:
                active.append(cl)
            self._set_backlog(cl)
        self._nactive = len(active)
        self._gate[0] = -math.inf if active else math.inf  # in place: the lanes hold it
        self._ptr[:] = [0] * NO_KEY  # in place: the lanes hold it
        self._last_now = now
        if not self._pick_scheduler(active, now):
            self._sched.rebuild(active, now)
        self._lanes.clear()  # in place: DirectionTree keeps this dict (see lanes)
        if self._accelerate:
            try:
                self._gate.bind(self._vals, self._cvals, self._ptr, self._lock)
            except (TypeError, ValueError):  # what C cannot hold: Python does it all (never fail a change here)
                pass
            else:
                self._lanes.update(self._build_lanes())

        if orphans:
            orphans.sort(key=lambda pk: pk.enqueued_at)  # stable: keeps each queue's order
            if fallback is None:
                returned.extend(orphans)
            else:
                for pkt in orphans:
                    dropped.extend(self.enqueue(pkt, fallback, now))
        return returned

    def _pick_scheduler(self: HTB, active: list[ClassState] | None, now: float) -> bool:
        """With "auto", switch to the scheduler the tree's size calls for; whether it switched (and rebuilt)."""
        if self._scheduler_choice != "auto":
            return False
        want = ScanScheduler if len(self._leaf_map) <= AUTO_SCAN_LEAVES else RowScheduler
        if isinstance(self._sched, want):
            return False
        self._sched = want(self)
        if active is None:
            active = [c for c in self._leaf_map.values() if c.active]
        self._sched.rebuild(active, now)
        return True


__all__ = ["AUTO_SCAN_LEAVES", "FullChange"]
