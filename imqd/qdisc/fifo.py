"""Tail-drop FIFO: the default leaf of every HTB class (the kernel's pfifo/bfifo).

It is work-conserving -- whatever it holds may leave at once -- so the HTB
can skip asking it ``peek`` before counting its class as eligible.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from imqd.qdisc.base import QueuedPacket


def _check_limits(limit_packets: object, limit_bytes: object) -> None:
    """Reject limits a FIFO cannot honour, naming the bad field."""
    if isinstance(limit_packets, bool) or not isinstance(limit_packets, int) or limit_packets < 1:
        raise ValueError(f"fifo: limit_packets must be an int >= 1, got {limit_packets!r}")
    if limit_bytes is not None and (
        isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 1
    ):
        raise ValueError(f"fifo: limit_bytes must be None or an int >= 1, got {limit_bytes!r}")


class Fifo:
    """A FIFO bounded in packets and optionally in bytes; drops the arriving packet when full."""

    __slots__ = ("_q", "_bytes", "limit_packets", "limit_bytes", "drops")

    #: Lets a classful parent skip ``peek``: a non-empty FIFO can always dequeue.
    work_conserving = True

    def __init__(self, limit_packets: int = 1000, limit_bytes: int | None = None) -> None:
        _check_limits(limit_packets, limit_bytes)
        self._q: deque[QueuedPacket] = deque()
        self._bytes = 0
        self.limit_packets = limit_packets
        self.limit_bytes = limit_bytes
        self.drops = 0

    @property
    def passthrough_max(self) -> int:
        """Largest packet that, offered to this FIFO while empty, the next dequeue hands straight back.

        A parent that sees it is idle may then skip the queue altogether (HTB's :meth:`send_now`)."""
        return self.passthrough_for(self.limit_bytes)

    @staticmethod
    def passthrough_for(limit_bytes: int | None) -> int:
        """``passthrough_max`` of a FIFO with these limits, without building one (HTB's lazy leaves)."""
        return limit_bytes if limit_bytes is not None else 1 << 62

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        q = self._q
        lb = self.limit_bytes
        if len(q) >= self.limit_packets or (lb is not None and self._bytes + pkt.size > lb):
            self.drops += 1
            return [pkt]
        q.append(pkt)
        self._bytes += pkt.size
        return []

    def dequeue(self, now: float) -> QueuedPacket | None:
        q = self._q
        if not q:
            return None
        pkt = q.popleft()
        self._bytes -= pkt.size
        return pkt

    def peek(self, now: float) -> QueuedPacket | None:
        q = self._q
        return q[0] if q else None

    def next_event(self, now: float) -> float | None:
        return now if self._q else None

    def drain(self) -> list[QueuedPacket]:
        out = list(self._q)
        self._q.clear()
        self._bytes = 0
        return out

    def change(self, limit_packets: int, limit_bytes: int | None = None) -> list[QueuedPacket]:
        """Set new limits; keep the oldest packets and return the newest that no longer fit."""
        _check_limits(limit_packets, limit_bytes)
        self.limit_packets = limit_packets
        self.limit_bytes = limit_bytes
        q = self._q
        dropped: list[QueuedPacket] = []
        while q and (len(q) > limit_packets or (limit_bytes is not None and self._bytes > limit_bytes)):
            pkt = q.pop()
            self._bytes -= pkt.size
            dropped.append(pkt)
        dropped.reverse()  # arrival order
        self.drops += len(dropped)
        return dropped

    @property
    def backlog_packets(self) -> int:
        return len(self._q)

    @property
    def backlog_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "fifo",
            "backlog_packets": len(self._q),
            "backlog_bytes": self._bytes,
            "drops": self.drops,
            "limit_packets": self.limit_packets,
            "limit_bytes": self.limit_bytes,
        }
