"""CoDel, the Controlled-Delay AQM (RFC 8289), as used per flow by fq_codel.

This follows the kernel's include/net/codel_impl.h with two deliberate
differences: time is float seconds and the control law uses an exact
``interval / sqrt(count)`` instead of a fixed-point Newton step, and there is
no ECN marking -- a userspace shaper behind NFQUEUE can only drop, so every
congestion signal is a drop.

CoDel acts at *dequeue*: it looks at how long the head packet waited (its
sojourn time, ``now - pkt.enqueued_at``) and, once that stayed above
``target`` for a whole ``interval``, drops head packets at a rate that grows
with the square root of the drop count until the sojourn time falls back
under ``target``.  Dropped packets are appended to a caller's list so the
worker can give them a drop verdict.
"""

from __future__ import annotations

from collections import deque
from math import sqrt

from imqd.qdisc.base import QueuedPacket


class CodelState:
    """Per-queue CoDel variables (the kernel's ``struct codel_vars``).

    ``above`` replaces the kernel's "first_above_time == 0" sentinel, which
    would be ambiguous with a clock whose origin is arbitrary.
    """

    __slots__ = ("count", "lastcount", "dropping", "above", "first_above_time", "drop_next", "ldelay")

    def __init__(self) -> None:
        self.reset_codel()

    def reset_codel(self) -> None:
        self.count = 0
        self.lastcount = 0
        self.dropping = False
        self.above = False
        self.first_above_time = 0.0
        self.drop_next = 0.0
        self.ldelay = 0.0


class Codel:
    """CoDel parameters plus the dequeue-side algorithm, shared by all queues of one qdisc.

    ``mtu``: CoDel never drops while the qdisc's whole backlog is at most one
    MTU (a single packet cannot be a standing queue).
    """

    __slots__ = ("target", "interval", "mtu", "drops", "drop_bytes", "maxpacket")

    def __init__(self, target: float = 0.005, interval: float = 0.1, mtu: int = 1514) -> None:
        self.target = target
        self.interval = interval
        self.mtu = mtu
        self.drops = 0
        self.drop_bytes = 0
        self.maxpacket = 0

    def _should_drop(self, st: CodelState, pkt: QueuedPacket, backlog: int, now: float) -> bool:
        """Has the sojourn time been above target for at least an interval? (codel_should_drop)"""
        st.ldelay = delay = now - pkt.enqueued_at
        if pkt.size > self.maxpacket:
            self.maxpacket = pkt.size
        if delay < self.target or backlog <= self.mtu:
            st.above = False  # went below: must stay above a full interval again before dropping
            return False
        if not st.above:
            st.above = True
            st.first_above_time = now + self.interval
            return False
        return now > st.first_above_time

    def dequeue(
        self, st: CodelState, q: deque[QueuedPacket], backlog: int, now: float, dropped: list[QueuedPacket]
    ) -> QueuedPacket | None:
        """Pop the next packet of ``q`` to send, appending the packets CoDel drops to ``dropped``.

        ``backlog`` is the owning qdisc's byte backlog including ``q``; the
        caller fixes its own counters afterwards from the returned packet and
        the new entries of ``dropped``.
        """
        if not q:
            st.dropping = False
            return None
        pkt: QueuedPacket | None = q.popleft()
        backlog -= pkt.size  # type: ignore[union-attr]
        drop = self._should_drop(st, pkt, backlog, now)  # type: ignore[arg-type]
        interval = self.interval
        if st.dropping:
            if not drop:
                st.dropping = False  # sojourn time below target: leave dropping state
            elif now >= st.drop_next:
                # Time for the next drop(s); a large backlog may need several now.
                while st.dropping and now >= st.drop_next:
                    st.count += 1
                    dropped.append(pkt)  # type: ignore[arg-type]
                    self.drops += 1
                    self.drop_bytes += pkt.size  # type: ignore[union-attr]
                    if not q:
                        pkt = None
                        st.above = False
                        st.dropping = False
                        break
                    pkt = q.popleft()
                    backlog -= pkt.size
                    if not self._should_drop(st, pkt, backlog, now):
                        st.dropping = False
                    else:
                        st.drop_next += interval / sqrt(st.count)
        elif drop:
            dropped.append(pkt)  # type: ignore[arg-type]
            self.drops += 1
            self.drop_bytes += pkt.size  # type: ignore[union-attr]
            if q:
                pkt = q.popleft()
                backlog -= pkt.size
                self._should_drop(st, pkt, backlog, now)
            else:
                pkt = None
                st.above = False
            st.dropping = True
            # If we were dropping recently, resume near the drop rate that controlled the queue then.
            delta = st.count - st.lastcount
            if delta > 1 and now - st.drop_next < 16 * interval:
                st.count = delta
            else:
                st.count = 1
            st.lastcount = st.count
            st.drop_next = now + interval / sqrt(st.count)
        return pkt
