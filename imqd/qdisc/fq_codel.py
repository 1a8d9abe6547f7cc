"""fq_codel: per-flow CoDel queues served by DRR with new-flow priority (RFC 8290).

Modelled on Linux net/sched/sch_fq_codel.c:

* packets go to one of ``flows`` buckets by ``pkt.flow % flows`` (the worker's
  5-tuple hash; several flows may share a bucket, hence "stochastic");
* a bucket that was idle joins the *new* list with a deficit of ``quantum``;
  new flows are served before old ones, which is what gives sparse flows
  (DNS, ping, TCP handshakes, VoIP) their low delay next to bulk transfers;
* a flow whose deficit is used up moves to the tail of the *old* list; a new
  flow that runs empty goes to the old list once more before it is forgotten,
  so a flow cannot stay "new" for ever by emptying its queue;
* each bucket is a CoDel queue (:mod:`imqd.qdisc.codel`) keyed on
  ``pkt.enqueued_at``, which the caller sets when the packet enters the shaper;
* on overflow (more than ``limit`` packets) packets are dropped from the head
  of the fattest flow (most bytes), up to ``drop_batch_size`` packets or half
  of that flow's bytes at once, to amortise the search like the kernel.

Not implemented: ECN marking (we can only drop), ``memory_limit`` (we do not
know skb truesize), ``ce_threshold``.

Per packet: enqueue is O(1); dequeue is O(1) plus the CoDel drops it makes;
an overflow costs one scan of the flows that have packets (at most ``flows``)
per batch of up to ``drop_batch_size`` drops.  Packets CoDel drops inside
``dequeue``/``peek`` are collected with :meth:`FqCodel.take_dropped`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from itertools import chain
from operator import attrgetter
from typing import Any

from imqd.qdisc.base import CountedBacklog, QueuedPacket
from imqd.qdisc.codel import Codel, CodelState
from imqd.qdisc.leaves import LeafSpec, check_params, register_leaf

DEFAULTS: dict[str, Any] = {
    "target": 0.005,
    "interval": 0.1,
    "limit": 10240,
    "flows": 1024,
    "quantum": 1514,
    "drop_batch_size": 64,
}
_MAX_FLOWS = 65536
_MIN_QUANTUM = 256  # like the kernel: smaller quanta only cost CPU
_bytes_of = attrgetter("bytes")


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"fq_codel: {name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ValueError(f"fq_codel: {name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


class _Flow(CodelState):
    """One bucket: a FIFO with its CoDel state, DRR deficit and list membership."""

    __slots__ = ("q", "bytes", "deficit", "linked", "index")

    def __init__(self, index: int) -> None:
        super().__init__()
        self.q: deque[QueuedPacket] = deque()
        self.bytes = 0
        self.deficit = 0
        self.linked = False  # on the new or the old list (the kernel's non-empty flowchain)
        self.index = index


class FqCodel(CountedBacklog):
    """The fq_codel leaf.  Parameters (all optional):

    ``target`` (s, 0.005), ``interval`` (s, 0.1), ``limit`` (packets, 10240),
    ``flows`` (buckets, 1024), ``quantum`` (bytes, 1514, at least 256),
    ``drop_batch_size`` (packets dropped at most per overflow, 64).
    """

    __slots__ = (
        "codel", "limit", "nflows", "quantum", "drop_batch_size",
        "_flows", "_new", "_old", "_qlen", "_bytes", "_dropped", "_peeked", "_now",
        "overlimit_drops", "new_flow_count", "last_sojourn",
    )  # fmt: skip

    #: A non-empty fq_codel dequeues a packet unless CoDel dropped everything it held.
    work_conserving = True

    def __init__(
        self,
        target: float = DEFAULTS["target"],
        interval: float = DEFAULTS["interval"],
        limit: int = DEFAULTS["limit"],
        flows: int = DEFAULTS["flows"],
        quantum: int = DEFAULTS["quantum"],
        drop_batch_size: int = DEFAULTS["drop_batch_size"],
    ) -> None:
        self.codel = Codel()
        self._new: deque[_Flow] = deque()
        self._old: deque[_Flow] = deque()
        self._qlen = 0
        self._bytes = 0
        self._dropped: list[QueuedPacket] = []
        self._peeked: QueuedPacket | None = None
        self._now = 0.0
        self.overlimit_drops = 0
        self.new_flow_count = 0
        self.last_sojourn = 0.0
        self.nflows = 0
        self._flows: list[_Flow | None] = []
        self._configure(target, interval, limit, flows, quantum, drop_batch_size)

    @classmethod
    def from_spec(cls, spec: LeafSpec) -> FqCodel:
        return cls(**check_params(spec, DEFAULTS))

    def _configure(
        self, target: float, interval: float, limit: int, flows: int, quantum: int, drop_batch_size: int
    ) -> None:
        """Validate everything first, then apply: a bad value changes nothing."""
        target = _check_seconds("target", target)
        interval = _check_seconds("interval", interval)
        limit = _check_int("limit", limit, 1, 1 << 31)
        flows = _check_int("flows", flows, 1, _MAX_FLOWS)
        quantum = _check_int("quantum", quantum, 1, 1 << 31)
        drop_batch_size = _check_int("drop_batch_size", drop_batch_size, 1, 1 << 31)
        self.codel.target = target
        self.codel.interval = interval
        self.limit = limit
        self.quantum = max(_MIN_QUANTUM, quantum)
        self.drop_batch_size = drop_batch_size
        if flows != self.nflows:
            self._rehash(flows)

    def _rehash(self, nflows: int) -> None:
        """Switch to ``nflows`` buckets, moving queued packets (per-flow order is kept; CoDel state is not)."""
        held = [p for f in chain(self._new, self._old) for p in f.q]
        self.nflows = nflows
        self._flows = [None] * nflows
        self._new.clear()
        self._old.clear()
        self._qlen = self._bytes = 0
        for p in held:
            self._add(p)
        if self._peeked is not None:
            self._qlen += 1
            self._bytes += self._peeked.size

    # -- data path ---------------------------------------------------------------------

    def _add(self, pkt: QueuedPacket) -> _Flow:
        idx = pkt.flow % self.nflows
        flow = self._flows[idx]
        if flow is None:
            flow = self._flows[idx] = _Flow(idx)
        flow.q.append(pkt)
        flow.bytes += pkt.size
        self._bytes += pkt.size
        self._qlen += 1
        if not flow.linked:
            flow.linked = True
            self._new.append(flow)
            self.new_flow_count += 1
            flow.deficit = self.quantum
        return flow

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        self._now = now
        self._add(pkt)
        if self._qlen <= self.limit:
            return []
        dropped: list[QueuedPacket] = []
        self._drop_fattest(self.drop_batch_size, dropped)
        self.overlimit_drops += len(dropped)
        return dropped

    def _drop_fattest(self, max_packets: int, dropped: list[QueuedPacket]) -> int:
        """Drop from the head of the flow with most bytes: up to ``max_packets`` or half its bytes."""
        flow = max((f for f in chain(self._new, self._old) if f.q), key=_bytes_of, default=None)
        if flow is None:
            return 0
        threshold = flow.bytes >> 1
        q = flow.q
        n = 0
        gone = 0
        while q:
            p = q.popleft()
            dropped.append(p)
            gone += p.size
            n += 1
            if n >= max_packets or gone >= threshold:
                break
        flow.count += n  # tell CoDel to drop harder on this flow too
        flow.bytes -= gone
        self._bytes -= gone
        self._qlen -= n
        return n

    def _dequeue(self, now: float) -> QueuedPacket | None:
        new = self._new
        old = self._old
        codel = self.codel
        dropped = self._dropped
        while True:
            if new:
                head = new
            elif old:
                head = old
            else:
                return None
            flow = head[0]
            if flow.deficit <= 0:
                flow.deficit += self.quantum
                head.popleft()
                old.append(flow)
                continue
            ndrop = len(dropped)
            pkt = codel.dequeue(flow, flow.q, self._bytes, now, dropped)
            if len(dropped) != ndrop:
                gone = 0
                for p in dropped[ndrop:]:
                    gone += p.size
                flow.bytes -= gone
                self._bytes -= gone
                self._qlen -= len(dropped) - ndrop
            if pkt is None:
                head.popleft()
                if head is new and old:
                    old.append(flow)  # one pass through old flows before it may count as new again
                else:
                    flow.linked = False
                continue
            size = pkt.size
            flow.bytes -= size
            self._bytes -= size
            self._qlen -= 1
            flow.deficit -= size
            self.last_sojourn = flow.ldelay
            return pkt

    def dequeue(self, now: float) -> QueuedPacket | None:
        self._now = now
        pkt = self._peeked
        if pkt is not None:
            self._peeked = None
            self._qlen -= 1
            self._bytes -= pkt.size
            return pkt
        return self._dequeue(now)

    def peek(self, now: float) -> QueuedPacket | None:
        """CoDel decides at dequeue, so peeking dequeues and keeps the packet aside (qdisc_peek_dequeued)."""
        pkt = self._peeked
        if pkt is None:
            self._now = now
            pkt = self._dequeue(now)
            if pkt is not None:
                self._peeked = pkt
                self._qlen += 1  # still ours until dequeued
                self._bytes += pkt.size
        return pkt

    def next_event(self, now: float) -> float | None:
        return now if self._qlen else None

    def take_dropped(self) -> list[QueuedPacket]:
        """Packets CoDel dropped inside ``dequeue``/``peek`` since the last call (give them a drop verdict)."""
        out = self._dropped
        if out:
            self._dropped = []
        else:
            out = []
        return out

    def drain(self) -> list[QueuedPacket]:
        out: list[QueuedPacket] = []
        if self._peeked is not None:
            out.append(self._peeked)
            self._peeked = None
        for flow in chain(self._new, self._old):
            out.extend(flow.q)
            flow.q.clear()
            flow.bytes = 0
            flow.linked = False
            flow.reset_codel()
        self._new.clear()
        self._old.clear()
        self._qlen = self._bytes = 0
        return out

    def change(self, spec: LeafSpec) -> list[QueuedPacket]:
        """Apply ``spec`` (missing parameters take their defaults); drop from fat flows down to the new limit."""
        self._configure(**{**DEFAULTS, **check_params(spec, DEFAULTS)})
        dropped = self.take_dropped()
        while self._qlen > self.limit:
            n = self._drop_fattest(self._qlen - self.limit, dropped)
            if not n:
                break
            self.overlimit_drops += n
        return dropped

    # -- introspection -----------------------------------------------------------------


    def stats(self, now: float | None = None, top: int = 10) -> dict[str, Any]:
        """Counters plus the ``top`` flows by backlog; ``max_sojourn`` is the oldest head's age at ``now``.

        Costs one pass over the flows that hold packets: call it for /stats, not per packet.
        """
        if now is None:
            now = self._now
        linked = list(chain(self._new, self._old))
        heads = [f.q[0].enqueued_at for f in linked if f.q]
        if self._peeked is not None:
            heads.append(self._peeked.enqueued_at)
        fat = heapq.nlargest(top, (f for f in linked if f.q), key=_bytes_of)
        codel = self.codel
        return {
            "kind": "fq_codel",
            "backlog_packets": self._qlen,
            "backlog_bytes": self._bytes,
            "drops": codel.drops + self.overlimit_drops,
            "codel_drops": codel.drops,
            "codel_drop_bytes": codel.drop_bytes,
            "overlimit_drops": self.overlimit_drops,
            "ecn_mark": 0,  # no ECN: a userspace shaper can only drop
            "new_flow_count": self.new_flow_count,
            "new_flows_len": len(self._new),
            "old_flows_len": len(self._old),
            "maxpacket": codel.maxpacket,
            "last_sojourn": self.last_sojourn,
            "max_sojourn": max(0.0, now - min(heads)) if heads else 0.0,
            "target": codel.target,
            "interval": codel.interval,
            "limit": self.limit,
            "flows": self.nflows,
            "quantum": self.quantum,
            "top_flows": [
                {"flow": f.index, "packets": len(f.q), "bytes": f.bytes, "sojourn": max(0.0, now - f.q[0].enqueued_at)}
                for f in fat
            ],
        }


def _make(spec: LeafSpec) -> FqCodel:
    return FqCodel.from_spec(spec)


register_leaf("fq_codel", _make)
