"""SFQ: stochastic fair queueing, DRR over flow-hash buckets (the kernel's sch_sfq, without perturbation).

Packets go to one of ``flows`` buckets by ``pkt.flow % flows``.  Buckets with
packets are served round robin, each sending up to ``quantum`` bytes per
turn (deficit round robin, so flows of big and small packets get equal
*bytes*).  When the qdisc holds more than ``limit`` packets, the newest
packet of the longest bucket is dropped, as sch_sfq does: the flow hogging
the buffer pays for the overflow.

Finding the longest bucket is O(1): :class:`DepthIndex` keeps buckets grouped
by length like sch_sfq's ``dep[]`` lists.  Every operation is O(1) per packet.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable
from operator import attrgetter
from typing import Any, Generic, TypeVar

from imqd.qdisc.base import CountedBacklog, QueuedPacket
from imqd.qdisc.leaves import LeafSpec, check_params, register_leaf

T = TypeVar("T", bound=Hashable)

DEFAULTS: dict[str, Any] = {"flows": 1024, "quantum": 1514, "limit": 127}
_MAX_FLOWS = 65536


class DepthIndex(Generic[T]):
    """Queues grouped by their length, so that a longest one is found in O(1).

    Callers report every length change with :meth:`moved`; only one queue
    changes at a time, so the running maximum moves by at most a step.
    """

    __slots__ = ("_by_depth", "max_depth")

    def __init__(self) -> None:
        self._by_depth: list[set[T]] = [set()]  # index 0 unused: empty queues are not tracked
        self.max_depth = 0

    def moved(self, item: T, old: int, new: int) -> None:
        """``item``'s length went from ``old`` to ``new``."""
        bd = self._by_depth
        if old:
            bd[old].discard(item)
        if new:
            if new >= len(bd):
                bd.extend(set() for _ in range(new + 1 - len(bd)))
            bd[new].add(item)
            if new > self.max_depth:
                self.max_depth = new
                return
        md = self.max_depth
        while md and not bd[md]:
            md -= 1
        self.max_depth = md

    def take_longest(self) -> T | None:
        """Remove and return one longest item; the caller must then report its new length with ``moved``.

        ``set.pop`` resumes where the last pop stopped, so repeated takes stay O(1).
        """
        md = self.max_depth
        if not md:
            return None
        item = self._by_depth[md].pop()
        self._by_depth[md].add(item)  # ``moved(item, md, ...)`` discards it right after
        return item

    def clear(self) -> None:
        self._by_depth = [set()]
        self.max_depth = 0


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ValueError(f"sfq: {name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


class _Slot:
    """One hash bucket: its FIFO, byte count and DRR allotment."""

    __slots__ = ("q", "bytes", "allot", "linked", "index", "drops")

    def __init__(self, index: int) -> None:
        self.q: deque[QueuedPacket] = deque()
        self.bytes = 0
        self.allot = 0
        self.linked = False  # on the round-robin list (may be empty after an overflow drop, unlinked lazily)
        self.index = index
        self.drops = 0


_bytes_of = attrgetter("bytes")


class Sfq(CountedBacklog):
    """The sfq leaf.  Parameters: ``flows`` (buckets, 1024), ``quantum`` (bytes, 1514),
    ``limit`` (packets in total, 127 like the kernel)."""

    __slots__ = ("nflows", "quantum", "limit", "_slots", "_active", "_depth", "_qlen", "_bytes", "drops")

    #: A non-empty SFQ always has a packet to send.
    work_conserving = True

    def __init__(
        self, flows: int = DEFAULTS["flows"], quantum: int = DEFAULTS["quantum"], limit: int = DEFAULTS["limit"]
    ) -> None:
        self._active: deque[_Slot] = deque()
        self._depth: DepthIndex[_Slot] = DepthIndex()
        self._slots: list[_Slot | None] = []
        self._qlen = 0
        self._bytes = 0
        self.drops = 0
        self.nflows = 0
        self._configure(flows, quantum, limit)

    @classmethod
    def from_spec(cls, spec: LeafSpec) -> Sfq:
        return cls(**check_params(spec, DEFAULTS))

    def _configure(self, flows: int, quantum: int, limit: int) -> None:
        flows = _check_int("flows", flows, 1, _MAX_FLOWS)
        quantum = _check_int("quantum", quantum, 1, 1 << 31)
        limit = _check_int("limit", limit, 1, 1 << 31)
        self.quantum = quantum
        self.limit = limit
        if flows != self.nflows:
            held = [p for s in self._active for p in s.q]
            self.nflows = flows
            self._slots = [None] * flows
            self._active.clear()
            self._depth.clear()
            self._qlen = self._bytes = 0
            for p in held:
                self._add(p)

    def _add(self, pkt: QueuedPacket) -> None:
        idx = pkt.flow % self.nflows
        slot = self._slots[idx]
        if slot is None:
            slot = self._slots[idx] = _Slot(idx)
        q = slot.q
        q.append(pkt)
        n = len(q)
        self._depth.moved(slot, n - 1, n)
        slot.bytes += pkt.size
        self._bytes += pkt.size
        self._qlen += 1
        if not slot.linked:
            slot.linked = True
            slot.allot = self.quantum
            self._active.append(slot)

    def _drop_longest(self) -> QueuedPacket | None:
        slot = self._depth.take_longest()
        if slot is None:
            return None
        q = slot.q
        pkt = q.pop()  # newest packet of the longest flow (sfq_drop)
        n = len(q)
        self._depth.moved(slot, n + 1, n)
        slot.bytes -= pkt.size
        slot.drops += 1
        self._bytes -= pkt.size
        self._qlen -= 1
        self.drops += 1
        return pkt

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        self._add(pkt)
        if self._qlen <= self.limit:
            return []
        return [self._drop_longest()]  # type: ignore[list-item]

    def _head_slot(self) -> _Slot | None:
        """Rotate the round robin to the slot that sends next (DRR), unlinking empty slots."""
        active = self._active
        quantum = self.quantum
        while active:
            slot = active[0]
            if not slot.q:
                active.popleft()
                slot.linked = False
            elif slot.allot <= 0:
                slot.allot += quantum
                active.rotate(-1)
            else:
                return slot
        return None

    def dequeue(self, now: float) -> QueuedPacket | None:
        slot = self._head_slot()
        if slot is None:
            return None
        q = slot.q
        pkt = q.popleft()
        n = len(q)
        self._depth.moved(slot, n + 1, n)
        size = pkt.size
        slot.bytes -= size
        slot.allot -= size
        self._bytes -= size
        self._qlen -= 1
        if not n:
            self._active.popleft()
            slot.linked = False
        return pkt

    def peek(self, now: float) -> QueuedPacket | None:
        slot = self._head_slot()
        return slot.q[0] if slot is not None else None

    def next_event(self, now: float) -> float | None:
        return now if self._qlen else None

    def drain(self) -> list[QueuedPacket]:
        out: list[QueuedPacket] = []
        for slot in self._active:
            out.extend(slot.q)
            slot.q.clear()
            slot.bytes = 0
            slot.linked = False
        self._active.clear()
        self._depth.clear()
        self._qlen = self._bytes = 0
        return out

    def change(self, spec: LeafSpec) -> list[QueuedPacket]:
        """Apply ``spec`` (missing parameters take their defaults); drop from the longest flows down to ``limit``."""
        self._configure(**{**DEFAULTS, **check_params(spec, DEFAULTS)})
        dropped: list[QueuedPacket] = []
        while self._qlen > self.limit:
            dropped.append(self._drop_longest())  # type: ignore[arg-type]
        return dropped


    def stats(self, top: int = 10) -> dict[str, Any]:
        """Counters plus the ``top`` buckets by backlog (one pass over the active buckets)."""
        fat = heapq.nlargest(top, (s for s in self._active if s.q), key=_bytes_of)
        return {
            "kind": "sfq",
            "backlog_packets": self._qlen,
            "backlog_bytes": self._bytes,
            "drops": self.drops,
            "active_flows": sum(1 for s in self._active if s.q),
            "flows": self.nflows,
            "quantum": self.quantum,
            "limit": self.limit,
            "top_flows": [{"flow": s.index, "packets": len(s.q), "bytes": s.bytes, "drops": s.drops} for s in fat],
        }


def _make(spec: LeafSpec) -> Sfq:
    return Sfq.from_spec(spec)


register_leaf("sfq", _make)

__all__ = ["DepthIndex", "Sfq"]
