"""Hierarchical token bucket, modelled on Linux ``net/sched/sch_htb.c``.

What is kept from the kernel, and why it differs where it does:

* Token state per class (``tokens``, ``ctokens``, ``t_c``) in *seconds*, like the kernel's nanoseconds:
  ``buffer = burst*8/rate``, ``cbuffer = cburst*8/ceil``, ``mbuffer`` = 60 s caps the credit of a long idle
  period.  Charging on release is ``htb_charge_class`` / ``htb_accnt_tokens`` verbatim, so a class may go
  into debt by a packet larger than its burst (down to ``-mbuffer``) and pays it back before it sends again.
* Levels: leaves are level 0, an inner class at depth ``d`` is level ``7-d`` (roots 7).  Dequeue serves the
  lowest level first, then the lowest prio, then DRR (per-leaf, per-level deficit and quantum, as
  ``htb_dequeue_tree``) among the leaves eligible at that (level, prio).
* DRR is flat among the eligible leaves, in tree order (depth first, children in definition order): the
  DRR pointer per (level, prio) is a leaf position (``ClassState.idx``), so it can never dangle when leaves go
  idle.  The kernel runs DRR per inner class instead; flat DRR gives every eligible leaf of a key the same
  turn whatever its parent.
* Which leaf to serve is decided by a *scheduler*: :class:`~imqd.qdisc.htb_rows.RowScheduler` keeps the
  kernel's rows, feeds and wait queue, O(depth x log n) per packet; :class:`~imqd.qdisc.htb_scan.
  ScanScheduler` looks at every backlogged leaf, O(backlog), and is the reference the first is held to.  By
  default a tree of up to ``AUTO_SCAN_LEAVES`` leaves uses the scan (cheaper for a handful of classes) and a
  larger one the rows.
  The token state may live in a store shared with other worker processes and change under us; see the
  schedulers for how each copes.
* Mode tests are written as time comparisons -- ``now >= t_c - tokens`` means ``tokens + (now - t_c) >= 0``.

``__init__`` is "empty tree + :meth:`HTB.change`", like ``htb_init``: one validated, all-or-nothing path
configures the tree at start and at run time (:mod:`imqd.qdisc.htb_change`; :mod:`imqd.qdisc.htb_update`
changes a few classes in place).

Packets leave the HTB three ways, and the caller owes each a verdict: ``dequeue`` (send), ``enqueue``'s
return value and :meth:`HTB.take_dropped` (drop), and :meth:`HTB.change`'s / :meth:`HTB.drain`'s return
value (packets handed back unscheduled: release them).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.held_pool import HeldPool
from imqd.qdisc.counters import (
    C_BACKLOG_BYTES,
    C_BACKLOG_PACKETS,
    C_BORROWS,
    C_BYTES,
    C_DROPS,
    C_LENDS,
    C_PACKETS,
    CounterStore,
    LocalCounters,
)
from imqd.qdisc.htb_class import (
    CAN_SEND,
    CANT_SEND,
    MAX_DEPTH,
    MAY_BORROW,
    MBUFFER,
    NO_KEY,
    NUM_PRIO,
    TOKEN_FLOOR,
    ClassState,
    HTBClassParams,
)
from imqd.qdisc.htb_change import AUTO_SCAN_LEAVES, FullChange
from imqd.qdisc.htb_rows import RowScheduler
from imqd.qdisc.htb_scan import ScanScheduler
from imqd.qdisc.htb_stats import class_stats, mode_name
from imqd.qdisc.htb_update import Incremental
from imqd.qdisc.leaves import make_leaf
from imqd.qdisc.tokens import LOCK_TIMEOUT_S, LocalTokenStore, TokenStore

try:  # send_now's common case in C (imqd/qdisc/_htbfast.c); optional: without it the code below does it all
    from imqd.qdisc._htbfast import Lane, Shared
except ImportError:  # pragma: no cover - depends on whether the extension was compiled
    Lane = Shared = None

__all__ = ["HTB", "HTBClassParams", "ACCELERATED", "SCHEDULERS", "AUTO_SCAN_LEAVES", "CAN_SEND", "MAY_BORROW",
           "CANT_SEND", "MAX_DEPTH", "NUM_PRIO", "MBUFFER"]

#: Whether the C fast path was compiled and imported (HTB(..., accelerate=False) turns it off per tree).
ACCELERATED = Lane is not None

#: The ways to choose the next leaf: "rows" (O(depth x log n)) and "scan" (O(backlogged leaves), the reference).
SCHEDULERS = {"rows": RowScheduler, "scan": ScanScheduler}
#: "auto": the scan for trees of up to AUTO_SCAN_LEAVES leaves, the rows above (see imqd.qdisc.htb_change).
DEFAULT_SCHEDULER = "auto"


class HTB(FullChange, Incremental):
    """An HTB tree: classify elsewhere, then ``enqueue`` into a leaf, ``dequeue`` when ``next_event`` says.

    Configured by :meth:`change` (the whole class set) or :meth:`update` (a few classes, in place)."""

    def __init__(self, classes: Sequence[HTBClassParams], now: float, tokens: TokenStore | None = None,
                 accelerate: bool = True, scheduler: str | None = None, counters: CounterStore | None = None,
                 pool: HeldPool | None = None) -> None:
        scheduler = DEFAULT_SCHEDULER if scheduler is None else scheduler
        if scheduler not in SCHEDULERS and scheduler != "auto":
            raise ValueError(f"scheduler: {scheduler!r} is not one of auto, {', '.join(SCHEDULERS)}")
        self.tokens: TokenStore = tokens if tokens is not None else LocalTokenStore()
        self.counters: CounterStore = counters if counters is not None else LocalCounters()
        self._vals = self.tokens.values
        self._cvals = self.counters.values
        self._locked = self.tokens.locked
        self._lock = self.tokens.lock  # None: private store, no locking on the per-packet path
        self._classes: dict[str, ClassState] = {}  # in definition order
        self._leaf_map: dict[str, ClassState] = {}
        self._pos: list[int] = []  # DRR positions of the leaves, sorted
        self._at: dict[int, ClassState] = {}  # position -> leaf
        self._slot_owner: dict[int, str] = {}
        self._slot_free: list[int] = []  # a heap of slots freed since the last full change
        self._slot_top = 0
        self._defined = 0
        self._nactive = 0  # backlogged leaves
        # The packets this worker may hold, shared with its other trees (dynamic thresholds); `held` counts
        # this tree's share of pool.held, both kept exact by _pool_sync.  Own, unbounded pool by default.
        self.pool = pool if pool is not None else HeldPool()
        self.held = 0
        # The fast path's gate, read by the C lanes: [open_until, bypasses].  While some leaf is backlogged a packet
        # may skip the queue only before open_until, the scheduler's last next_event (none of the backlogged
        # leaves can be sent before it, so enqueue + dequeue would release the new packet first as well);
        # -inf when that is unknown, +inf when nothing is backlogged.  bypasses counts send_now's charges.
        # With C, the gate is the two doubles of the Shared object every lane of this tree reads (with the token
        # and counter buffers, the pointer list and the lock, bound at every change): one per tree, not per lane.
        self._ptr = [0] * NO_KEY  # DRR pointer per level*8+prio: position of the next leaf to serve
        self._accelerate = accelerate and ACCELERATED
        self._gate: Any = array("d", [math.inf, 0.0])
        if self._accelerate:
            try:
                self._gate = Shared(self._vals, self._cvals, self._ptr, self._lock)
            except (TypeError, ValueError):  # a store C cannot hold (no buffer of doubles): Python does it all
                self._accelerate = False
        self._dq_dropped: list[QueuedPacket] = []
        self._last_now = now
        self._lanes: dict[str, Any] = {}  # leaf name -> its C Lane (send_now's fast path); empty without C
        self._scheduler_choice = scheduler
        self._sched: RowScheduler | ScanScheduler = SCHEDULERS["scan" if scheduler == "auto" else scheduler](self)
        self._started = False
        dropped = self.change(classes, now)
        self._started = True
        assert not dropped  # an empty tree holds nothing to give back

    # -- configuration (change() and _commit(): imqd.qdisc.htb_change; update(): imqd.qdisc.htb_update) --

    def _build_lanes(self) -> dict[str, Any]:
        """One C Lane per leaf that packets may skip (send_now), over this tree's current state objects."""
        lanes = {}
        for cl in self._leaf_map.values():
            lane = self._build_lane(cl)
            if lane is not None:
                lanes[cl.name] = lane
        return lanes

    def _build_lane(self, cl: ClassState) -> Any | None:
        """Leaf ``cl``'s C Lane, or None (no passthrough, or what C cannot hold).

        A lane holds the leaf's deficit list (so it is only ever changed in place), the tree's Shared object
        (``_gate``: the DRR pointer list, also changed in place only, the token store's values and lock, the
        counters) and the constants of the classes on the leaf's path (so it is rebuilt when any of them
        change)."""
        assert Lane is not None
        if cl.spec is None or cl.passthrough <= 0:
            return None
        spec = tuple((c.base, c.level, c.buffer, c.cbuffer, c.spb, c.cspb, c.cbase) for c in cl.chain)
        try:
            return Lane(self._gate, spec, cl.prio, cl.quantum, cl.idx, cl.passthrough, cl.deficit)
        except (TypeError, ValueError, OverflowError):
            # what C cannot hold (a store that is no buffer of doubles, a quantum beyond a C long): this leaf
            # stays with the Python code -- never let a change fail after the tree is in place
            return None

    @property
    def scheduler(self) -> str:
        """The scheduler in use now: "rows" or "scan"."""
        return "rows" if isinstance(self._sched, RowScheduler) else "scan"

    @property
    def exact_next_event(self) -> bool:
        """Whether :meth:`next_event` is exactly the first time ``dequeue`` succeeds (else: never later), as
        long as no other worker charges the token store."""
        return self._sched.exact_next_event

    @property
    def accelerated(self) -> bool:
        """Whether send_now runs in C for this tree."""
        return self._accelerate

    @property
    def lanes(self) -> Mapping[str, Any]:
        """Leaf name -> C Lane, for callers that skip :meth:`send_now`'s Python frame on the per-packet path.

        ``lane.send(size, now)`` returns 1 (sent: what ``send_now`` returning True means), 0 (``send_now``
        would return False) or -1 (call :meth:`send_now_reference`).  The same mapping object for the tree's
        lifetime, kept current by every change; empty when the C extension is not available or turned off."""
        return self._lanes

    def _collect_dropped(self, cl: ClassState, out: list[QueuedPacket]) -> None:
        if cl.take_dropped is not None:
            d = cl.take_dropped()
            if d:
                self._cvals[cl.cbase + C_DROPS] += len(d)
                out.extend(d)

    def _set_backlog(self, cl: ClassState) -> None:
        q = cl.q
        cv = self._cvals
        b = cl.cbase
        if q is None:
            cv[b + C_BACKLOG_PACKETS] = cv[b + C_BACKLOG_BYTES] = 0
            n = 0
        else:
            cv[b + C_BACKLOG_PACKETS] = n = q.backlog_packets
            cv[b + C_BACKLOG_BYTES] = q.backlog_bytes
        if n != cl.pooled:
            self._pool_sync(cl, n)

    def _pool_sync(self, cl: ClassState, n: int) -> None:
        """Leaf ``cl`` holds ``n`` packets now: the tree's and the pool's counts follow."""
        d = n - cl.pooled
        cl.pooled = n
        self.held += d
        self.pool.held += d

    def _activate(self, cl: ClassState, now: float) -> None:
        cl.active = True
        self._gate[0] = -math.inf  # a new backlogged leaf may be sendable now: closed until next_event says
        self._nactive += 1
        self._sched.activate(cl, now)

    def _deactivate(self, cl: ClassState) -> None:
        cl.active = False
        self._nactive -= 1
        if not self._nactive:
            self._gate[0] = math.inf
        self._sched.deactivate(cl)
        if cl.lazy:
            cl.q = None  # an empty FIFO is rebuilt on the next packet: 10,000 idle ones cost nothing

    # -- data path -------------------------------------------------------------------

    def enqueue(self, pkt: QueuedPacket, leaf: str, now: float) -> list[QueuedPacket]:
        """Queue ``pkt`` in leaf class ``leaf``; return what its leaf qdisc dropped (maybe ``pkt``)."""
        cl = self._leaf_map.get(leaf) or self._no_leaf(leaf, "enqueue")
        pool = self.pool
        if pool.capacity is not None and not pool.admits(cl.pooled):
            pool.drops += 1  # over its share of what the worker may hold: the longest queues drop first
            self._cvals[cl.cbase + C_DROPS] += 1
            return [pkt]
        q = cl.q
        if q is None:
            q = cl.q = make_leaf(cl.spec)  # type: ignore[arg-type]  # a lazy FIFO gets its first packet
        dropped = q.enqueue(pkt, now)
        cv = self._cvals
        b = cl.cbase
        if dropped:
            cv[b + C_DROPS] += len(dropped)
        cv[b + C_BACKLOG_PACKETS] = n = q.backlog_packets
        cv[b + C_BACKLOG_BYTES] = q.backlog_bytes
        if n != cl.pooled:
            self._pool_sync(cl, n)
        if not cl.active:
            if n:
                self._activate(cl, now)
            elif cl.lazy:
                cl.q = None
        elif not cl.wc:  # the leaf's own next event may have moved
            self._sched.leaf_changed(cl, now)
        return dropped

    def _no_leaf(self, leaf: str, what: str) -> ClassState:
        if leaf in self._classes:
            raise ValueError(f"{what}: class {leaf!r} is an inner class, not a leaf")
        raise ValueError(f"{what}: unknown class {leaf!r}")

    def send_now(self, leaf: str, size: int, now: float) -> bool:
        """Let a packet of ``size`` bytes through leaf ``leaf`` at once if HTB would dequeue it at once.

        The worker's fast path.  When no backlogged leaf can be sent at ``now`` (none is backlogged, or the
        scheduler's last ``next_event`` lies ahead), ``enqueue`` followed by ``dequeue`` hands the packet
        straight back if its leaf qdisc passes it through unchanged (an empty FIFO within its limits) and the
        class may send at ``now`` (on its own tokens or by borrowing).  ``send_now`` does exactly what that
        pair would do -- the same DRR deficit and pointer update, the same charge up the tree -- without
        queueing anything.  So a subscriber under its plan goes straight through while others wait for
        tokens.  Returns False and changes nothing otherwise; the caller then ``enqueue``s.
        """
        lane = self._lanes.get(leaf)
        if lane is not None:  # (it answers 0 itself while a leaf is backlogged)
            sent = lane.send(size, now)  # the same steps in C; -1: a case it leaves to the reference
            if sent >= 0:
                return sent == 1
        return self.send_now_reference(leaf, size, now)

    def send_now_reference(self, leaf: str, size: int, now: float) -> bool:
        """:meth:`send_now` in Python: the reference the C lanes are held to, and what does their -1 cases."""
        if self._nactive and not now < self._gate[0]:
            return False  # a backlogged leaf may be sendable now: the packet queues behind (see _gate)
        cl = self._leaf_map.get(leaf) or self._no_leaf(leaf, "send_now")
        if size > cl.passthrough:
            return False
        vals = self._vals
        key = NO_KEY
        for c in cl.chain:  # as the schedulers' select, for the only leaf that would be backlogged
            b = c.base
            tc = vals[b + 2]
            if now < tc - vals[b + 1]:
                return False  # CANT_SEND: the packet must wait
            if now >= tc - vals[b]:
                key = (c.level << 3) | cl.prio
                break
            if tc != tc:
                self._init_slot(c, now)
                key = (c.level << 3) | cl.prio
                break
        if key == NO_KEY:
            return False
        self._last_now = now
        self._charge(cl, key, size, now)
        self._gate[1] += 1.0
        return True

    def _init_slot(self, c: ClassState, now: float) -> None:
        vals = self._vals
        b = c.base
        vals[b] = c.buffer
        vals[b + 1] = c.cbuffer
        vals[b + 2] = now

    def dequeue(self, now: float) -> QueuedPacket | None:
        """Release the next packet HTB allows at ``now`` and charge it up the tree; ``None`` if none may go."""
        if not self._nactive:
            return None
        self._last_now = now
        sched = self._sched
        cv = self._cvals
        try:
            while True:
                cl = sched.select(now)
                if cl is None:
                    return None
                q = cl.q
                pkt = q.dequeue(now)
                if cl.take_dropped is not None:
                    self._collect_dropped(cl, self._dq_dropped)
                key = cl.key
                b = cl.cbase
                cv[b + C_BACKLOG_PACKETS] = n = q.backlog_packets
                cv[b + C_BACKLOG_BYTES] = q.backlog_bytes
                if n != cl.pooled:
                    self._pool_sync(cl, n)
                if pkt is None:
                    # The leaf said it had something and then had not (it dropped it, or is not
                    # work-conserving): move on, as htb_dequeue_tree does.
                    if n == 0:
                        self._deactivate(cl)
                    else:
                        sched.skip(cl)
                    self._ptr[key] = cl.idx + 1
                    continue
                if not n:
                    self._deactivate(cl)
                # Only the charge needs the shared lock: selection reads token state that other workers
                # may change at any time anyway (they can only make it smaller), like the kernel's lockless
                # mode checks; a race costs at most one packet of credit per worker.  The leaf's C lane
                # charges in C (the lock held for the arithmetic only); -1 (lock busy) leaves it to Python.
                lane = self._lanes.get(cl.name)
                if lane is None or lane.charge(key, pkt.size, now) < 0:
                    self._charge(cl, key, pkt.size, now)
                sched.charged(cl, now)
                return pkt
        finally:
            sched.end_dequeue()

    def _charge(self, cl: ClassState, key: int, size: int, now: float) -> None:
        """Account a packet of ``size`` bytes that leaf ``cl`` sends at ``key`` (level << 3 | prio).

        The DRR step of htb_dequeue_tree (the leaf's deficit at that level; the pointer stays on it while
        its deficit lasts), then htb_charge_class: the lender at ``level`` and its ancestors pay tokens,
        classes below it borrowed.  Takes the store's lock itself (directly, not through a context manager:
        this runs per packet)."""
        level = key >> 3
        d = cl.deficit[level] - size
        if d < 0:
            d += cl.quantum
            self._ptr[key] = cl.idx + 1
        else:
            self._ptr[key] = cl.idx
        cl.deficit[level] = d
        lock = self._lock
        held = False
        if lock is not None:
            held = lock.acquire(False) or lock.acquire(True, LOCK_TIMEOUT_S)  # uncontended: no deadline maths
            if not held:
                self.tokens.timeouts += 1  # a worker died holding it: charge anyway (see shared_tokens)
        try:
            vals = self._vals
            cv = self._cvals
            for c in cl.chain:
                b = c.base
                tc = vals[b + 2]
                diff = now - tc
                if diff >= 0.0:
                    if diff > MBUFFER:
                        diff = MBUFFER
                    new_tc = now
                elif tc == tc:  # another worker charged with a later clock reading: no credit, keep t_c
                    diff = 0.0
                    new_tc = tc
                else:  # fresh slot
                    vals[b] = c.buffer
                    vals[b + 1] = c.cbuffer
                    diff = 0.0
                    new_tc = now
                toks = vals[b] + diff
                if toks > c.buffer:
                    toks = c.buffer
                cb = c.cbase
                if c.level >= level:
                    if c.level == level:
                        cv[cb + C_LENDS] += 1
                    toks -= size * c.spb
                    if toks < TOKEN_FLOOR:
                        toks = TOKEN_FLOOR
                else:
                    cv[cb + C_BORROWS] += 1
                vals[b] = toks
                toks = vals[b + 1] + diff
                if toks > c.cbuffer:
                    toks = c.cbuffer
                toks -= size * c.cspb
                if toks < TOKEN_FLOOR:
                    toks = TOKEN_FLOOR
                vals[b + 1] = toks
                vals[b + 2] = new_tc
                cv[cb + C_BYTES] += size
                cv[cb + C_PACKETS] += 1
        finally:
            if held:
                lock.release()

    def peek(self, now: float) -> QueuedPacket | None:
        """What ``dequeue(now)`` would return (barring a leaf that drops on dequeue), without charging."""
        if not self._nactive:
            return None
        cl = self._sched.select(now)  # reads only: no lock (see dequeue)
        return None if cl is None else cl.q.peek(now)

    def next_event(self, now: float) -> float | None:
        """A time >= ``now`` at which ``dequeue`` may succeed, never after the first at which it will;
        ``None`` when empty.  Exact with the reference scheduler, unless another worker charged the shared
        buckets since its cached answer (then early); the row scheduler may answer earlier (a mode change
        that lets nothing go yet).  Early costs a wake-up: the caller finds nothing and asks again."""
        t = self._sched.next_event(now)
        if self._nactive:
            self._gate[0] = -math.inf if t is None else t  # the fast path may skip the queue until then
        return t

    def drain(self) -> list[QueuedPacket]:
        """Remove and return every held packet (drops not yet collected stay in :meth:`take_dropped`)."""
        out: list[QueuedPacket] = []
        for cl in self._classes.values():
            if cl.q is not None:
                out.extend(cl.q.drain())
                cl.active = False
                if cl.lazy:
                    cl.q = None
                self._set_backlog(cl)
        self._nactive = 0
        self._gate[0] = math.inf
        self._sched.rebuild([], self._last_now)
        return out

    def take_dropped(self) -> list[QueuedPacket]:
        """Packets dropped outside ``enqueue``'s return value; the caller must drop them.

        That is: what leaf qdiscs dropped inside ``dequeue`` (CoDel) and what
        :meth:`change` dropped (a shrunk leaf, a full fallback).  Call it after
        each ``dequeue`` round and after each ``change``.
        """
        out = self._dq_dropped
        if not out:
            return out  # the common case: nothing dropped, nothing allocated
        self._dq_dropped = []
        return out

    @property
    def backlog_packets(self) -> int:
        """Packets held (O(1): kept by every change of a leaf's backlog)."""
        return self.held

    @property
    def busy(self) -> bool:
        """Whether any leaf holds a packet (O(1), for the per-packet path)."""
        return self._nactive > 0

    @property
    def backlog_bytes(self) -> int:
        return sum(cl.q.backlog_bytes for cl in self._leaf_map.values() if cl.active)

    # -- introspection ---------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a class of this tree."""
        return name in self._classes

    def __len__(self) -> int:
        return len(self._classes)

    def slot_of(self, name: str) -> int:
        """The token slot of class ``name`` (-1 for a class this tree does not have)."""
        cl = self._classes.get(name)
        return cl.slot if cl is not None else -1

    def leaves(self) -> set[str]:
        return set(self._leaf_map)

    def is_leaf(self, name: str) -> bool:
        return name in self._leaf_map

    @property
    def classes(self) -> tuple[HTBClassParams, ...]:
        """The current configuration, in definition order."""
        return tuple(cl.params for cl in self._classes.values())

    @property
    def _order(self) -> list[ClassState]:
        """The classes' run-time state in definition order (for introspection and tests)."""
        return list(self._classes.values())

    def mode(self, name: str, now: float) -> str:
        """The class's own mode at ``now``: ``can_send``, ``may_borrow`` or ``cant_send``."""
        cl = self._classes.get(name)
        if cl is None:
            raise ValueError(f"mode: unknown class {name!r}")
        return self._mode(cl, now)

    def _mode(self, c: ClassState, now: float) -> str:
        return mode_name(self._vals, c, now)

    def leaf(self, name: str) -> Any | None:
        """The leaf qdisc of class ``name`` (None for an inner or unknown class, and for a FIFO leaf that holds
        nothing: it is built on its first packet)."""
        cl = self._classes.get(name)
        return cl.q if cl is not None else None

    def counter(self, name: str, field: int) -> int:
        """One counter of class ``name`` (a ``imqd.qdisc.counters.C_*`` field index)."""
        cl = self._classes.get(name)
        if cl is None:
            raise ValueError(f"counter: unknown class {name!r}")
        return int(self._cvals[cl.cbase + field])

    def class_stats(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per class counters and token state (tokens in seconds and bytes, projected to ``now``).

        Pass the caller's clock: without ``now`` the tokens are projected to the last time the Python
        code saw one (a change, a dequeue, a send_now that C left to Python), which the C fast path does
        not move."""
        return class_stats(self, self._last_now if now is None else now)
