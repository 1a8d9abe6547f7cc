"""The ``delay`` leaf: netem / dummynet style delay, jitter and random loss.

Each packet is held until ``now + delay (+ jitter)`` from its enqueue time.

* ``jitter`` (s) with ``distribution``:
  ``"uniform"`` (default) draws the delay uniformly from ``[delay - jitter,
  delay + jitter]``, as netem does without a distribution table;
  ``"normal"`` draws it from a normal law of mean ``delay`` and standard
  deviation ``jitter``.  A delay below 0 counts as 0.
* No reordering by default (dummynet's behaviour, and what TCP wants): a
  packet's release time is ``max(its own time, the previous packet's)``, so
  jitter delays but never overtakes.  ``reorder=True`` releases each packet at
  its own time (netem's behaviour), so jitter can reorder.
* ``loss`` (percent, 0..100): each packet is dropped at enqueue with that
  probability, independently (no correlation); dropped packets are returned.
* ``limit``: packets held at most; beyond it the arriving packet is dropped.
* ``seed``: seeds the private ``random.Random`` (deterministic tests); ``None``
  seeds from the OS.

The leaf is not work-conserving: ``peek`` answers ``None`` until the head's
release time and ``next_event`` gives that time, so a parent HTB arms its
timer for it.  Every operation is O(1) per packet (O(log n) with ``reorder``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from itertools import count
from typing import Any

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.leaves import LeafSpec, check_params, register_leaf

DEFAULTS: dict[str, Any] = {
    "delay": 0.0,
    "jitter": 0.0,
    "distribution": "uniform",
    "loss": 0.0,
    "limit": 1000,
    "reorder": False,
    "seed": None,
}
DISTRIBUTIONS = ("uniform", "normal")


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise ValueError(f"delay: {name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class Netem:
    """Delay / jitter / loss emulation leaf (kind ``"delay"``)."""

    __slots__ = (
        "delay", "jitter", "distribution", "loss", "limit", "reorder", "seed",
        "_rng", "_times", "_pkts", "_heap", "_seq", "_last", "_bytes",
        "loss_drops", "limit_drops",
    )  # fmt: skip

    #: Holds packets back until their release time: parents must ``peek``.
    work_conserving = False

    def __init__(
        self,
        delay: float = DEFAULTS["delay"],
        jitter: float = DEFAULTS["jitter"],
        distribution: str = DEFAULTS["distribution"],
        loss: float = DEFAULTS["loss"],
        limit: int = DEFAULTS["limit"],
        reorder: bool = DEFAULTS["reorder"],
        seed: int | None = DEFAULTS["seed"],
    ) -> None:
        # FIFO mode: parallel deques of release times and packets (no tuple per packet).
        self._times: deque[float] = deque()
        self._pkts: deque[QueuedPacket] = deque()
        # Reorder mode: a heap of (release time, arrival number, packet).
        self._heap: list[tuple[float, int, QueuedPacket]] = []
        self._seq = count()
        self._last = -math.inf
        self._bytes = 0
        self.loss_drops = 0
        self.limit_drops = 0
        self.reorder = False
        self.seed: int | None = None
        self._rng = random.Random(seed)
        self._configure(delay, jitter, distribution, loss, limit, reorder, seed, reseed=False)

    @classmethod
    def from_spec(cls, spec: LeafSpec) -> Netem:
        return cls(**check_params(spec, DEFAULTS))

    def _configure(
        self,
        delay: float,
        jitter: float,
        distribution: str,
        loss: float,
        limit: int,
        reorder: bool,
        seed: int | None,
        reseed: bool = True,
    ) -> None:
        delay = _check_seconds("delay", delay)
        jitter = _check_seconds("jitter", jitter)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"delay: distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not (0 <= loss <= 100):
            raise ValueError(f"delay: loss must be a percentage in [0, 100], got {loss!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"delay: limit must be an int >= 1 (packets), got {limit!r}")
        if not isinstance(reorder, bool):
            raise ValueError(f"delay: reorder must be true or false, got {reorder!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"delay: seed must be an int or null, got {seed!r}")
        self.delay = delay
        self.jitter = jitter
        self.distribution = distribution
        self.loss = float(loss)
        self.limit = limit
        if reseed and seed != self.seed:
            self._rng.seed(seed)
        self.seed = seed
        if reorder != self.reorder:
            held = self._take_all()
            self.reorder = reorder
            for t, pkt in held:
                self._hold(t, pkt)

    def _take_all(self) -> list[tuple[float, QueuedPacket]]:
        """Every held packet with its release time, in release order; leaves the queue empty."""
        if self.reorder:
            held = [(t, p) for t, _, p in sorted(self._heap)]
            self._heap.clear()
        else:
            held = list(zip(self._times, self._pkts, strict=True))
            self._times.clear()
            self._pkts.clear()
        self._bytes = 0
        return held

    def _hold(self, t: float, pkt: QueuedPacket) -> None:
        if self.reorder:
            heapq.heappush(self._heap, (t, next(self._seq), pkt))
        else:
            if t < self._last:
                t = self._last  # never overtake the packet in front
            self._last = t
            self._times.append(t)
            self._pkts.append(pkt)
        self._bytes += pkt.size

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        rng = self._rng
        if self.loss and rng.random() * 100.0 < self.loss:
            self.loss_drops += 1
            return [pkt]
        if self.backlog_packets >= self.limit:
            self.limit_drops += 1
            return [pkt]
        d = self.delay
        j = self.jitter
        if j:
            if self.distribution == "uniform":
                d += j * (2.0 * rng.random() - 1.0)
            else:
                d = rng.gauss(d, j)
            if d < 0.0:
                d = 0.0
        self._hold(now + d, pkt)
        return []

    def dequeue(self, now: float) -> QueuedPacket | None:
        if self.reorder:
            heap = self._heap
            if not heap or heap[0][0] > now:
                return None
            pkt = heapq.heappop(heap)[2]
        else:
            times = self._times
            if not times or times[0] > now:
                return None
            times.popleft()
            pkt = self._pkts.popleft()
        self._bytes -= pkt.size
        return pkt

    def peek(self, now: float) -> QueuedPacket | None:
        if self.reorder:
            heap = self._heap
            return heap[0][2] if heap and heap[0][0] <= now else None
        times = self._times
        return self._pkts[0] if times and times[0] <= now else None

    def next_event(self, now: float) -> float | None:
        if self.reorder:
            if not self._heap:
                return None
            t = self._heap[0][0]
        else:
            if not self._times:
                return None
            t = self._times[0]
        return t if t > now else now

    def drain(self) -> list[QueuedPacket]:
        return [p for _, p in self._take_all()]

    def change(self, spec: LeafSpec) -> list[QueuedPacket]:
        """Apply ``spec`` (missing parameters take their defaults) to packets arriving from now on.

        Held packets keep their release times; if the new ``limit`` is
        smaller, the last to be released are dropped.
        """
        self._configure(**{**DEFAULTS, **check_params(spec, DEFAULTS)})
        excess = self.backlog_packets - self.limit
        if excess <= 0:
            return []
        held = self._take_all()
        keep, dropped = held[: self.limit], [p for _, p in held[self.limit :]]
        self._last = -math.inf
        for t, p in keep:
            self._hold(t, p)
        self.limit_drops += len(dropped)
        return dropped

    @property
    def backlog_packets(self) -> int:
        return len(self._heap) if self.reorder else len(self._times)

    @property
    def backlog_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "delay",
            "backlog_packets": self.backlog_packets,
            "backlog_bytes": self._bytes,
            "drops": self.loss_drops + self.limit_drops,
            "loss_drops": self.loss_drops,
            "limit_drops": self.limit_drops,
            "delay": self.delay,
            "jitter": self.jitter,
            "distribution": self.distribution,
            "loss": self.loss,
            "limit": self.limit,
            "reorder": self.reorder,
        }


def _make(spec: LeafSpec) -> Netem:
    return Netem.from_spec(spec)


register_leaf("delay", _make)
