"""Changing a few classes of a large HTB tree in O(k x log n) instead of rebuilding it (the kernel's
``htb_change_class`` and ``htb_delete``, one class at a time, rather than ``tc qdisc replace``).

An ISP changes subscribers all day: a plan upgrade re-rates one leaf, a new customer is one leaf more under
an existing parent, a cancellation removes one, an import hangs 10,000 circuits under a site that was a
leaf until then.  :meth:`Incremental.update` does those in place -- the other classes keep their queues,
tokens, DRR state, scheduler placement and C lanes untouched -- and hands anything that changes the tree's
shape otherwise (a class moved to another parent, an inner class removed, a new root, a tree grown too deep)
to the full :meth:`HTB.change`, which it is held to (tests/unit/test_htb_update.py: the same classes, the
same token state, the same DRR order, the same packets handed back or dropped).

A leaf that gets children becomes an inner class as ``change`` makes it one: its packets go to ``fallback``
or are handed back, its deficits start at 0, its level becomes its depth's; its first new child takes its
DRR position.  An inner class whose last child goes becomes a leaf (deficits at 0, level 0, a new leaf
queue) at the position of its first child.

New leaves take DRR positions between their parent's last leaf and the next one, spread evenly over the gap
(positions are ``IDX_GAP`` apart, see ``ClassState``); only when a gap is used up is the tree renumbered,
in O(n).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from heapq import heappop, heappush
from operator import attrgetter
from typing import TYPE_CHECKING

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.counters import C_DROPS, FIELDS_PER_COUNTER_SLOT, zero_row
from imqd.qdisc.htb_class import IDX_GAP, MAX_DEPTH, ClassState, HTBClassParams
from imqd.qdisc.htb_plan import ChangePlan, NewLeaf, build_leaf, check_slot, plan_change, tree_positions
from imqd.qdisc.leaves import LeafSpec, change_leaf

if TYPE_CHECKING:
    from imqd.qdisc.htb import HTB


_DEFINED = attrgetter("defined")


@dataclass
class UpdatePlan:
    removed: list[str] = field(default_factory=list)
    changed: list[HTBClassParams] = field(default_factory=list)
    added: list[HTBClassParams] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)  # new or moved slots
    new_leaves: dict[str, NewLeaf] = field(default_factory=dict)
    to_inner: list[str] = field(default_factory=list)  # leaves that get their first children, definition order
    to_leaf: list[str] = field(default_factory=list)  # inner classes that lose their last child


class Incremental:
    """``HTB.update``: a delta of a few classes, applied in place (mixed into :class:`~imqd.qdisc.htb.HTB`)."""

    def update(self: HTB, upserts: Sequence[HTBClassParams] = (), removals: Iterable[str] = (), *, now: float,
               fallback: str | None = None, prepared: UpdatePlan | ChangePlan | None = None
               ) -> list[QueuedPacket]:
        """Add or change the classes ``upserts`` and remove the classes ``removals``; all-or-nothing.

        Same contract as :meth:`HTB.change` with the resulting class set (definition order: survivors as they
        were, new classes at the end, in ``upserts`` order): packets of removed classes go to the leaf
        ``fallback`` or are returned; ValueError changes nothing.  ``prepared``: what :meth:`check_update`
        returned for these same arguments, the tree unchanged since (a big delta is then planned once)."""
        if isinstance(prepared, ChangePlan):
            return self._commit(prepared, now, fallback)
        removals = list(removals)
        plan = prepared if prepared is not None else self._plan_update(list(upserts), removals, fallback)
        if plan is None:  # the tree's shape changes beyond what is done in place
            return self.change(merged_params(self, upserts, removals), now, fallback)
        return self._apply_update(plan, now, fallback)

    def check_update(self: HTB, upserts: Sequence[HTBClassParams] = (), removals: Iterable[str] = (), *,
                     fallback: str | None = None) -> UpdatePlan | ChangePlan:
        """Raise ValueError if :meth:`update` would refuse this delta; change nothing (the caller may check
        several trees before it updates any, so that a refusal leaves all of them as they were).  Returns the
        plan, for ``update(..., prepared=)``."""
        removals = list(removals)
        plan = self._plan_update(list(upserts), removals, fallback)
        if plan is None:
            return plan_change(self._classes, merged_params(self, upserts, removals), fallback, self.tokens,
                               self.counters)
        return plan

    # -- checking ----------------------------------------------------------------------
    def _plan_update(self: HTB, upserts: list[HTBClassParams], removals: list[str], fallback: str | None
                     ) -> UpdatePlan | None:
        """Validate the delta; None when it is one for ``change`` (which then validates it in full)."""
        classes = self._classes
        plan = UpdatePlan()
        removed = set()
        for name in removals:
            if name not in classes:
                raise ValueError(f"class {name!r}: cannot remove: not a class of this tree")
            if name in removed:
                raise ValueError(f"class {name!r}: removed twice")
            removed.add(name)
        seen: set[str] = set()
        for p in upserts:  # (checked before anything may send the delta to change(), which would hide these)
            if not isinstance(p, HTBClassParams):
                raise ValueError(f"classes: expected HTBClassParams, got {p!r}")
            if p.name in seen:
                raise ValueError(f"class {p.name!r}: name: duplicate class name")
            if p.name in removed:
                raise ValueError(f"class {p.name!r}: both removed and changed")
            seen.add(p.name)
        added_under: dict[str, int] = {}
        to_inner: set[str] = set()
        for p in upserts:
            old = classes.get(p.name)
            if old is None:
                par = classes.get(p.parent) if p.parent is not None else None
                if par is None or p.parent in removed:
                    return None  # a new root, a child under a new or a removed class
                if par.spec is not None:  # a leaf gets its first child: it becomes an inner class
                    if len(par.chain) >= MAX_DEPTH:
                        return None  # too deep for an inner class: change() says so
                    to_inner.add(par.name)
                added_under[par.name] = added_under.get(par.name, 0) + 1
                plan.added.append(p)
            else:
                if p.parent != old.parent_name:
                    return None  # moved
                plan.changed.append(p)
        removed_under: dict[str | None, int] = {}
        for name in removals:
            cl = classes[name]
            if cl.spec is None:
                return None  # an inner class (with its children): the shape changes
            removed_under[cl.parent_name] = removed_under.get(cl.parent_name, 0) + 1
        to_leaf = {parent for parent, n in removed_under.items()
                   if parent is not None and classes[parent].nchildren - n + added_under.get(parent, 0) < 1}
        if fallback is not None and not (
            (fallback in self._leaf_map and fallback not in removed and fallback not in to_inner)
            or fallback in to_leaf or any(p.name == fallback for p in plan.added)
        ):
            raise ValueError(f"fallback: {fallback!r} is not a leaf class of the new tree")

        leaf_params = {name: classes[name].params for name in to_leaf}
        for p in upserts:  # (before the stores grow below, so a bad leaf changes nothing at all)
            old = classes.get(p.name)
            if old is None or (old.spec is not None and old.spec != p.leaf and p.name not in to_inner):
                plan.new_leaves[p.name] = build_leaf(p)
            elif p.name in to_leaf:
                leaf_params[p.name] = p
        for name, p in leaf_params.items():
            plan.new_leaves[name] = build_leaf(p)
        plan.to_inner = sorted(to_inner, key=lambda n: classes[n].defined)
        plan.to_leaf = sorted(to_leaf, key=lambda n: classes[n].defined)

        # Slots: explicit ones must be free (or freed by this delta); new classes without one get a free one.
        owner = self._slot_owner
        taken: dict[int, str] = {}
        for p in upserts:
            if p.slot >= 0:
                holder = owner.get(p.slot)
                if holder is not None and holder != p.name and holder not in removed:
                    check_slot(p.slot, p.name, {p.slot: holder})
                check_slot(p.slot, p.name, taken)
                taken[p.slot] = p.name
        freed = {classes[name].slot for name in removals}
        free = sorted(s for s in set(self._slot_free) | freed
                      if s not in taken and (owner.get(s) is None or owner[s] in removed))
        top = self._slot_top
        for p in upserts:
            old = classes.get(p.name)
            if p.slot >= 0:
                if old is None or old.slot != p.slot:
                    plan.slot_of[p.name] = p.slot
            elif old is None:
                if free:
                    plan.slot_of[p.name] = free.pop(0)
                else:
                    while top in taken or top in owner:
                        top += 1
                    plan.slot_of[p.name] = top
                    top += 1
        if plan.slot_of:
            need = max(plan.slot_of.values()) + 1
            self.tokens.ensure(need)  # raises ValueError for a fixed-size store that is too small
            self.counters.ensure(need)

        plan.removed = removals
        return plan

    # -- applying ----------------------------------------------------------------------
    def _apply_update(self: HTB, plan: UpdatePlan, now: float, fallback: str | None) -> list[QueuedPacket]:
        classes = self._classes
        sched = self._sched
        cvals = self._cvals
        dropped = self._dq_dropped
        orphans: list[QueuedPacket] = []
        lanes_for: set[str] = set()
        for name in plan.to_inner:  # (change() meets them first, so their packets come first too)
            self._make_inner(classes[name], orphans)
        gone = sorted((classes[name] for name in plan.removed), key=_DEFINED)  # as change() meets them
        for cl in gone:  # first their packets and their place in the scheduler ...
            if cl.q is not None:
                orphans.extend(cl.q.drain())
                self._collect_dropped(cl, dropped)
            if cl.active:
                self._deactivate(cl)
            cl.q = None
            self._set_backlog(cl)
            self._lanes.pop(cl.name, None)
        if plan.to_leaf:  # (their children are out of the scheduler now)
            ups = {p.name: p for p in plan.changed}
            for name in plan.to_leaf:
                cl = classes[name]
                self._make_leaf(cl, plan.new_leaves[name], ups.get(name, cl.params).leaf)
                lanes_for.add(name)

        for p in plan.changed:
            cl = classes[p.name]
            was_active = cl.active
            if was_active and cl.spec is not None:
                sched.deactivate(cl)  # re-placed below with its new prio, queue and mode
            slot = plan.slot_of.get(p.name, cl.slot)
            if slot != cl.slot:
                self._free_slot(cl.slot, cl.name)
                self._take_slot(slot, cl.name)
                zero_row(cvals, slot)
            cl.set_params(p, cl.level, slot, FIELDS_PER_COUNTER_SLOT)
            if p.name in plan.new_leaves and p.name not in plan.to_leaf:
                self._replace_leaf(cl, p, plan.new_leaves[p.name], now)
            self._fill_slot(cl, now)
            self._set_backlog(cl)
            if cl.spec is not None:
                lanes_for.add(cl.name)
                active = cl.q is not None and cl.q.backlog_packets > 0
                if was_active and not active:
                    cl.active = False  # its new limits dropped everything it held
                    self._nactive -= 1
                    if not self._nactive:
                        self._gate[0] = math.inf
                    if cl.lazy:
                        cl.q = None
                elif was_active:
                    sched.activate(cl, now)
            else:
                lanes_for.update(self._leaves_under(cl))
                sched.refresh(cl, now)

        new_under: dict[str, list[ClassState]] = {}
        for p in plan.added:
            par = classes[p.parent]  # type: ignore[index]
            cl = ClassState(p.name)
            slot = plan.slot_of[p.name]
            self._take_slot(slot, p.name)
            cl.set_params(p, 0, slot, FIELDS_PER_COUNTER_SLOT)
            new = plan.new_leaves[p.name]
            cl.set_leaf(None if new.lazy else new.q, p.leaf, new.lazy, new.passthrough)
            cl.parent = par
            cl.chain = (cl, *par.chain)
            cl.defined = self._defined
            self._defined += 1
            par.nchildren += 1
            classes[p.name] = cl
            self._leaf_map[p.name] = cl
            zero_row(cvals, slot)
            if p.slot < 0:  # a slot HTB picked: whatever a removed class left there is not this one's (a slot
                with self._locked():  # the caller gives was made fresh by the caller, and may already be
                    self.tokens.reset(slot)  # in use by another worker that applied this change first)
            self._fill_slot(cl, now)
            self._set_backlog(cl)
            new_under.setdefault(par.name, []).append(cl)
            lanes_for.add(p.name)
        renumber = False
        for parent, kids in new_under.items():
            if not self._place_new_leaves(classes[parent], kids):
                renumber = True
        # ... the removed leaves' positions and slots once the new leaves have theirs (a parent whose only leaf is
        # replaced keeps a span throughout); a parent left without children takes its first child's position
        keep = {classes[name].lo: classes[name] for name in plan.to_leaf}
        for cl in gone:
            heir = keep.get(cl.idx)
            if heir is not None:
                self._at[cl.idx] = heir
            else:
                self._drop_position(cl)
            if cl.parent is not None:
                cl.parent.nchildren -= 1
            del classes[cl.name]
            del self._leaf_map[cl.name]
            self._free_slot(cl.slot, cl.name)
        for at, heir in keep.items():
            heir.idx = heir.lo = heir.hi = at
        self._pick_scheduler(None, now)  # the tree may have grown past or shrunk below AUTO_SCAN_LEAVES
        if renumber:
            self._renumber()
        elif self._accelerate:
            for name in lanes_for:
                if name not in classes:
                    continue  # removed by this update
                lane = self._build_lane(classes[name])
                if lane is None:
                    self._lanes.pop(name, None)
                else:
                    self._lanes[name] = lane
        self._last_now = now
        if self._nactive:
            self._gate[0] = -math.inf  # rates changed: closed until the scheduler's next event says otherwise

        if orphans:
            orphans.sort(key=lambda pk: pk.enqueued_at)  # stable: keeps each queue's order
            if fallback is None:
                return orphans
            for pkt in orphans:
                dropped.extend(self.enqueue(pkt, fallback, now))
        return []

    def _replace_leaf(self: HTB, cl: ClassState, p: HTBClassParams, new: NewLeaf, now: float) -> None:
        """New leaf parameters for ``cl``: change its queue in place, or move its packets to the new one."""
        old_q = cl.q
        dropped = self._dq_dropped
        if old_q is None:
            cl.set_leaf(None if new.lazy else new.q, p.leaf, new.lazy, new.passthrough)
            return
        res = None
        if cl.spec is not None and cl.spec.kind == p.leaf.kind:
            try:
                res = change_leaf(old_q, p.leaf)
            except (ValueError, TypeError):
                res = None  # validated by build_leaf already: rebuild rather than fail half-way
        if res is None:
            self._collect_dropped(cl, dropped)
            for pkt in old_q.drain():
                d = new.q.enqueue(pkt, now)
                if d:
                    self._cvals[cl.cbase + C_DROPS] += len(d)
                    dropped.extend(d)
            cl.set_leaf(new.q, p.leaf, new.lazy, new.passthrough)
        else:
            self._cvals[cl.cbase + C_DROPS] += len(res)
            dropped.extend(res)
            self._collect_dropped(cl, dropped)
            cl.set_leaf(old_q, p.leaf, new.lazy, new.passthrough)
        if new.lazy and not cl.q.backlog_packets:
            cl.q = None

    def _fill_slot(self: HTB, cl: ClassState, now: float) -> None:
        """A fresh slot starts with full buckets; a smaller burst takes effect at once."""
        vals = self._vals
        b = cl.base
        with self._locked():
            if vals[b + 2] != vals[b + 2]:
                vals[b] = cl.buffer
                vals[b + 1] = cl.cbuffer
                vals[b + 2] = now
            else:
                if vals[b] > cl.buffer:
                    vals[b] = cl.buffer
                if vals[b + 1] > cl.cbuffer:
                    vals[b + 1] = cl.cbuffer

    # -- slots -------------------------------------------------------------------------
    def _index_slots(self: HTB) -> None:
        """Rebuild the slot bookkeeping from the classes (after a full change)."""
        self._slot_owner = {cl.slot: cl.name for cl in self._classes.values()}
        self._slot_top = max(self._slot_owner, default=-1) + 1
        self._slot_free = [s for s in range(self._slot_top) if s not in self._slot_owner]

    def _take_slot(self: HTB, slot: int, name: str) -> None:
        self._slot_owner[slot] = name
        if slot >= self._slot_top:
            self._slot_top = slot + 1  # (slots skipped on the way are not offered again: harmless)

    def _free_slot(self: HTB, slot: int, name: str) -> None:
        if self._slot_owner.get(slot) == name:  # (a class added by the same update may have it already)
            del self._slot_owner[slot]
            heappush(self._slot_free, slot)
            while self._slot_free and self._slot_free[0] in self._slot_owner:
                heappop(self._slot_free)  # taken again since it was freed

    # -- DRR positions -----------------------------------------------------------------
    def _index_positions(self: HTB) -> None:
        """Rebuild the sorted leaf positions (after a full change or a renumbering)."""
        self._at = {cl.idx: cl for cl in self._classes.values() if cl.spec is not None}
        self._pos = sorted(self._at)

    def _place_new_leaves(self: HTB, par: ClassState, kids: list[ClassState]) -> bool:
        """Give the new leaves ``kids`` of ``par`` (definition order) positions after its last leaf, spread
        evenly over the gap up to the next leaf; a parent that was a leaf until now hands its own position to
        the first of them.  False if the gap is too small: they get placeholders (the caller renumbers)."""
        pos = self._pos
        at = self._at
        if at.get(par.idx) is par:  # it was a leaf: its first child takes its place in the DRR order
            first = kids[0]
            first.idx = first.lo = first.hi = par.idx
            at[par.idx] = first
            kids = kids[1:]
            if not kids:
                return True
        hi = par.hi
        i = bisect_right(pos, hi)
        k = len(kids)
        nxt = pos[i] if i < len(pos) else hi + (k + 1) * IDX_GAP
        step = min(IDX_GAP, (nxt - hi) // (k + 1))
        if step < 1:
            for cl in kids:
                cl.idx = cl.lo = cl.hi = -1  # placeholder: _renumber gives everything its position
            return False
        new = range(hi + step, hi + step * (k + 1), step)
        for cl, x in zip(kids, new):
            cl.idx = cl.lo = cl.hi = x
            at[x] = cl
        last = new[-1]
        for a in par.chain:
            if a.hi != hi:
                break
            a.hi = last
        pos[i:i] = new
        return True

    def _make_inner(self: HTB, cl: ClassState, orphans: list[QueuedPacket]) -> None:
        """Leaf ``cl`` gets children: as ``change`` turns a leaf into an inner class (its packets to
        ``orphans``, deficits from 0, the level of its depth); it keeps its position until a child takes it."""
        if cl.q is not None:
            orphans.extend(cl.q.drain())
            self._collect_dropped(cl, self._dq_dropped)
        if cl.active:
            self._deactivate(cl)
        cl.set_leaf(None, None)
        cl.deficit = [0] * MAX_DEPTH
        cl.level = MAX_DEPTH - len(cl.chain)  # depth len(chain) - 1: level 7 - depth
        del self._leaf_map[cl.name]
        self._lanes.pop(cl.name, None)
        self._set_backlog(cl)

    def _make_leaf(self: HTB, cl: ClassState, new: NewLeaf, spec: LeafSpec) -> None:
        """Inner class ``cl`` lost its last child (all out of the scheduler): a leaf, as ``change`` makes it."""
        cl.level = 0
        cl.deficit = [0] * MAX_DEPTH
        cl.feeds = None
        cl.prios = 0
        cl.set_leaf(None if new.lazy else new.q, spec, new.lazy, new.passthrough)
        self._leaf_map[cl.name] = cl
        self._set_backlog(cl)

    def _drop_position(self: HTB, cl: ClassState) -> None:
        """Forget removed leaf ``cl``'s position; its ancestors' spans shrink to their remaining leaves."""
        pos = self._pos
        i = bisect_left(pos, cl.idx)
        del pos[i]
        del self._at[cl.idx]
        after = pos[i] if i < len(pos) else None
        before = pos[i - 1] if i > 0 else None
        par = cl.parent
        for a in par.chain if par is not None else ():
            if a.lo == cl.idx:
                a.lo = after  # type: ignore[assignment]  # (it keeps a leaf, so one follows inside its span)
            if a.hi == cl.idx:
                a.hi = before  # type: ignore[assignment]

    def _renumber(self: HTB) -> None:
        """New positions for the whole tree (a gap was used up), keeping every relative order and pointer."""
        kids: dict[str | None, list[str]] = {None: []}
        for cl in self._classes.values():
            kids.setdefault(cl.parent_name, []).append(cl.name)
        old = sorted((cl.idx, cl) for cl in self._classes.values() if cl.spec is not None and cl.idx >= 0)
        positions = tree_positions(kids)
        for cl in self._classes.values():
            cl.lo, cl.hi = positions[cl.name]
            cl.idx = cl.lo
        self._index_positions()
        old_pos = [p for p, _ in old]
        end = self._pos[-1] + 1 if self._pos else 0
        for key, p in enumerate(self._ptr):
            if p:
                i = bisect_left(old_pos, p)
                self._ptr[key] = old[i][1].idx if i < len(old) else end
        self._lanes.clear()
        if self._accelerate:
            self._lanes.update(self._build_lanes())

    def _leaves_under(self: HTB, cl: ClassState) -> list[str]:
        pos = self._pos
        return [self._at[p].name for p in pos[bisect_left(pos, cl.lo):bisect_right(pos, cl.hi)]]


def merged_params(htb: HTB, upserts: Sequence[HTBClassParams], removals: Iterable[str]) -> list[HTBClassParams]:
    """The full class list an update amounts to: survivors in definition order (changed ones in place), then
    the new classes in ``upserts`` order -- what :meth:`HTB.change` gets when the update is not done in place."""
    gone = set(removals)
    by_name = {p.name: p for p in upserts}
    out = [by_name.pop(cl.name, cl.params) for cl in htb._classes.values() if cl.name not in gone]
    return out + [p for p in upserts if p.name in by_name]


__all__ = ["Incremental", "UpdatePlan", "merged_params"]
