"""The worker's shared pool of held packets (imqd.qdisc.held_pool) and HTB's use of it.

Two things are held to account: the count is exact (every path that changes a leaf's backlog -- enqueue,
dequeue, drops inside the leaf, change(), update(), drain() -- keeps ``HTB.held`` equal to what the leaves
hold, and the pool equal to the sum of the trees that share it), and the dynamic threshold shares the pool
fairly (the longest queues drop, the pool never overflows, a lone class may use half of it).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_htb_rows import big_trees
from test_htb_update import deltas

from imqd.qdisc.base import QueuedPacket
from imqd.kernel_queues import DEFAULT_HELD_MAX, KERNEL_QUEUE_MAX, SOCKET_MESSAGES_MAX
from imqd.qdisc.held_pool import HeldPool
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.htb_update import merged_params
from imqd.qdisc.leaves import LeafSpec

MTU = 1500


def leaves_hold(h: HTB) -> int:
    """What the leaves really hold, counted the slow way."""
    return sum(cl.q.backlog_packets for cl in h._leaf_map.values() if cl.q is not None)  # noqa: SLF001


def flat(n: int, rate: float = 1e6, limit: int = 1000) -> list[HTBClassParams]:
    leaf = LeafSpec.of("fifo", limit_packets=limit)
    return [HTBClassParams("root", None, 1e10, 1e10, 15000, 15000)] + [
        HTBClassParams(f"s{i}", "root", rate, rate, MTU, MTU, leaf=leaf) for i in range(n)]


@pytest.mark.parametrize(("capacity", "alpha", "word"), [(0, 1.0, "capacity"), (-3, 1.0, "capacity"),
                                                         (1.5, 1.0, "capacity"), (True, 1.0, "capacity"),
                                                         (10, 0.0, "alpha"), (10, -1.0, "alpha")])
def test_a_bad_pool_names_what_is_wrong(capacity: Any, alpha: float, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        HeldPool(capacity, alpha)


def test_the_default_leaves_room_for_what_the_socket_may_hold_unread() -> None:
    assert DEFAULT_HELD_MAX + SOCKET_MESSAGES_MAX <= KERNEL_QUEUE_MAX


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(a_classes=big_trees(max_inner=4, max_leaves=25), b_classes=big_trees(max_inner=4, max_leaves=25),
       capacity=st.one_of(st.none(), st.integers(1, 120)), data=st.data())
def test_the_count_is_exact_through_traffic_changes_and_drains(a_classes: list[HTBClassParams],
                                                               b_classes: list[HTBClassParams],
                                                               capacity: int | None, data: Any) -> None:
    pool = HeldPool(capacity)
    trees = [HTB(a_classes, 0.0, pool=pool, scheduler="rows"), HTB(b_classes, 0.0, pool=pool)]
    current = [list(a_classes), list(b_classes)]
    now = 0.0
    seq = 0
    for _ in range(data.draw(st.integers(1, 12))):
        i = data.draw(st.integers(0, 1))
        h = trees[i]
        op = data.draw(st.sampled_from(["enqueue", "enqueue", "dequeue", "update", "change", "drain"]))
        if op == "enqueue":
            for leaf in data.draw(st.lists(st.sampled_from(sorted(h.leaves())), max_size=30)):
                seq += 1
                h.enqueue(QueuedPacket(data.draw(st.sampled_from([60, MTU, 4000])), leaf, now, seq), leaf, now)
        elif op == "dequeue":
            now += data.draw(st.floats(0.0, 0.2))
            for _ in range(data.draw(st.integers(0, 40))):
                if h.dequeue(now) is None:
                    break
        elif op in ("update", "change"):
            upserts, removals = data.draw(deltas(current[i]))
            merged = merged_params(h, upserts, removals)
            leaves_after = sorted({p.name for p in merged} - {p.parent for p in merged})
            fb = data.draw(st.sampled_from(leaves_after)) if leaves_after and data.draw(st.booleans()) else None
            if op == "update":
                h.update(upserts, removals, now=now, fallback=fb)
            else:
                h.change(merged, now, fallback=fb)
            current[i] = merged
        else:
            h.drain()
        h.take_dropped()
        for t in trees:
            assert t.held == t.backlog_packets == leaves_hold(t)
        assert pool.held == sum(t.held for t in trees)
        if capacity is not None:
            assert pool.held <= capacity


def test_many_backlogged_classes_share_the_pool_evenly_and_never_fill_it() -> None:
    pool = HeldPool(200)
    h = HTB(flat(100), 0.0, pool=pool)
    dropped = 0
    for _ in range(20):  # every class offered 20 packets in turn, nothing sent
        for i in range(100):
            leaf = f"s{i}"
            dropped += len(h.enqueue(QueuedPacket(MTU, leaf, 0.0), leaf, 0.0))
    backlogs = [h._leaf_map[f"s{i}"].q.backlog_packets for i in range(100)]  # noqa: SLF001
    assert max(backlogs) - min(backlogs) <= 1
    assert pool.held == sum(backlogs) < 200
    assert min(backlogs) >= 200 // 101  # n busy classes settle near pool / (n + 1) each
    assert pool.drops == dropped == 2000 - pool.held


def test_a_longer_queue_drops_before_a_shorter_one() -> None:
    pool = HeldPool(100)
    h = HTB(flat(3), 0.0, pool=pool)
    for _ in range(60):
        h.enqueue(QueuedPacket(MTU, "s0", 0.0), "s0", 0.0)  # s0 takes what the threshold lets it: 50
    assert h._leaf_map["s0"].q.backlog_packets == 50  # noqa: SLF001  (alpha 1: half the pool)
    assert h.enqueue(QueuedPacket(MTU, "s0", 0.0), "s0", 0.0) != []  # ... and no more
    assert h.enqueue(QueuedPacket(MTU, "s1", 0.0), "s1", 0.0) == []  # a quiet class still gets in
    assert h.enqueue(QueuedPacket(MTU, "s2", 0.0), "s2", 0.0) == []


def test_sending_frees_room_for_the_classes_that_were_refused() -> None:
    pool = HeldPool(10)
    h = HTB(flat(1, rate=8 * MTU), 0.0, pool=pool)  # one packet a second
    for _ in range(10):
        h.enqueue(QueuedPacket(MTU, "s0", 0.0), "s0", 0.0)
    assert pool.held == 5 and pool.drops == 5
    assert h.dequeue(0.0) is not None
    assert pool.held == 4
    assert h.enqueue(QueuedPacket(MTU, "s0", 0.0), "s0", 0.0) == []
    assert pool.held == 5


def test_the_class_limit_still_applies_under_a_large_pool() -> None:
    pool = HeldPool(10_000)
    h = HTB(flat(1, limit=7), 0.0, pool=pool)
    for _ in range(20):
        h.enqueue(QueuedPacket(MTU, "s0", 0.0), "s0", 0.0)
    assert pool.held == 7 and pool.drops == 0  # the FIFO's own limit dropped the rest


def test_without_a_bound_nothing_changes() -> None:
    a, b = HTB(flat(5), 0.0), HTB(flat(5), 0.0, pool=HeldPool(None))
    for i in range(6000):
        leaf = f"s{i % 5}"
        assert len(a.enqueue(QueuedPacket(MTU, leaf, 0.0, i), leaf, 0.0)) == len(
            b.enqueue(QueuedPacket(MTU, leaf, 0.0, i), leaf, 0.0))
    assert a.held == b.held == 5000  # five FIFOs of 1000: only their own limits drop
