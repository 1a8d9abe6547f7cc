"""Token bucket helper and the TBF qdisc (the kernel's sch_tbf, without peakrate).

The bucket holds *time*, not bytes, like sch_tbf and HTB: ``tokens`` is how
many seconds of transmission at ``rate`` are saved up, capped at ``buffer =
burst * 8 / rate``.  Whether a packet conforms is decided by comparing ``now``
with the absolute time the bucket will hold enough (:meth:`TokenBucket.ready_at`),
so the time a caller is told to come back is exactly the time ``conforms``
turns true -- no float rounding can make a watchdog wake up one ulp too early
and spin.
"""

from __future__ import annotations

import math
from typing import Any

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.fifo import Fifo


def _check_rate_burst(rate: object, burst: object) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0 < rate < math.inf):
        raise ValueError(f"token bucket: rate must be a finite number > 0 (bit/s), got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"token bucket: burst must be an int >= 1 (bytes), got {burst!r}")


class TokenBucket:
    """A bucket of ``burst`` bytes refilled at ``rate`` bit/s; starts full."""

    __slots__ = ("rate", "burst", "_spb", "_buffer", "_tokens", "_tc")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        _check_rate_burst(rate, burst)
        self.rate = float(rate)
        self.burst = burst
        self._spb = 8.0 / self.rate  # seconds per byte
        self._buffer = burst * self._spb
        self._tokens = self._buffer
        # -inf: "full since forever", so the first use sees a full bucket whatever the clock's origin.
        self._tc = -math.inf if now is None else float(now)

    def set_rate(self, rate: float, burst: int) -> None:
        """Change rate and burst at once; saved-up time is kept (capped at the new buffer)."""
        _check_rate_burst(rate, burst)
        self.rate = float(rate)
        self.burst = burst
        self._spb = 8.0 / self.rate
        self._buffer = burst * self._spb
        if self._tokens > self._buffer:
            self._tokens = self._buffer

    @property
    def state(self) -> tuple[float, float]:
        """(saved-up seconds, time of the last charge): all a bucket remembers besides rate and burst."""
        return self._tokens, self._tc

    @state.setter
    def state(self, value: tuple[float, float]) -> None:
        self._tokens, self._tc = value

    @property
    def buffer(self) -> float:
        """The most seconds the bucket can save up (``burst * 8 / rate``)."""
        return self._buffer

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst at ``now`` (a fresh bucket would be no different)."""
        return self._tokens + (now - self._tc) >= self._buffer

    def tokens(self, now: float) -> float:
        """Bytes available at ``now`` (negative after a forced ``consume``)."""
        toks = self._tokens + (now - self._tc)
        if toks > self._buffer:
            toks = self._buffer
        return toks / self._spb

    def ready_at(self, size: int) -> float:
        """Absolute time from which ``size`` bytes conform (``inf`` if ``size > burst``)."""
        if size > self.burst:
            return math.inf
        return self._tc - self._tokens + size * self._spb

    def conforms(self, size: int, now: float) -> bool:
        """True when ``size`` bytes may be sent at ``now`` without exceeding the rate."""
        return size <= self.burst and now >= self._tc - self._tokens + size * self._spb

    def time_until(self, size: int, now: float) -> float:
        """Seconds from ``now`` until ``size`` bytes conform (0 if they do, ``inf`` if never)."""
        t = self.ready_at(size) - now
        return t if t > 0.0 else 0.0

    def consume(self, size: int, now: float) -> None:
        """Charge ``size`` bytes at ``now`` (the bucket may go negative if it did not conform)."""
        diff = now - self._tc
        if diff < 0.0:  # a clock that went backwards gives no credit and does not rewind t_c
            diff = 0.0
            now = self._tc
        toks = self._tokens + diff
        if toks > self._buffer:
            toks = self._buffer
        self._tokens = toks - size * self._spb
        self._tc = now


class Tbf:
    """Shapes its FIFO to ``rate`` with bursts up to ``burst`` bytes; drops packets larger than ``burst``."""

    __slots__ = ("bucket", "fifo", "drops", "oversize_drops")

    #: A backlogged TBF may still refuse to dequeue (no tokens): parents must ``peek``.
    work_conserving = False

    def __init__(
        self,
        rate: float,
        burst: int,
        limit_packets: int = 1000,
        limit_bytes: int | None = None,
        now: float | None = None,
    ) -> None:
        self.bucket = TokenBucket(rate, burst, now)
        self.fifo = Fifo(limit_packets, limit_bytes)
        self.drops = 0
        self.oversize_drops = 0

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        if pkt.size > self.bucket.burst:
            # It could never conform: queueing it would block the FIFO for ever (sch_tbf drops it too).
            self.drops += 1
            self.oversize_drops += 1
            return [pkt]
        dropped = self.fifo.enqueue(pkt, now)
        if dropped:
            self.drops += len(dropped)
        return dropped

    def dequeue(self, now: float) -> QueuedPacket | None:
        head = self.fifo.peek(now)
        if head is None or not self.bucket.conforms(head.size, now):
            return None
        self.bucket.consume(head.size, now)
        return self.fifo.dequeue(now)

    def peek(self, now: float) -> QueuedPacket | None:
        head = self.fifo.peek(now)
        if head is None or not self.bucket.conforms(head.size, now):
            return None
        return head

    def next_event(self, now: float) -> float | None:
        head = self.fifo.peek(now)
        if head is None:
            return None
        t = self.bucket.ready_at(head.size)
        return t if t > now else now

    def drain(self) -> list[QueuedPacket]:
        return self.fifo.drain()

    def change(
        self, rate: float, burst: int, limit_packets: int = 1000, limit_bytes: int | None = None
    ) -> list[QueuedPacket]:
        """Apply new parameters; return what no longer fits (newest first to go) or exceeds the new burst."""
        _check_rate_burst(rate, burst)
        dropped = self.fifo.change(limit_packets, limit_bytes)
        self.bucket.set_rate(rate, burst)
        if any(p.size > burst for p in self.fifo._q):
            for p in self.fifo.drain():
                if p.size > burst:
                    dropped.append(p)
                    self.oversize_drops += 1
                else:
                    self.fifo.enqueue(p, 0.0)  # fits: the FIFO held it a moment ago
        self.drops += len(dropped)
        return dropped

    @property
    def backlog_packets(self) -> int:
        return self.fifo.backlog_packets

    @property
    def backlog_bytes(self) -> int:
        return self.fifo.backlog_bytes

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "tbf",
            "backlog_packets": self.fifo.backlog_packets,
            "backlog_bytes": self.fifo.backlog_bytes,
            "drops": self.drops,
            "oversize_drops": self.oversize_drops,
            "rate": self.bucket.rate,
            "burst": self.bucket.burst,
        }
