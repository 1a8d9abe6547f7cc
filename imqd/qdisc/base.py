"""The queueing-discipline contract shared by every qdisc in imqd.

Modelled on the kernel's ``struct Qdisc_ops`` (net/sched): ``enqueue`` hands
back what it had to drop instead of dropping it itself, ``dequeue`` returns
the next packet the discipline releases *now*, ``peek`` looks without taking,
and ``next_event`` plays the part of the qdisc watchdog: the earliest time at
which ``dequeue`` may return something again.  Nothing here does I/O or reads
a clock: the caller passes ``now`` (seconds, any monotonic origin), so tests
drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class QueuedPacket:
    """One packet held by the shaper.

    ``size`` is what the rate is charged for: the IP packet length taken from
    the IP header plus the configured per-packet ``overhead`` (never the
    length of the copied prefix).  ``handle`` is opaque to the qdiscs (the
    worker keeps its netfilterqueue packet there).  ``flow`` is a hash of the
    packet's 5-tuple, used by flow-aware leaves; ``host`` is the address key a
    per-host class uses (an ``int``), ``None`` when not applicable.
    """

    size: int
    handle: Any = None
    enqueued_at: float = 0.0
    flow: int = 0
    host: int | None = None
    meta: dict[str, Any] | None = field(default=None, repr=False)


class CountedBacklog:
    """``backlog_packets``/``backlog_bytes`` for leaves that keep running ``_qlen``/``_bytes`` counters."""

    __slots__ = ()
    _qlen: int
    _bytes: int

    @property
    def backlog_packets(self) -> int:
        return self._qlen

    @property
    def backlog_bytes(self) -> int:
        return self._bytes


class Qdisc(Protocol):
    """A leaf or classful queueing discipline (the kernel's Qdisc_ops)."""

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        """Queue ``pkt``; return the packets dropped to make room (maybe ``pkt`` itself)."""
        ...

    def dequeue(self, now: float) -> QueuedPacket | None:
        """Remove and return the packet to release at ``now``, or ``None``."""
        ...

    def peek(self, now: float) -> QueuedPacket | None:
        """Return what ``dequeue(now)`` would return, without removing it."""
        ...

    def next_event(self, now: float) -> float | None:
        """Earliest time ``>= now`` at which ``dequeue`` may succeed; ``None`` when empty."""
        ...

    def drain(self) -> list[QueuedPacket]:
        """Remove and return every held packet (shutdown, class removal)."""
        ...

    @property
    def backlog_packets(self) -> int: ...

    @property
    def backlog_bytes(self) -> int: ...
