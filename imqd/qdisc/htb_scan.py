"""HTB's reference scheduler: decide by looking at every backlogged leaf, every time.

This is how imqd chose the next packet before the row scheduler (:mod:`imqd.qdisc.htb_rows`) and it stays as
the reference the row scheduler is held to (tests/unit/test_htb_rows.py: same releases, same token state,
same DRR pointers).  It is simple enough to check by reading:

* ``select`` computes, for every backlogged leaf, the key ``level << 3 | prio`` at which it could send now
  by walking up its parent chain (CANT_SEND stops the walk, CAN_SEND at a class gives that class's level,
  MAY_BORROW asks the parent), takes the lowest key, and among the leaves with that key the first at or
  after the key's DRR pointer (``HTB._ptr``), wrapping around.  The token state may be shared with other
  workers and change under us, so nothing is cached.
* ``next_event`` computes, for every backlogged leaf, the earliest time some class A on its path has
  ``tokens >= 0`` while every class from the leaf up to A has ``ctokens >= 0`` -- exactly the float at which
  ``select`` will find it (mode tests are written as time comparisons, ``now >= t_c - tokens``, so no
  rounding can wake a caller one ulp early).

Both are O(backlogged leaves x depth) per call, which is what made 10,000 busy subscribers 5x slower.
"""

from __future__ import annotations

import math
from bisect import insort
from operator import attrgetter
from typing import TYPE_CHECKING

from imqd.qdisc.htb_class import NO_KEY, NWC_POLL, ClassState

if TYPE_CHECKING:
    from imqd.qdisc.htb import HTB

_IDX = attrgetter("idx")


class ScanScheduler:
    """Selection by scanning the backlogged leaves (kept sorted by DRR position)."""

    exact_next_event = True  # next_event is the time dequeue succeeds (early only after a foreign charge)

    def __init__(self, htb: HTB) -> None:
        self.htb = htb
        self.active: list[ClassState] = []  # backlogged leaves, sorted by idx
        self._skip: list[ClassState] | None = None
        # next_event's last answer while nothing of ours changed since: time alone cannot make it
        # earlier, and charges by other workers only make the true answer later.
        self._ne_cache: float | None = None
        self._ne_stamp = 0.0

    # -- membership ------------------------------------------------------------------
    def rebuild(self, active: list[ClassState], now: float) -> None:
        self.active = sorted(active, key=_IDX)
        self._ne_cache = None

    def activate(self, cl: ClassState, now: float) -> None:
        insort(self.active, cl, key=_IDX)
        self._ne_cache = None

    def deactivate(self, cl: ClassState) -> None:
        self.active.remove(cl)
        self._ne_cache = None

    def leaf_changed(self, cl: ClassState, now: float) -> None:
        """A non-work-conserving leaf got a packet: its own next event may have moved."""
        self._ne_cache = None

    def charged(self, cl: ClassState, now: float) -> None:
        self._ne_cache = None

    def refresh(self, c: ClassState, now: float) -> None:
        """Class ``c``'s rates changed (a live update)."""
        self._ne_cache = None

    def skip(self, cl: ClassState) -> None:
        """``cl`` said it had a packet and then had not: leave it out until this dequeue ends."""
        self._skip = (self._skip or []) + [cl]
        self._ne_cache = None

    def end_dequeue(self) -> None:
        self._skip = None

    # -- decisions -------------------------------------------------------------------
    def select(self, now: float) -> ClassState | None:
        """The leaf to serve at ``now``; sets its ``key``."""
        htb = self.htb
        vals = htb._vals
        skip = self._skip
        best = NO_KEY
        active = self.active
        for cl in active:
            key = NO_KEY
            for c in cl.chain:
                b = c.base
                tc = vals[b + 2]
                if now < tc - vals[b + 1]:  # ctokens + diff < 0: CANT_SEND
                    break
                if now >= tc - vals[b]:  # tokens + diff >= 0: CAN_SEND
                    key = (c.level << 3) | cl.prio
                    break
                if tc != tc:  # a slot made fresh by another worker: it starts full
                    htb._init_slot(c, now)
                    key = (c.level << 3) | cl.prio
                    break
                # MAY_BORROW: ask the parent
            if key <= best and key != NO_KEY:
                if (not cl.wc and cl.q.peek(now) is None) or (skip is not None and cl in skip):
                    key = NO_KEY
                elif key < best:
                    best = key
            cl.key = key
        if best == NO_KEY:
            return None
        p = htb._ptr[best]
        first = None
        for cl in active:
            if cl.key == best:
                if cl.idx >= p:
                    return cl
                if first is None:
                    first = cl
        return first

    def next_event(self, now: float) -> float | None:
        """Earliest time >= ``now`` at which ``select`` may find a leaf; ``None`` when nothing is backlogged.

        Cached until this tree's state changes (a leaf becomes backlogged, a non-work-conserving leaf gets a
        packet, a release, a change), so a worker may call it after every arrival at no cost.  Another
        worker's charge since the answer was cached is not seen: it can only make the true answer later, so
        the cached one is then early (the caller finds nothing and asks again, past it), never late.
        :meth:`fresh_next_event` is the answer from the token slots as they are now."""
        if not self.active:
            return None
        cached = self._ne_cache
        stamp = self.htb._gate[1]  # send_now's charges since the answer was cached make it early: recompute
        if cached is not None and now < cached and stamp == self._ne_stamp:
            return cached
        best = self.fresh_next_event(now)
        if best is not None and best > now:
            self._ne_cache = best
            self._ne_stamp = stamp
        return best

    def fresh_next_event(self, now: float) -> float | None:
        """:meth:`next_event` computed afresh: exactly the first time >= ``now`` at which ``select`` finds a
        leaf, given the token slots as they are now (and no charge before it)."""
        active = self.active
        if not active:
            return None
        vals = self.htb._vals
        inf = math.inf
        best = inf
        # Reads only: no lock (another worker's charge can only make the answer later).
        for cl in active:
            t = inf
            cmax = -inf
            for c in cl.chain:
                b = c.base
                tc = vals[b + 2]
                rc = tc - vals[b + 1]  # time ctokens reach 0 (NaN for a fresh slot: never binding)
                if rc > cmax:
                    cmax = rc
                if cmax >= t:
                    break  # classes further up cannot make it earlier
                rt = tc - vals[b]
                cand = rt if rt > cmax else cmax
                if cand < t:
                    t = cand
            if not cl.wc:
                e = cl.q.next_event(now)
                if e is None:
                    continue
                if e > t:
                    t = e
                if t <= now and cl.q.peek(now) is None:
                    t = now + NWC_POLL  # the leaf said "now" but cannot: poll it soon
            if t <= now:
                return now
            if t < best:
                best = t
        if best == inf:
            return None
        return best
