"""Two per_host leaves driven in lockstep, one on a shared table and one alone: the yardstick for "sharing
changes nothing for a single worker" (tests/unit/test_host_buckets.py, test_host_share.py)."""

from __future__ import annotations

from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.leaves import LeafSpec
from imqd.qdisc.perhost import PerHost

#: (operation, host offset, packet size, seconds since the previous operation)
LOCKSTEP_OPS = st.lists(st.tuples(st.sampled_from(["enq", "deq", "change"]), st.integers(0, 5),
                                  st.integers(40, 3000), st.floats(0, 0.02)), max_size=120)


def drive_in_lockstep(shared: PerHost, alone: PerHost, ops: list[tuple[str, int, int, float]], base: int) -> float:
    """Apply ``ops`` to both leaves (hosts ``base + offset``), asserting the same drops, releases and next
    events after each; the time of the last operation."""
    now = 0.0
    for op, host, size, dt in ops:
        now += dt
        if op == "enq":
            a = shared.enqueue(QueuedPacket(size, now, host=base + host), now)
            b = alone.enqueue(QueuedPacket(size, now, host=base + host), now)
            assert [(p.host, p.size) for p in a] == [(p.host, p.size) for p in b]
        elif op == "deq":
            assert shared.next_event(now) == alone.next_event(now)
            a, b = shared.dequeue(now), alone.dequeue(now)
            assert (a and (a.host, a.size)) == (b and (b.host, b.size))
        else:
            spec = LeafSpec.of("perhost", rate=500_000 + size * 1000, limit=20)
            shared.change(spec), alone.change(spec)
    return now
