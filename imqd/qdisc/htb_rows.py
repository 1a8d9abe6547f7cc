"""HTB's row scheduler: the kernel's data structures, so a dequeue costs O(depth x log n), not O(backlog).

``net/sched/sch_htb.c`` never looks at every backlogged class.  It caches each active class's mode and keeps
the classes that may send in *rows* (per level and prio), the classes that may borrow in their parent's
*feed* (per prio), and the classes that can do neither in a *wait queue* keyed by the time their mode
changes (``htb_add_to_wait_tree``, ``htb_do_events``, ``htb_activate_prios``).  This module does the same,
and answers exactly what the reference scan (:mod:`imqd.qdisc.htb_scan`) answers -- the same leaf, the same
key, hence the same charges and DRR pointers (held to it by tests/unit/test_htb_rows.py):

* **Mode cache.**  An *active* class has ``mode`` (CANT / MAY / CAN) computed from its token slot with the
  reference's own comparisons; a class that is not CAN has an entry in the wait heap at the time its mode
  improves (``t_c - ctokens`` for CANT, ``t_c - tokens`` for MAY).  A leaf is active while backlogged; an
  inner class while some child borrows through it (a non-empty feed).  Inactive classes are not tracked: the
  C fast path charges an idle tree without touching any of this.
* **Placement.**  A CAN class sits in ``rows[level << 3 | prio]``; a MAY class in ``parent.feeds[prio]``;
  a CANT class nowhere.  An inner class is placed once per prio it has active feeds for (``prios``).
  Rows and feeds are lists sorted by DRR position (``lo``), and since every subtree covers one interval of
  positions (see ``ClassState``), "the first eligible leaf at or after the key's DRR pointer" is found by
  descending: at each level a bisect, and at most one step sideways.  That is the reference's flat DRR over
  the leaves in tree order, found in O(depth x log n).
* **Other workers.**  The token slots may be shared, and another worker's charge can make a class's true mode
  worse than the cached one, never better (only time refills a bucket, and the wait heap covers time).  So
  the cache is optimistic: the leaf the structures offer is checked against the token slots along its path,
  and if any class on it is worse than cached, those classes are refreshed and the search repeats.  Because
  every cached key is at most the true key, the first offer that checks out is the reference's answer.
* **Leaves that hold packets back** (delay, per-host, TBF: not work-conserving) are taken out of the rows
  while ``peek`` says they have nothing to send, with a wait entry at their own ``next_event``: no search
  ever lands on them in vain, and ``next_event`` never returns "now" for them.

``next_event`` is a lower bound here, unlike the reference's exact answer: it is "now" when some row is
non-empty, else the earliest wait-heap entry -- the next time *some* class changes mode, which may not yet
let a packet go (a leaf that may borrow again while its parent still cannot).  The kernel's watchdog works
the same way.  A caller that wakes early finds nothing to dequeue and asks again; the mode change it woke
for has been applied by then, so the next answer is later (no spinning), and it is never late.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from heapq import heapify, heappop, heappush
from operator import attrgetter
from typing import TYPE_CHECKING

from imqd.qdisc.htb_class import M_CAN, M_CANT, M_MAY, M_UNTRACKED, NO_KEY, NUM_PRIO, NWC_POLL, ClassState

if TYPE_CHECKING:
    from imqd.qdisc.htb import HTB

_LO = attrgetter("lo")
_HI = attrgetter("hi")
# ClassState.hold of a backlogged leaf: placed by its mode, or held out of the rows
PLACED, SKIPPED, GATED = 0, 1, 2


class RowScheduler:
    """Rows, feeds and a wait heap over one HTB's classes (see the module doc)."""

    exact_next_event = False  # next_event may be early (a mode change that releases nothing yet), never late

    def __init__(self, htb: HTB) -> None:
        self.htb = htb
        self.rows: list[list[ClassState]] = [[] for _ in range(NO_KEY)]
        self.mask = 0  # bit key set <=> rows[key] is non-empty
        self.wait: list[tuple[float, int, ClassState]] = []  # (time, seq, class); stale if class.wait_seq != seq
        self.seq = 0
        self.skipped: list[ClassState] = []
        self._now = 0.0

    # -- membership ------------------------------------------------------------------
    def rebuild(self, active: list[ClassState], now: float) -> None:
        """Forget every cached mode and placement, then activate the backlogged leaves (after a change)."""
        for c in self.htb._classes.values():
            c.mode = M_UNTRACKED
            c.prios = 0
            c.wait_seq = 0
            c.hold = PLACED
            c.feeds = None
        self.rows = [[] for _ in range(NO_KEY)]
        self.mask = 0
        self.wait = []
        self.skipped = []
        for cl in active:
            self.activate(cl, now)

    def activate(self, cl: ClassState, now: float) -> None:
        """Leaf ``cl`` became backlogged."""
        self._now = now
        cl.hold = PLACED
        if not cl.wc and cl.q.peek(now) is None:
            self._gate(cl, now)
            return
        m, t = self._actual(cl, now)
        cl.mode = m
        self._event(cl, m, t)
        self._place(cl, cl.prio)

    def deactivate(self, cl: ClassState) -> None:
        """Leaf ``cl`` holds nothing any more."""
        if cl.hold == PLACED:
            self._unplace(cl, cl.prio)
        cl.hold = PLACED
        cl.mode = M_UNTRACKED
        cl.wait_seq = 0

    def leaf_changed(self, cl: ClassState, now: float) -> None:
        """A non-work-conserving leaf got a packet: one held back may be able to send now, or sooner."""
        if cl.hold == GATED:
            self._now = now
            if cl.q.peek(now) is not None:
                self._ungate(cl, now)
            else:
                e = cl.q.next_event(now)
                if e is not None and now < e < cl.wait_at:
                    self._gate(cl, now)

    def charged(self, cl: ClassState, now: float) -> None:
        """HTB charged ``cl``'s path: its tracked classes may have changed mode (htb_charge_class)."""
        self._now = now
        for c in cl.chain:
            if c.mode != M_UNTRACKED:
                m, t = self._actual(c, now)
                self._set(c, m, t)
        if not cl.wc and cl.active and cl.hold == PLACED and cl.q.peek(now) is None:
            self._unplace(cl, cl.prio)  # what it still holds is not due yet: out of the rows until it is
            self._gate(cl, now)

    def refresh(self, c: ClassState, now: float) -> None:
        """Class ``c``'s rates changed (a live update): re-read its mode if it is tracked."""
        if c.mode != M_UNTRACKED:
            self._now = now
            m, t = self._actual(c, now)
            c.wait_seq = 0
            self._set(c, m, t)

    def skip(self, cl: ClassState) -> None:
        """``cl`` said it had a packet and then had not: leave it out until this dequeue ends."""
        if cl.hold == PLACED:
            self._unplace(cl, cl.prio)
            cl.hold = SKIPPED
            self.skipped.append(cl)

    def end_dequeue(self) -> None:
        if self.skipped:
            for cl in self.skipped:
                if cl.active and cl.hold == SKIPPED:
                    cl.hold = PLACED
                    self._place(cl, cl.prio)
            self.skipped.clear()

    # -- decisions -------------------------------------------------------------------
    def select(self, now: float) -> ClassState | None:
        """The leaf the reference scan would serve at ``now``; sets its ``key``."""
        self._now = now
        self._due(now)
        rows = self.rows
        ptr = self.htb._ptr
        while True:
            m = self.mask
            if not m:
                return None
            key = (m & -m).bit_length() - 1
            leaf, top = self._find(rows[key], key & 7, ptr[key])
            if not self._verify(leaf, top, now):
                continue  # another worker's charges made the path worse than cached: refreshed, search again
            if not leaf.wc and leaf.q.peek(now) is None:
                self._unplace(leaf, leaf.prio)
                self._gate(leaf, now)
                continue
            leaf.key = key
            return leaf

    def next_event(self, now: float) -> float | None:
        """A time >= ``now`` no later than the first at which ``select`` finds a leaf; None when idle."""
        if not self.htb._nactive:
            return None
        self._now = now
        self._due(now)
        if self.mask:
            return now
        w = self.wait
        while w:
            t, s, c = w[0]
            if c.wait_seq == s:
                return t
            heappop(w)
        return None

    # -- internals -------------------------------------------------------------------
    def _actual(self, c: ClassState, now: float) -> tuple[int, float]:
        """``c``'s mode at ``now`` from its token slot (the reference's comparisons), and when it improves."""
        vals = self.htb._vals
        b = c.base
        tc = vals[b + 2]
        rc = tc - vals[b + 1]
        if now < rc:
            return M_CANT, rc
        rt = tc - vals[b]
        if now >= rt:
            return M_CAN, 0.0
        if tc != tc:  # a fresh slot starts full
            self.htb._init_slot(c, now)
            return M_CAN, 0.0
        return M_MAY, rt

    def _event(self, c: ClassState, m: int, t: float) -> None:
        """Keep ``c``'s wait-heap entry at ``t`` (none when it can send)."""
        if m == M_CAN:
            c.wait_seq = 0
            return
        if c.wait_seq and c.wait_at == t:
            return
        self.seq = s = self.seq + 1
        c.wait_seq = s
        c.wait_at = t
        w = self.wait
        heappush(w, (t, s, c))
        if len(w) > 1024 and len(w) > 4 * len(self.htb._classes):
            self.wait = [e for e in w if e[2].wait_seq == e[1]]  # drop stale entries
            heapify(self.wait)

    def _due(self, now: float) -> None:
        """Apply every mode change (and every held-back leaf's wake-up) due at ``now``."""
        w = self.wait
        while w and w[0][0] <= now:
            _, s, c = heappop(w)
            if c.wait_seq != s:
                continue
            c.wait_seq = 0
            if c.hold == GATED:
                self._ungate(c, now)
            elif c.mode != M_UNTRACKED:
                m, t = self._actual(c, now)
                self._set(c, m, t)
            w = self.wait  # _event may have compacted it

    def _set(self, c: ClassState, m: int, t: float) -> None:
        """Cache mode ``m`` (changing at ``t``) for tracked class ``c``, moving it where the mode says."""
        if m != c.mode:
            if c.level == 0:
                if c.hold == PLACED:
                    self._unplace(c, c.prio)
                    c.mode = m
                    self._place(c, c.prio)
                else:
                    c.mode = m
            else:
                prios = c.prios
                for p in range(NUM_PRIO):
                    if prios >> p & 1:
                        self._unplace(c, p)
                c.mode = m
                for p in range(NUM_PRIO):
                    if prios >> p & 1:
                        self._place(c, p)
        self._event(c, m, t)

    def _place(self, c: ClassState, p: int) -> None:
        m = c.mode
        if m == M_CAN:
            key = (c.level << 3) | p
            row = self.rows[key]
            if row:
                insort(row, c, key=_LO)
            else:
                row.append(c)
                self.mask |= 1 << key
        elif m == M_MAY:
            par = c.parent
            if par is not None:
                self._feed_add(par, p, c)

    def _unplace(self, c: ClassState, p: int) -> None:
        m = c.mode
        if m == M_CAN:
            key = (c.level << 3) | p
            row = self.rows[key]
            del row[bisect_left(row, c.lo, key=_LO)]
            if not row:
                self.mask &= ~(1 << key)
        elif m == M_MAY:
            par = c.parent
            if par is not None:
                self._feed_remove(par, p, c)

    def _feed_add(self, x: ClassState, p: int, c: ClassState) -> None:
        feeds = x.feeds
        if feeds is None:
            feeds = x.feeds = [[] for _ in range(NUM_PRIO)]
        f = feeds[p]
        if f:
            insort(f, c, key=_LO)
            return
        f.append(c)
        if not x.prios:  # x becomes active: start tracking its mode
            m, t = self._actual(x, self._now)
            x.mode = m
            self._event(x, m, t)
        x.prios |= 1 << p
        self._place(x, p)

    def _feed_remove(self, x: ClassState, p: int, c: ClassState) -> None:
        f = x.feeds[p]  # type: ignore[index]
        del f[bisect_left(f, c.lo, key=_LO)]
        if f:
            return
        self._unplace(x, p)
        x.prios &= ~(1 << p)
        if not x.prios:
            x.mode = M_UNTRACKED
            x.wait_seq = 0

    def _gate(self, cl: ClassState, now: float) -> None:
        """Hold unplaced leaf ``cl`` out of the rows until its own next event (it has nothing to send now)."""
        e = cl.q.next_event(now)
        if e is None or e <= now:
            e = now + NWC_POLL  # the leaf says "now" (or nothing) but cannot: poll it soon, as the reference
        cl.hold = GATED
        cl.mode = M_UNTRACKED
        self.seq = s = self.seq + 1
        cl.wait_seq = s
        cl.wait_at = e
        heappush(self.wait, (e, s, cl))

    def _ungate(self, cl: ClassState, now: float) -> None:
        cl.wait_seq = 0
        if cl.q.peek(now) is None:
            self._gate(cl, now)
            return
        cl.hold = PLACED
        m, t = self._actual(cl, now)
        cl.mode = m
        self._event(cl, m, t)
        self._place(cl, cl.prio)

    def _verify(self, leaf: ClassState, top: ClassState, now: float) -> bool:
        """Whether the token slots agree with the cache on ``leaf``'s path up to ``top`` (refresh them if not)."""
        stale = None
        for c in leaf.chain:
            m, t = self._actual(c, now)
            if m != c.mode:
                if stale is None:
                    stale = []
                stale.append((c, m, t))
            if c is top:
                break
        if stale is None:
            return True
        for c, m, t in stale:
            if c.mode != M_UNTRACKED:  # (refreshing a class below may have untracked it)
                self._set(c, m, t)
        return False

    def _find(self, row: list[ClassState], p: int, q: int) -> tuple[ClassState, ClassState]:
        """The first leaf at or after DRR position ``q`` reachable through ``row`` (wrapping), and its row class."""
        i = bisect_left(row, q, key=_HI)
        n = len(row)
        while i < n:
            a = row[i]
            if a.lo >= q:
                return self._first(a, p), a
            leaf = self._at_least(a, p, q)
            if leaf is not None:
                return leaf, a
            i += 1
        a = row[0]
        return self._first(a, p), a

    @staticmethod
    def _first(x: ClassState, p: int) -> ClassState:
        while x.level:
            x = x.feeds[p][0]  # type: ignore[index]
        return x

    def _at_least(self, x: ClassState, p: int, q: int) -> ClassState | None:
        if not x.level:
            return x if x.idx >= q else None
        f = x.feeds[p]  # type: ignore[index]
        i = bisect_left(f, q, key=_HI)
        n = len(f)
        while i < n:
            c = f[i]
            if c.lo >= q:
                return self._first(c, p)
            leaf = self._at_least(c, p, q)
            if leaf is not None:
                return leaf
            i += 1
        return None

    def check(self) -> None:
        """Assert the structures' invariants (tests call this after every step)."""
        rows_seen = set()
        entries = {(e[1], id(e[2])) for e in self.wait}
        for key, row in enumerate(self.rows):
            assert bool(row) == bool(self.mask >> key & 1), f"mask bit {key} disagrees with its row"
            assert [c.lo for c in row] == sorted(c.lo for c in row), f"row {key} not sorted"
            for c in row:
                assert c.mode == M_CAN and c.level == key >> 3, f"{c.name} in row {key} with mode {c.mode}"
                rows_seen.add((c.name, key & 7))
        for c in self.htb._classes.values():
            if c.level == 0:
                if c.active and c.hold == PLACED:
                    assert c.mode != M_UNTRACKED, f"placed leaf {c.name} untracked"
                    if c.mode == M_CAN:
                        assert (c.name, c.prio) in rows_seen
                    elif c.mode == M_MAY and c.parent is not None:
                        assert c in c.parent.feeds[c.prio]  # type: ignore[index]
                if not c.active:
                    assert c.mode == M_UNTRACKED and c.hold == PLACED
            else:
                for p in range(NUM_PRIO):
                    f = c.feeds[p] if c.feeds else []
                    assert bool(f) == bool(c.prios >> p & 1), f"{c.name} prio {p}: feed and bit disagree"
                    assert [k.lo for k in f] == sorted(k.lo for k in f)
                    for k in f:
                        assert k.mode == M_MAY and k.parent is c
                    if f and c.mode == M_CAN:
                        assert (c.name, p) in rows_seen
                    if f and c.mode == M_MAY and c.parent is not None:
                        assert c in c.parent.feeds[p]  # type: ignore[index]
                assert (c.mode == M_UNTRACKED) == (c.prios == 0), f"{c.name}: tracked iff active"
            if c.mode in (M_CANT, M_MAY) or c.hold == GATED:
                assert c.wait_seq and (c.wait_seq, id(c)) in entries, f"{c.name} waits without a wait entry"
