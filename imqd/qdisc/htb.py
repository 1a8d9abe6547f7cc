"""Hierarchical token bucket, modelled on Linux ``net/sched/sch_htb.c``.

What is kept from the kernel, and why it differs where it does:

* Token state per class (``tokens``, ``ctokens``, ``t_c``) in *seconds*, like
  the kernel's nanoseconds: ``buffer = burst*8/rate``, ``cbuffer =
  cburst*8/ceil``, ``mbuffer`` = 60 s caps the credit of a long idle period.
  Charging on release is ``htb_charge_class`` / ``htb_accnt_tokens`` verbatim.
* Levels: leaves are level 0, an inner class at depth ``d`` is level ``7-d``
  (roots 7).  Dequeue serves the lowest level first, then the lowest prio,
  then DRR (per-leaf, per-level deficit and quantum, exactly as
  ``htb_dequeue_tree``) among the leaves eligible at that (level, prio).
* Modes are *not* cached in rows and wait queues as in the kernel: the token
  state may live in a store shared with other worker processes and change
  under us, so each dequeue computes, for every backlogged leaf, the level at
  which it can send by walking up its parent chain.  Only backlogged leaves
  are looked at, so the cost is O(backlogged leaves * depth).
* The DRR pointer per (level, prio) is a class index into the leaves kept in
  definition order (the kernel's rb-trees are ordered by classid), so it can
  never dangle when leaves go idle.  DRR is flat among the eligible leaves
  rather than hierarchical per inner class.
* Mode tests are written as time comparisons -- ``now >= t_c - tokens`` means
  ``tokens + (now - t_c) >= 0`` -- so :meth:`HTB.next_event` returns exactly
  the float at which :meth:`HTB.dequeue` will succeed: no rounding can wake a
  caller one ulp early and make it spin.

``__init__`` is "empty tree + :meth:`HTB.change`", like ``htb_init``: one
validated, all-or-nothing path configures the tree at start and at run time.

Packets leave the HTB three ways, and the caller owes each a verdict:
``dequeue`` (send), ``enqueue``'s return value and :meth:`HTB.take_dropped`
(drop), and :meth:`HTB.change`'s / :meth:`HTB.drain`'s return value (packets
handed back unscheduled: release them).
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Mapping, Sequence

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.leaves import LeafSpec, change_leaf, make_leaf
from imqd.qdisc.tokens import FIELDS_PER_SLOT, LOCK_TIMEOUT_S, LocalTokenStore, TokenStore

try:  # send_now's common case in C (imqd/qdisc/_htbfast.c); optional: without it the code below does it all
    from imqd.qdisc._htbfast import Lane
except ImportError:  # pragma: no cover - depends on whether the extension was compiled
    Lane = None

#: Whether the C fast path was compiled and imported (HTB(..., accelerate=False) turns it off per tree).
ACCELERATED = Lane is not None

MAX_DEPTH = 8  # TC_HTB_MAXDEPTH: levels 0..7
NUM_PRIO = 8  # TC_HTB_NUMPRIO
MBUFFER = 60.0  # seconds; cap on the credit of an idle period (kernel: 60 * NSEC_PER_SEC)
_TOKEN_FLOOR = 1e-9 - MBUFFER  # the kernel's "1 - mbuffer", in ns, expressed in seconds
_NO_KEY = MAX_DEPTH * NUM_PRIO  # "not eligible": greater than any level*8+prio
_NWC_POLL = 0.001  # re-poll delay for a leaf whose next_event claims "now" but peek says no

CAN_SEND, MAY_BORROW, CANT_SEND = "can_send", "may_borrow", "cant_send"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class HTBClassParams:
    """One class of the tree, as ``tc class add ... htb`` would describe it (rates in bit/s, sizes in bytes)."""

    name: str
    parent: str | None  # None = a root of this tree (several roots allowed)
    rate: float
    ceil: float
    burst: int
    cburst: int
    prio: int = 0
    quantum: int = 1514
    slot: int = -1  # index into the TokenStore; -1 = HTB assigns one (local store)
    leaf: LeafSpec = field(default_factory=LeafSpec)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"class {name!r}: name must be a non-empty string")
        if self.parent is not None and (not isinstance(self.parent, str) or not self.parent):
            raise ValueError(f"class {name!r}: parent must be None or a class name, got {self.parent!r}")
        if self.parent == name:
            raise ValueError(f"class {name!r}: parent: a class cannot be its own parent")
        if not _is_num(self.rate) or not (0 < self.rate < math.inf):
            raise ValueError(f"class {name!r}: rate must be a finite number > 0 (bit/s), got {self.rate!r}")
        if not _is_num(self.ceil) or not (0 < self.ceil < math.inf):
            raise ValueError(f"class {name!r}: ceil must be a finite number > 0 (bit/s), got {self.ceil!r}")
        if self.ceil < self.rate:
            raise ValueError(f"class {name!r}: ceil {self.ceil!r} is below rate {self.rate!r}")
        for fname in ("burst", "cburst", "quantum"):
            v = getattr(self, fname)
            if not _is_int(v) or v < 1:
                raise ValueError(f"class {name!r}: {fname} must be an int >= 1 (bytes), got {v!r}")
        if not _is_int(self.prio) or not (0 <= self.prio < NUM_PRIO):
            raise ValueError(f"class {name!r}: prio must be an int in 0..{NUM_PRIO - 1}, got {self.prio!r}")
        if not _is_int(self.slot) or self.slot < -1:
            raise ValueError(f"class {name!r}: slot must be an int >= -1, got {self.slot!r}")
        if not isinstance(self.leaf, LeafSpec):
            raise ValueError(f"class {name!r}: leaf must be a LeafSpec, got {self.leaf!r}")


class _Class:
    """Run-time state of one class; constants are precomputed so the per-packet paths only read them."""

    __slots__ = (
        "name", "params", "idx", "level", "prio", "quantum", "slot", "base",
        "buffer", "cbuffer", "spb", "cspb", "chain", "parent_name",
        "q", "spec", "wc", "take_dropped", "active", "deficit", "key", "passthrough",
        "bytes", "packets", "drops", "borrows", "lends",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.name = name
        self.q: Any = None
        self.spec: LeafSpec | None = None
        self.wc = True
        self.passthrough = 0
        self.take_dropped: Any = None
        self.active = False
        self.deficit = [0] * MAX_DEPTH
        self.key = _NO_KEY
        self.bytes = self.packets = self.drops = self.borrows = self.lends = 0
        self.chain: tuple[_Class, ...] = ()

    def set_params(self, p: HTBClassParams, idx: int, level: int, slot: int) -> None:
        self.params = p
        self.parent_name = p.parent
        self.idx = idx
        self.level = level
        self.prio = p.prio
        self.quantum = p.quantum
        self.slot = slot
        self.base = slot * FIELDS_PER_SLOT
        self.spb = 8.0 / p.rate  # seconds of rate-tokens per byte
        self.cspb = 8.0 / p.ceil
        self.buffer = p.burst * self.spb
        self.cbuffer = p.cburst * self.cspb

    def set_leaf(self, q: Any, spec: LeafSpec | None) -> None:
        self.q = q
        self.spec = spec
        self.wc = bool(getattr(q, "work_conserving", False)) if q is not None else True
        # packets up to this size may skip an empty leaf (send_now); 0 = never (the leaf keeps state per packet)
        self.passthrough = int(getattr(q, "passthrough_max", 0)) if q is not None else 0
        self.take_dropped = getattr(q, "take_dropped", None) if q is not None else None


_IDX = attrgetter("idx")


class HTB:
    """An HTB tree: classify elsewhere, then ``enqueue`` into a leaf, ``dequeue`` when ``next_event`` says."""

    def __init__(self, classes: Sequence[HTBClassParams], now: float, tokens: TokenStore | None = None,
                 accelerate: bool = True) -> None:
        self.tokens: TokenStore = tokens if tokens is not None else LocalTokenStore()
        self._vals = self.tokens.values
        self._locked = self.tokens.locked
        self._lock = self.tokens.lock  # None: private store, no locking on the per-packet path
        self._classes: dict[str, _Class] = {}
        self._order: list[_Class] = []
        self._leaf_map: dict[str, _Class] = {}
        self._active: list[_Class] = []  # backlogged leaves, sorted by idx
        self._ptr = [0] * _NO_KEY  # DRR pointer per level*8+prio: idx of the next leaf to serve
        self._dq_dropped: list[QueuedPacket] = []
        # next_event's last answer while nothing of ours changed since: time alone cannot make it
        # earlier, and charges by other workers only make the true answer later.
        self._ne_cache: float | None = None
        self._last_now = now
        self._accelerate = accelerate and ACCELERATED
        self._lanes: dict[str, Any] = {}  # leaf name -> its C Lane (send_now's fast path); empty without C
        dropped = self.change(classes, now)
        assert not dropped  # an empty tree holds nothing to give back

    # -- configuration ---------------------------------------------------------------

    def change(
        self, classes: Sequence[HTBClassParams], now: float, fallback: str | None = None
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
        plan = self._validate(classes, fallback)
        return self._commit(plan, now, fallback)

    def _validate(self, classes: Sequence[HTBClassParams], fallback: str | None) -> dict[str, Any]:
        """Check the new tree and prepare everything that can fail; mutate nothing."""
        if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
            raise ValueError(f"classes must be a sequence of HTBClassParams, got {classes!r}")
        params = list(classes)
        by_name: dict[str, HTBClassParams] = {}
        for p in params:
            if not isinstance(p, HTBClassParams):
                raise ValueError(f"classes: expected HTBClassParams, got {p!r}")
            if p.name in by_name:
                raise ValueError(f"class {p.name!r}: name: duplicate class name")
            by_name[p.name] = p
        children: dict[str, int] = {}
        for p in params:
            if p.parent is not None:
                if p.parent not in by_name:
                    raise ValueError(f"class {p.name!r}: parent {p.parent!r} is not a class of this tree")
                children[p.parent] = children.get(p.parent, 0) + 1
        depth: dict[str, int] = {}
        for p in params:
            path = []
            n: str | None = p.name
            while n is not None and n not in depth:
                if n in path:
                    raise ValueError(f"class {p.name!r}: parent: cycle through {' -> '.join(path + [n])}")
                path.append(n)
                n = by_name[n].parent
            d = -1 if n is None else depth[n]
            for m in reversed(path):
                d += 1
                depth[m] = d
        for p in params:
            # An inner class at depth d has level 7-d; level 0 is for leaves only (kernel: "tree is too deep").
            if p.name in children and depth[p.name] >= MAX_DEPTH - 1:
                raise ValueError(
                    f"class {p.name!r}: parent: tree too deep (inner classes may be at most {MAX_DEPTH - 1} deep)"
                )
        if fallback is not None and (fallback not in by_name or fallback in children):
            raise ValueError(f"fallback: {fallback!r} is not a leaf class of the new tree")

        # Slots: explicit ones are the caller's; survivors keep theirs; new ones get the lowest free.
        slot_of: dict[str, int] = {}
        owner: dict[int, str] = {}
        for p in params:
            if p.slot >= 0:
                if p.slot in owner:
                    raise ValueError(f"class {p.name!r}: slot {p.slot} is already used by class {owner[p.slot]!r}")
                owner[p.slot] = p.name
                slot_of[p.name] = p.slot
        fresh: set[int] = set()
        for p in params:
            old = self._classes.get(p.name)
            if p.slot < 0 and old is not None and old.slot not in owner:
                owner[old.slot] = p.name
                slot_of[p.name] = old.slot
        nxt = 0
        for p in params:
            if p.name not in slot_of:
                while nxt in owner:
                    nxt += 1
                owner[nxt] = p.name
                slot_of[p.name] = nxt
                fresh.add(nxt)  # HTB picked it: whatever a removed class left there is not ours
        if owner:
            self.tokens.ensure(max(owner) + 1)  # raises ValueError if a fixed-size store is too small

        # Build every new or re-parameterised leaf now, so bad leaf parameters fail before any change.
        new_leaves: dict[str, Any] = {}
        for p in params:
            if p.name in children:
                continue
            old = self._classes.get(p.name)
            if old is not None and old.q is not None and old.spec == p.leaf:
                continue
            try:
                new_leaves[p.name] = make_leaf(p.leaf)
            except ValueError as exc:
                raise ValueError(f"class {p.name!r}: leaf: {exc}") from None
        return {
            "params": params,
            "children": children,
            "depth": depth,
            "slot_of": slot_of,
            "fresh": fresh,
            "new_leaves": new_leaves,
        }

    def _commit(self, plan: dict[str, Any], now: float, fallback: str | None) -> list[QueuedPacket]:
        params: list[HTBClassParams] = plan["params"]
        children: dict[str, int] = plan["children"]
        depth: dict[str, int] = plan["depth"]
        slot_of: dict[str, int] = plan["slot_of"]
        new_leaves: dict[str, Any] = plan["new_leaves"]
        returned: list[QueuedPacket] = []
        orphans: list[QueuedPacket] = []
        dropped = self._dq_dropped  # drops are reported through take_dropped(), never lost
        old_classes = self._classes

        classes: dict[str, _Class] = {}
        order: list[_Class] = []
        for idx, p in enumerate(params):
            cl = old_classes.get(p.name) or _Class(p.name)
            is_leaf = p.name not in children
            cl.set_params(p, idx, 0 if is_leaf else MAX_DEPTH - 1 - depth[p.name], slot_of[p.name])
            old_q = cl.q
            if not is_leaf:
                if old_q is not None:  # a leaf became an inner class: its packets have to go elsewhere
                    orphans.extend(old_q.drain())
                    self._collect_dropped(cl, dropped)
                cl.set_leaf(None, None)
                cl.deficit = [0] * MAX_DEPTH
            elif p.name in new_leaves:
                if old_q is None:
                    cl.set_leaf(new_leaves[p.name], p.leaf)
                    cl.deficit = [0] * MAX_DEPTH
                else:
                    assert cl.spec is not None
                    res = None
                    if cl.spec.kind == p.leaf.kind:
                        try:
                            res = change_leaf(old_q, p.leaf)
                        except (ValueError, TypeError):
                            res = None  # validated by make_leaf already: rebuild rather than fail half-way
                    if res is None:  # different kind (or no in-place change): move the packets over
                        self._collect_dropped(cl, dropped)
                        newq = new_leaves[p.name]
                        for pkt in old_q.drain():
                            d = newq.enqueue(pkt, now)
                            if d:
                                cl.drops += len(d)
                                dropped.extend(d)
                        cl.set_leaf(newq, p.leaf)
                    else:
                        cl.drops += len(res)
                        dropped.extend(res)
                        self._collect_dropped(cl, dropped)
                        cl.set_leaf(old_q, p.leaf)
            classes[p.name] = cl
            order.append(cl)
        for name, cl in old_classes.items():
            if name not in classes and cl.q is not None:
                orphans.extend(cl.q.drain())
                self._collect_dropped(cl, dropped)

        for cl in order:
            chain = [cl]
            while chain[-1].parent_name is not None:
                chain.append(classes[chain[-1].parent_name])
            cl.chain = tuple(chain)

        vals = self._vals = self.tokens.values
        with self._locked():
            for s in plan["fresh"]:
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
        self._order = order
        self._leaf_map = {cl.name: cl for cl in order if cl.q is not None}
        active = [cl for cl in order if cl.q is not None and cl.q.backlog_packets > 0]
        for cl in order:
            cl.active = False
        for cl in active:
            cl.active = True
        self._active = active
        self._ptr = [0] * _NO_KEY
        self._last_now = now
        self._ne_cache = None
        self._lanes.clear()  # in place: DirectionTree keeps this dict (see lanes)
        if self._accelerate:
            self._lanes.update(self._build_lanes())

        if orphans:
            orphans.sort(key=lambda pk: pk.enqueued_at)  # stable: keeps each queue's order
            if fallback is None:
                returned.extend(orphans)
            else:
                for pkt in orphans:
                    dropped.extend(self.enqueue(pkt, fallback, now))
        return returned

    def _build_lanes(self) -> dict[str, Any]:
        """One C Lane per leaf that packets may skip (send_now), over this tree's current state objects.

        Rebuilt by every change: a lane holds the leaf's deficit list, the DRR pointer list and the list of
        backlogged leaves (so between changes those three are only ever changed in place), the token
        store's values and lock, and the constants of the classes on the leaf's path."""
        assert Lane is not None
        lanes = {}
        for cl in self._order:
            if cl.q is None or cl.passthrough <= 0:
                continue
            spec = tuple((c.base, c.level, c.buffer, c.cbuffer, c.spb, c.cspb) for c in cl.chain)
            try:
                lanes[cl.name] = Lane(self._vals, spec, cl.chain, cl.prio, cl.quantum, cl.idx, cl.passthrough,
                                      cl.deficit, self._ptr, self._lock, self._active)
            except (TypeError, ValueError, OverflowError):
                pass  # what C cannot hold (a store that is no buffer of doubles, a quantum beyond a C long):
                # this leaf stays with the Python code -- never let change() fail after the tree is in place
        return lanes

    @property
    def accelerated(self) -> bool:
        """Whether send_now runs in C for this tree."""
        return self._accelerate

    @property
    def lanes(self) -> Mapping[str, Any]:
        """Leaf name -> C Lane, for callers that skip :meth:`send_now`'s Python frame on the per-packet path.

        ``lane.send(size, now)`` returns 1 (sent: what ``send_now`` returning True means), 0 (``send_now``
        would return False) or -1 (call :meth:`send_now_reference`).  The same mapping object for the tree's lifetime,
        kept current by every change; empty when the C extension is not available or turned off."""
        return self._lanes

    @staticmethod
    def _collect_dropped(cl: _Class, out: list[QueuedPacket]) -> None:
        if cl.take_dropped is not None:
            d = cl.take_dropped()
            cl.drops += len(d)
            out.extend(d)

    # -- data path -------------------------------------------------------------------

    def enqueue(self, pkt: QueuedPacket, leaf: str, now: float) -> list[QueuedPacket]:
        """Queue ``pkt`` in leaf class ``leaf``; return what its leaf qdisc dropped (maybe ``pkt``)."""
        cl = self._leaf_map.get(leaf) or self._no_leaf(leaf, "enqueue")
        dropped = cl.q.enqueue(pkt, now)
        if dropped:
            cl.drops += len(dropped)
        if not cl.active:
            if cl.q.backlog_packets:
                cl.active = True
                insort(self._active, cl, key=_IDX)
                self._ne_cache = None
        elif not cl.wc:  # the leaf's own next event may have moved
            self._ne_cache = None
        return dropped

    def _no_leaf(self, leaf: str, what: str) -> _Class:
        if leaf in self._classes:
            raise ValueError(f"{what}: class {leaf!r} is an inner class, not a leaf")
        raise ValueError(f"{what}: unknown class {leaf!r}")

    def send_now(self, leaf: str, size: int, now: float) -> bool:
        """Let a packet of ``size`` bytes through leaf ``leaf`` at once if HTB would dequeue it at once.

        The worker's fast path.  When no leaf is backlogged, ``enqueue`` followed by ``dequeue`` hands the
        packet straight back if its leaf qdisc passes it through unchanged (a FIFO within its limits) and
        the class may send at ``now`` (on its own tokens or by borrowing).  ``send_now`` does exactly what
        that pair would do -- the same DRR deficit and pointer update, the same charge up the tree -- without
        queueing anything.  Returns False and changes nothing otherwise; the caller then ``enqueue``s.
        """
        lane = self._lanes.get(leaf)
        if lane is not None:  # (it answers 0 itself while a leaf is backlogged)
            sent = lane.send(size, now)  # the same steps in C; -1: a case it leaves to the reference
            if sent >= 0:
                return sent == 1
        return self.send_now_reference(leaf, size, now)

    def send_now_reference(self, leaf: str, size: int, now: float) -> bool:
        """:meth:`send_now` in Python: the reference the C lanes are held to, and what does their -1 cases."""
        if self._active:
            return False
        cl = self._leaf_map.get(leaf) or self._no_leaf(leaf, "send_now")
        if size > cl.passthrough:
            return False
        vals = self._vals
        key = _NO_KEY
        for c in cl.chain:  # as _select, for the only leaf that would be backlogged
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
        if key == _NO_KEY:
            return False
        self._last_now = now
        self._charge(cl, key, size, now)
        return True

    def _select(self, now: float, skip: list[_Class] | None) -> _Class | None:
        """The leaf to serve at ``now`` (call with the token lock held); sets its ``key``."""
        vals = self._vals
        best = _NO_KEY
        active = self._active
        for cl in active:
            key = _NO_KEY
            for c in cl.chain:
                b = c.base
                tc = vals[b + 2]
                if now < tc - vals[b + 1]:  # ctokens + diff < 0: CANT_SEND
                    break
                if now >= tc - vals[b]:  # tokens + diff >= 0: CAN_SEND
                    key = (c.level << 3) | cl.prio
                    break
                if tc != tc:  # a slot made fresh by another worker: it starts full
                    self._init_slot(c, now)
                    key = (c.level << 3) | cl.prio
                    break
                # MAY_BORROW: ask the parent
            if key <= best and key != _NO_KEY:
                if (not cl.wc and cl.q.peek(now) is None) or (skip is not None and cl in skip):
                    key = _NO_KEY
                elif key < best:
                    best = key
            cl.key = key
        if best == _NO_KEY:
            return None
        p = self._ptr[best]
        first = None
        for cl in active:
            if cl.key == best:
                if cl.idx >= p:
                    return cl
                if first is None:
                    first = cl
        return first

    def _init_slot(self, c: _Class, now: float) -> None:
        vals = self._vals
        b = c.base
        vals[b] = c.buffer
        vals[b + 1] = c.cbuffer
        vals[b + 2] = now

    def dequeue(self, now: float) -> QueuedPacket | None:
        """Release the next packet HTB allows at ``now`` and charge it up the tree; ``None`` if none may go."""
        if not self._active:
            return None
        self._last_now = now
        skip: list[_Class] | None = None
        while True:
            cl = self._select(now, skip)
            if cl is None:
                return None
            q = cl.q
            pkt = q.dequeue(now)
            if cl.take_dropped is not None:
                self._collect_dropped(cl, self._dq_dropped)
            key = cl.key
            self._ne_cache = None
            if pkt is None:
                # The leaf said it had something and then had not (it dropped it, or is not
                # work-conserving): move on, as htb_dequeue_tree does.
                if q.backlog_packets == 0:
                    cl.active = False
                    self._active.remove(cl)
                else:
                    skip = (skip or []) + [cl]
                self._ptr[key] = cl.idx + 1
                continue
            if not q.backlog_packets:
                cl.active = False
                self._active.remove(cl)
            # Only the charge needs the shared lock: selection reads token state that other workers
            # may change at any time anyway (they can only make it smaller), like the kernel's lockless
            # mode checks; a race costs at most one packet of credit per worker.
            self._charge(cl, key, pkt.size, now)
            return pkt

    def _charge(self, cl: _Class, key: int, size: int, now: float) -> None:
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
                if c.level >= level:
                    if c.level == level:
                        c.lends += 1
                    toks -= size * c.spb
                    if toks < _TOKEN_FLOOR:
                        toks = _TOKEN_FLOOR
                else:
                    c.borrows += 1
                vals[b] = toks
                toks = vals[b + 1] + diff
                if toks > c.cbuffer:
                    toks = c.cbuffer
                toks -= size * c.cspb
                if toks < _TOKEN_FLOOR:
                    toks = _TOKEN_FLOOR
                vals[b + 1] = toks
                vals[b + 2] = new_tc
                c.bytes += size
                c.packets += 1
        finally:
            if held:
                lock.release()

    def peek(self, now: float) -> QueuedPacket | None:
        """What ``dequeue(now)`` would return (barring a leaf that drops on dequeue), without charging."""
        if not self._active:
            return None
        cl = self._select(now, None)  # reads only: no lock (see dequeue)
        return None if cl is None else cl.q.peek(now)

    def next_event(self, now: float) -> float | None:
        """Earliest time >= ``now`` at which ``dequeue`` may succeed; ``None`` when empty.

        For each backlogged leaf: the earliest time some class A on its path
        has ``tokens >= 0`` while every class from the leaf up to A has
        ``ctokens >= 0``, assuming no one charges meanwhile (charges by other
        workers only make it later), and not before its leaf's own next_event.
        The answer is cached until this HTB's state changes (a leaf becomes
        backlogged, a non-work-conserving leaf gets a packet, a release, a
        change), so a worker may call it after every arrival at no cost.
        """
        active = self._active
        if not active:
            return None
        cached = self._ne_cache
        if cached is not None and now < cached:
            return cached
        vals = self._vals
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
                    t = now + _NWC_POLL  # the leaf said "now" but cannot: poll it soon
            if t <= now:
                return now
            if t < best:
                best = t
        if best == inf:
            return None
        self._ne_cache = best
        return best

    def drain(self) -> list[QueuedPacket]:
        """Remove and return every held packet (drops not yet collected stay in :meth:`take_dropped`)."""
        out: list[QueuedPacket] = []
        for cl in self._order:
            if cl.q is not None:
                out.extend(cl.q.drain())
                cl.active = False
        self._active.clear()  # in place: the lanes watch this list
        self._ne_cache = None
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
        return sum(cl.q.backlog_packets for cl in self._active)

    @property
    def busy(self) -> bool:
        """Whether any leaf holds a packet (O(1), for the per-packet path)."""
        return bool(self._active)

    @property
    def backlog_bytes(self) -> int:
        return sum(cl.q.backlog_bytes for cl in self._active)

    # -- introspection ---------------------------------------------------------------

    def leaves(self) -> set[str]:
        return set(self._leaf_map)

    def is_leaf(self, name: str) -> bool:
        return name in self._leaf_map

    @property
    def classes(self) -> tuple[HTBClassParams, ...]:
        """The current configuration, in definition order."""
        return tuple(cl.params for cl in self._order)

    def mode(self, name: str, now: float) -> str:
        """The class's own mode at ``now``: ``can_send``, ``may_borrow`` or ``cant_send``."""
        cl = self._classes.get(name)
        if cl is None:
            raise ValueError(f"mode: unknown class {name!r}")
        return self._mode(cl, now)

    def _mode(self, c: _Class, now: float) -> str:
        vals = self._vals
        b = c.base
        tc = vals[b + 2]
        if tc != tc:
            return CAN_SEND
        if now < tc - vals[b + 1]:
            return CANT_SEND
        if now >= tc - vals[b]:
            return CAN_SEND
        return MAY_BORROW

    def leaf(self, name: str) -> Any | None:
        """The leaf qdisc of class ``name`` (None for an inner or unknown class)."""
        cl = self._classes.get(name)
        return cl.q if cl is not None else None

    def class_stats(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per class counters and token state (tokens in seconds and bytes, projected to ``now``).

        Pass the caller's clock: without ``now`` the tokens are projected to the last time the Python
        code saw one (a change, a dequeue, a send_now that C left to Python), which the C fast path does
        not move."""
        if now is None:
            now = self._last_now
        vals = self._vals
        backlog: dict[str, list[int]] = {cl.name: [0, 0] for cl in self._order}
        for cl in self._order:
            if cl.q is not None:
                n, nb = cl.q.backlog_packets, cl.q.backlog_bytes
                for c in cl.chain:
                    backlog[c.name][0] += n
                    backlog[c.name][1] += nb
        out: dict[str, dict[str, Any]] = {}
        with self._locked():
            for cl in self._order:
                b = cl.base
                tc = vals[b + 2]
                diff = min(max(now - tc, 0.0), MBUFFER) if tc == tc else 0.0
                toks = min(vals[b] + diff, cl.buffer) if tc == tc else cl.buffer
                ctoks = min(vals[b + 1] + diff, cl.cbuffer) if tc == tc else cl.cbuffer
                st: dict[str, Any] = {
                    "parent": cl.parent_name,
                    "level": cl.level,
                    "prio": cl.prio,
                    "rate": cl.params.rate,
                    "ceil": cl.params.ceil,
                    "slot": cl.slot,
                    "bytes": cl.bytes,
                    "packets": cl.packets,
                    "drops": cl.drops,
                    "backlog_packets": backlog[cl.name][0],
                    "backlog_bytes": backlog[cl.name][1],
                    "borrows": cl.borrows,
                    "lends": cl.lends,
                    "tokens": toks,
                    "ctokens": ctoks,
                    "tokens_bytes": toks / cl.spb,
                    "ctokens_bytes": ctoks / cl.cspb,
                    "mode": self._mode(cl, now),
                    "leaf": None,
                }
                if cl.q is not None:
                    stats = getattr(cl.q, "stats", None)
                    st["leaf"] = (
                        stats()
                        if stats is not None
                        else {
                            "kind": cl.spec.kind if cl.spec else None,
                            "backlog_packets": cl.q.backlog_packets,
                            "backlog_bytes": cl.q.backlog_bytes,
                        }
                    )
                out[cl.name] = st
        return out
