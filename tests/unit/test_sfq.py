"""The sfq leaf and the longest-queue index it shares with perhost."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.leaves import LeafSpec, make_leaf
from imqd.qdisc.sfq import DepthIndex, Sfq


def pkt(flow: int, size: int = 1000) -> QueuedPacket:
    return QueuedPacket(size, flow=flow)


def ids(pkts: object) -> list[int]:
    return [id(p) for p in pkts]  # type: ignore[attr-defined]


@pytest.mark.parametrize("sizes", [(1500, 1500), (1500, 64), (576, 1400)])
def test_two_greedy_flows_get_equal_bytes(sizes: tuple[int, int]) -> None:
    q = Sfq(limit=1000)
    for flow, size in enumerate(sizes):
        for _ in range(20):
            q.enqueue(pkt(flow, size), 0.0)
    sent: dict[int, int] = defaultdict(int)
    for _ in range(10_000):
        p = q.dequeue(0.0)
        sent[p.flow] += p.size
        q.enqueue(pkt(p.flow, p.size), 0.0)
    a, b = sent[0], sent[1]
    assert abs(a - b) <= 0.05 * max(a, b), (a, b)


def test_round_robin_order_with_equal_packets() -> None:
    q = Sfq(quantum=1000)
    for flow in (1, 2, 3):
        for _ in range(3):
            q.enqueue(pkt(flow), 0.0)
    assert [q.dequeue(0.0).flow for _ in range(9)] == [1, 2, 3] * 3


def test_full_queue_drops_newest_packet_of_the_longest_flow() -> None:
    q = Sfq(limit=10)
    hog = [pkt(1) for _ in range(7)]
    for p in hog:
        q.enqueue(p, 0.0)
    for _ in range(3):
        q.enqueue(pkt(2), 0.0)
    newcomer = pkt(3)
    assert ids(q.enqueue(newcomer, 0.0)) == [id(hog[-1])]
    assert q.backlog_packets == 10
    assert q.stats()["top_flows"][0] == {"flow": 1, "packets": 6, "bytes": 6000, "drops": 1}
    # The hog's own next packet is the one to go when it is still the longest.
    extra = pkt(1)
    assert ids(q.enqueue(extra, 0.0)) == [id(extra)]


def test_hash_buckets_wrap_flows() -> None:
    q = Sfq(flows=4)
    q.enqueue(pkt(1), 0.0)
    q.enqueue(pkt(5), 0.0)  # same bucket as flow 1: shares its queue
    q.enqueue(pkt(2), 0.0)
    assert q.stats()["active_flows"] == 2


def test_change_rehashes_and_trims() -> None:
    q = make_leaf(LeafSpec.of("sfq", flows=1024, limit=100))
    assert isinstance(q, Sfq)
    held = [pkt(f, 100 + i) for i in range(10) for f in (1, 2, 9)]
    for p in held:
        q.enqueue(p, 0.0)
    dropped = q.change(LeafSpec.of("sfq", flows=8, limit=25))  # 1 and 9 now share a bucket of 20
    assert len(dropped) == 5 and {p.flow for p in dropped} <= {1, 9}
    out = [q.dequeue(0.0) for _ in range(25)]
    for f in (1, 2, 9):
        mine = [p.size for p in out if p.flow == f]
        assert mine == sorted(mine)  # per-flow order kept


@pytest.mark.parametrize(
    "params, field",
    [({"flows": 0}, "flows"), ({"quantum": 0}, "quantum"), ({"limit": 1.5}, "limit"), ({"perturb": 10}, "perturb")],
)
def test_bad_parameters_are_refused_by_name(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_leaf(LeafSpec("sfq", tuple(params.items())))


# -- DepthIndex ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(moves=st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), max_size=200))
def test_depth_index_always_knows_a_longest_queue(moves: list[tuple[int, bool, bool]]) -> None:
    index: DepthIndex[int] = DepthIndex()
    length = Counter[int]()
    for item, grow, take in moves:
        if take:
            longest = index.take_longest()
            if not length or max(length.values()) == 0:
                assert longest is None
                continue
            assert longest is not None and length[longest] == max(length.values())
            item, grow = longest, False
        old = length[item]
        if not grow and old == 0:
            continue
        length[item] = old + 1 if grow else old - 1
        index.moved(item, old, length[item])
        assert index.max_depth == max(length.values(), default=0)


# -- conservation -------------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("enq"), st.integers(0, 9), st.integers(40, 1600)),
    st.tuples(st.just("deq"), st.just(0), st.just(0)),
    st.tuples(st.just("change"), st.integers(1, 15), st.sampled_from([2, 5, 1024])),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, max_size=200))
def test_every_packet_is_released_dropped_or_held(ops: list[tuple[str, int, int]]) -> None:
    q = Sfq(flows=5, limit=8, quantum=500)
    enqueued: list[QueuedPacket] = []
    released: list[QueuedPacket] = []
    dropped: list[QueuedPacket] = []
    for kind, a, b in ops:
        if kind == "enq":
            p = QueuedPacket(b, flow=a)
            enqueued.append(p)
            dropped += q.enqueue(p, 0.0)
        elif kind == "deq":
            head = q.peek(0.0)
            p = q.dequeue(0.0)
            assert p is head
            if p is not None:
                released.append(p)
        else:
            dropped += q.change(LeafSpec.of("sfq", limit=a, flows=b, quantum=500))
        held = len(enqueued) - len(released) - len(dropped)
        assert q.backlog_packets == held <= q.limit
        assert (q.next_event(0.0) is None) == (held == 0)
    rest = q.drain()
    assert q.backlog_packets == 0 and q.backlog_bytes == 0
    assert Counter(map(id, released + dropped + rest)) == Counter(map(id, enqueued))
    arrival = {id(p): i for i, p in enumerate(enqueued)}
    by_flow: dict[int, list[int]] = defaultdict(list)
    for p in released:
        by_flow[p.flow].append(arrival[id(p)])
    assert all(seq == sorted(seq) for seq in by_flow.values())
