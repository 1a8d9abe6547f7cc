"""The packets one worker may hold, shared by all its classes with dynamic thresholds.

Why: every packet a class holds stays in the kernel's queue, and the kernel bounds that queue. This machine's
kernel (6.18, verdicts looked up in a hash table) refuses a queue's 65,537th packet whatever ``--max-len``
says ("nf_queue: hash insert failed: -7" in dmesg, counted as ``queue_dropped``); older kernels keep no bound
but look a verdict up in a list as long as the queue. Per-class limits cannot respect that bound: 10,000
subscriber classes at the default 1,000 packets would ask for 10 million. When the kernel's bound is what
drops, it drops whatever arrives next -- per packet, not per class -- and the unlucky subscribers lose far
more than their share (0.80 of the plan in the 10,000-subscriber benchmark while the average got 0.99).

So a worker's classes share one pool (``--max-held``, :data:`imqd.kernel_queues.DEFAULT_HELD_MAX` packets by
default: the kernel's bound less what the socket may hold unread), and a class may queue a packet only
while its backlog is below ``alpha`` x the pool's free room: the dynamic thresholds of Choudhury and Hahne
("Dynamic queue length thresholds for shared-memory packet switches", IEEE/ACM ToN 1998), as switch ASICs
share their buffers. One backlogged class may use half the pool (``alpha`` = 1); n of them settle at
``pool / (n + 1)`` each, so the pool never fills, a class that becomes busy always finds room, and the
packets dropped are those of the longest queues. A class's own ``limit`` still applies. O(1) per packet.

Pure: :class:`~imqd.qdisc.htb.HTB` keeps ``held`` exact (every change of a leaf's backlog adds its delta).
"""

from __future__ import annotations

__all__ = ["HeldPool", "DEFAULT_ALPHA"]

DEFAULT_ALPHA = 1.0


class HeldPool:
    """How many packets a worker's trees hold, against how many they may (``capacity``; None: no bound)."""

    __slots__ = ("capacity", "alpha", "held", "drops")

    def __init__(self, capacity: int | None = None, alpha: float = DEFAULT_ALPHA) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"held pool: capacity must be None or an int >= 1, got {capacity!r}")
        if not alpha > 0:
            raise ValueError(f"held pool: alpha must be above 0, got {alpha!r}")
        self.capacity = capacity
        self.alpha = float(alpha)
        self.held = 0  # packets the trees sharing this pool hold now
        self.drops = 0  # arrivals refused because their class was over its threshold

    def admits(self, backlog: int) -> bool:
        """Whether a class holding ``backlog`` packets may queue one more now."""
        cap = self.capacity
        return cap is None or backlog < self.alpha * (cap - self.held)

    def __repr__(self) -> str:
        return f"HeldPool(capacity={self.capacity}, alpha={self.alpha}, held={self.held}, drops={self.drops})"
