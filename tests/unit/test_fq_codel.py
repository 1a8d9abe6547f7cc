"""The fq_codel leaf (RFC 8290), driven by a fake clock."""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.fifo import Fifo
from imqd.qdisc.fq_codel import FqCodel
from imqd.qdisc.leaves import LeafSpec, make_leaf

TARGET = 0.005
SPARSE = 10_000  # flow hash of the sparse flow


def pkt(flow: int, size: int = 1000, now: float = 0.0) -> QueuedPacket:
    return QueuedPacket(size, enqueued_at=now, flow=flow)


def ids(pkts: object) -> list[int]:
    """Packet identities: QueuedPacket compares by value, and tests care about *which* packet."""
    return [id(p) for p in pkts]  # type: ignore[attr-defined]


def all_drops(q: object, dropped: list[QueuedPacket]) -> list[QueuedPacket]:
    take = getattr(q, "take_dropped", None)
    return dropped + (take() if take is not None else [])


@dataclass
class Run:
    bulk_sojourn: list[float] = field(default_factory=list)  # after warm-up
    sparse_sojourn: list[float] = field(default_factory=list)
    max_backlog: int = 0  # after warm-up
    drops: int = 0


def run_tcp_like(
    q: object,
    nflows: int = 4,
    pps: float = 2000.0,
    duration: float = 20.0,
    rtt: float = 0.02,
    sparse: bool = False,
    size: int = 1000,
) -> Run:
    """Window-based, ACK-clocked senders (Reno-like AIMD) through ``q`` served at ``pps``.

    They start with twice the window the path holds, i.e. arrivals at twice
    the service rate; each packet's ACK comes back one base RTT after it
    leaves the queue (+1 segment/RTT), a loss is noticed one RTT after the
    drop (window halved, at most once per RTT).  ``sparse`` adds a flow
    sending one 100-byte packet every 50 ms.
    """
    dt = 1.0 / pps
    cwnd = [4 * pps * rtt / nflows] * nflows
    inflight = [0] * nflows
    last_cut = [-1.0] * nflows
    events: list[tuple[float, int, int, bool]] = []  # (time, seq, flow, lost)
    seq = 0
    out = Run()
    sparse_every = round(0.05 / dt)
    for i in range(int(duration / dt)):
        t = i * dt
        while events and events[0][0] <= t:
            _, _, k, lost = heapq.heappop(events)
            inflight[k] -= 1
            if not lost:
                cwnd[k] += 1.0 / cwnd[k]
            elif t - last_cut[k] > rtt:
                cwnd[k] = max(cwnd[k] / 2, 2.0)
                last_cut[k] = t
        dropped: list[QueuedPacket] = []
        for k in range(nflows):
            while inflight[k] < cwnd[k]:
                inflight[k] += 1
                dropped += q.enqueue(pkt(k, size, t), t)  # type: ignore[attr-defined]
        if sparse and i % sparse_every == 0:
            dropped += q.enqueue(pkt(SPARSE, 100, t), t)  # type: ignore[attr-defined]
        if t > duration / 4:
            out.max_backlog = max(out.max_backlog, q.backlog_packets)  # type: ignore[attr-defined]
        p = q.dequeue(t)  # type: ignore[attr-defined]
        dropped = all_drops(q, dropped)
        out.drops += len(dropped)
        for d in dropped:
            if d.flow < nflows:
                seq += 1
                heapq.heappush(events, (t + rtt, seq, d.flow, True))
        if p is None:
            continue
        if p.flow == SPARSE:
            out.sparse_sojourn.append(t - p.enqueued_at)
        else:
            seq += 1
            heapq.heappush(events, (t + rtt, seq, p.flow, False))
            if t > duration / 4:
                out.bulk_sojourn.append(t - p.enqueued_at)
    return out


# -- CoDel under load ----------------------------------------------------------------------


def test_sojourn_converges_near_target_while_a_fifo_bloats() -> None:
    limit = 300  # 150 ms at the service rate
    fq = run_tcp_like(FqCodel(limit=limit))
    fifo = run_tcp_like(Fifo(limit_packets=limit))
    fq_median = statistics.median(fq.bulk_sojourn)
    fifo_median = statistics.median(fifo.bulk_sojourn)
    assert fq_median < 2 * TARGET, fq_median
    assert fq.max_backlog < limit // 4
    assert fifo.max_backlog == limit  # the FIFO fills up to its limit...
    assert fifo_median > 20 * TARGET, fifo_median  # ...and holds a standing queue
    # Both keep the link busy: CoDel does not buy its low delay with idle time.
    assert len(fq.bulk_sojourn) >= 0.98 * len(fifo.bulk_sojourn)


def test_sparse_flow_sees_little_delay_next_to_bulk_flows() -> None:
    fq = run_tcp_like(FqCodel(), sparse=True)
    fifo = run_tcp_like(Fifo(limit_packets=10240), sparse=True)
    assert len(fq.sparse_sojourn) >= 390  # one every 50 ms for 20 s, none lost
    assert max(fq.sparse_sojourn) < 0.005
    assert statistics.median(fq.sparse_sojourn) < 0.001
    assert statistics.median(fifo.sparse_sojourn) > 0.1


def test_sparse_flow_is_isolated_from_an_unresponsive_flood() -> None:
    """A flood at twice the link rate that ignores drops: fq_codel bounds it by dropping from it."""
    q = FqCodel(limit=500)
    dt = 0.0005
    sparse: list[float] = []
    flood_drops = 0
    for i in range(int(10.0 / dt)):
        t = i * dt
        flood_drops += len(q.enqueue(pkt(1, 1000, t), t)) + len(q.enqueue(pkt(2, 1000, t), t))
        if i % 100 == 0:
            probe = pkt(SPARSE, 100, t)
            gone = q.enqueue(probe, t)
            assert id(probe) not in ids(gone)
            flood_drops += len(gone)
        p = q.dequeue(t)
        dropped = q.take_dropped()
        assert all(d.flow != SPARSE for d in dropped)
        flood_drops += len(dropped)
        if p is not None and p.flow == SPARSE:
            sparse.append(t - p.enqueued_at)
        assert q.backlog_packets <= 500
    assert len(sparse) == 200 and max(sparse) < 0.003
    assert flood_drops > 0.45 * 2 * (10.0 / dt)  # half of the flood had to go


def test_codel_waits_an_interval_above_target_before_dropping() -> None:
    q = FqCodel(target=0.005, interval=0.1)
    # A standing queue: 200 packets in one flow, all enqueued at t=0, served one per ms.
    for _ in range(200):
        q.enqueue(pkt(1, 1000, 0.0), 0.0)
    first_drop = None
    t = 0.0
    while q.backlog_packets and first_drop is None:
        t += 0.001
        q.dequeue(t)
        if q.take_dropped():
            first_drop = t
    assert first_drop is not None
    # The head's sojourn passes target at t=5 ms; the first drop comes one interval later.
    assert 0.105 - 1e-9 <= first_drop <= 0.1065
    assert q.stats()["codel_drops"] >= 1


def test_codel_drops_faster_and_faster_while_the_queue_stands() -> None:
    """Control law: the k-th drop of a dropping spell comes interval/sqrt(k) after the previous one."""
    q = FqCodel(target=0.005, interval=0.1)
    for _ in range(10_000):
        q.enqueue(pkt(1, 1000, 0.0), 0.0)
    drops: list[float] = []
    t = 0.0
    while len(drops) < 6 and q.backlog_packets:
        t += 0.0001
        q.dequeue(t)
        drops += [t] * len(q.take_dropped())
    gaps = [b - a for a, b in itertools.pairwise(drops)]
    for k, gap in enumerate(gaps, start=1):
        assert gap == pytest.approx(0.1 / k**0.5, abs=0.0002), (k, gaps)


def _drop_times(q: FqCodel, t: float, step: float, n: int) -> list[float]:
    """Serve one packet per ``step`` from ``t`` until ``n`` CoDel drops happened; their times."""
    drops: list[float] = []
    while len(drops) < n and q.backlog_packets:
        t += step
        q.dequeue(t)
        drops += [t] * len(q.take_dropped())
    return drops


def test_new_dropping_spell_resumes_near_the_last_drop_rate() -> None:
    q = FqCodel(target=0.005, interval=0.1)
    for _ in range(10_000):
        q.enqueue(pkt(1, 1000, 0.0), 0.0)
    first = _drop_times(q, 0.0, 0.0001, 6)  # a spell of 6 drops
    t = first[-1]
    while q.dequeue(t) is not None:  # the queue empties: the spell ends
        pass
    t += 0.01
    for _ in range(10_000):
        q.enqueue(pkt(1, 1000, t), t)
    second = _drop_times(q, t, 0.0001, 2)
    # Starts again after a full interval above target, then at the old pace: count = 6 - 1 drops.
    assert second[0] - t == pytest.approx(0.105, abs=0.0002)
    assert second[1] - second[0] == pytest.approx(0.1 / 5**0.5, abs=0.0002)


def test_overflow_drops_also_speed_up_codel_on_that_flow() -> None:
    q = FqCodel(limit=1000)
    for _ in range(1001):
        q.enqueue(pkt(1, 1000, 0.0), 0.0)  # the last one overflows: a batch of 64 goes
    assert q.backlog_packets == 1001 - 64
    drops = _drop_times(q, 0.0, 0.001, 2)
    assert drops[0] == pytest.approx(0.105, abs=0.0011)
    assert drops[1] - drops[0] == pytest.approx(0.1 / 64**0.5, abs=0.0011)  # count starts at 64, not 1


def test_codel_never_drops_a_queue_of_one_mtu() -> None:
    q = FqCodel()
    t = 0.0
    for _ in range(1000):  # one packet at a time, each waiting 50 ms: old but alone
        q.enqueue(pkt(1, 1500, t), t)
        t += 0.05
        assert q.dequeue(t) is not None
    assert q.take_dropped() == [] and q.stats()["codel_drops"] == 0


# -- scheduling ----------------------------------------------------------------------------


def test_new_flow_goes_before_old_flows_backlog() -> None:
    q = FqCodel()
    for _ in range(20):
        q.enqueue(pkt(1, 1500), 0.0)
    assert q.dequeue(0.0).flow == 1
    assert q.dequeue(0.0).flow == 1  # deficit 1514: two sends, then flow 1 becomes old
    newcomer = pkt(2, 100)
    q.enqueue(newcomer, 0.0)
    assert q.dequeue(0.0) is newcomer
    assert q.stats()["new_flow_count"] == 2


def test_flow_emptied_while_new_goes_through_the_old_list_first() -> None:
    """RFC 8290 4.2: otherwise a flow could stay 'new' for ever by sending just under its quantum."""
    q = FqCodel()
    bulk = [pkt(1, 100) for _ in range(100)]
    for p in bulk:
        q.enqueue(p, 0.0)
    q.enqueue(pkt(2, 100), 0.0)
    out = [q.dequeue(0.0) for _ in range(18)]  # 16 bulk (one quantum), then flow 2, then bulk again
    assert [p.flow for p in out] == [1] * 16 + [2, 1]
    late = pkt(2, 100)
    q.enqueue(late, 0.0)  # flow 2 still sits on the old list: it waits for the bulk flow's turn
    after = [q.dequeue(0.0) for _ in range(15)]  # the bulk flow's fresh quantum: 15 more packets first
    assert [p.flow for p in after] == [1] * 14 + [2] and after[14] is late
    assert q.stats()["new_flow_count"] == 2


@pytest.mark.parametrize("sizes", [(1500, 1500), (1500, 100), (576, 1400)])
def test_drr_gives_two_bulk_flows_equal_bytes(sizes: tuple[int, int]) -> None:
    q = FqCodel(target=10.0, interval=20.0)  # CoDel out of the way: pure scheduling
    sent: dict[int, int] = defaultdict(int)
    for flow, size in enumerate(sizes):
        for _ in range(50):
            q.enqueue(pkt(flow, size), 0.0)
    for _ in range(5000):
        p = q.dequeue(0.0)
        sent[p.flow] += p.size
        q.enqueue(pkt(p.flow, p.size), 0.0)  # greedy
    a, b = sent[0], sent[1]
    assert abs(a - b) <= 0.05 * max(a, b)


def test_peek_is_what_dequeue_returns() -> None:
    q = FqCodel()
    for i in range(30):
        q.enqueue(pkt(i % 3, 200 + i), 0.0)
    t = 0.0
    while q.backlog_packets:
        t += 0.01
        head = q.peek(t)
        assert q.peek(t) is head
        backlog = q.backlog_packets
        assert q.dequeue(t) is head
        assert q.backlog_packets == backlog - 1
    assert q.next_event(t) is None


# -- overflow ------------------------------------------------------------------------------


def test_overflow_drops_from_the_head_of_the_fattest_flow() -> None:
    q = FqCodel(limit=100)
    fat = [pkt(1, 1000) for _ in range(80)]
    for p in fat:
        assert q.enqueue(p, 0.0) == []
    for _ in range(20):
        q.enqueue(pkt(2, 1500), 0.0)  # flow 2 has fewer bytes (30 kB vs 80 kB)
    dropped = q.enqueue(pkt(3, 100), 0.0)
    # Half of the fat flow's 80 kB: its 40 oldest packets, in one batch.
    assert ids(dropped) == ids(fat[:40])
    assert q.backlog_packets == 61
    assert q.stats()["overlimit_drops"] == 40


def test_overflow_batch_is_capped_by_drop_batch_size() -> None:
    q = FqCodel(limit=200, drop_batch_size=8)
    fat = [pkt(1, 1000) for _ in range(200)]
    for p in fat:
        q.enqueue(p, 0.0)
    assert ids(q.enqueue(pkt(2), 0.0)) == ids(fat[:8])


def test_change_to_a_smaller_limit_drops_from_fat_flows() -> None:
    q = make_leaf(LeafSpec.of("fq_codel"))
    assert isinstance(q, FqCodel)
    for i in range(100):
        q.enqueue(pkt(1 if i < 70 else 2), 0.0)
    dropped = q.change(LeafSpec.of("fq_codel", limit=50))
    assert len(dropped) == 50 and all(p.flow == 1 for p in dropped)
    assert q.limit == 50 and q.backlog_packets == 50


def test_change_of_flow_count_keeps_each_flow_in_order() -> None:
    q = FqCodel(flows=1024)
    held = [pkt(f, 100 + i) for i in range(10) for f in (3, 1027, 5)]  # 3 and 1027 share a bucket
    for p in held:
        q.enqueue(p, 0.0)
    assert q.change(LeafSpec.of("fq_codel", flows=16)) == []
    out = [q.dequeue(0.0) for _ in range(len(held))]
    for f in (3, 1027, 5):
        assert ids(p for p in out if p.flow == f) == ids(p for p in held if p.flow == f)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"target": 0}, "target"),
        ({"interval": -1}, "interval"),
        ({"limit": 0}, "limit"),
        ({"flows": 70000}, "flows"),
        ({"quantum": "big"}, "quantum"),
        ({"ecn": True}, "ecn"),
    ],
)
def test_bad_parameters_are_refused_by_name(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_leaf(LeafSpec("fq_codel", tuple(params.items())))


def test_stats_report_fat_flows_and_sojourn() -> None:
    q = FqCodel()
    for _ in range(10):
        q.enqueue(pkt(1, 1000, 0.0), 0.0)
    q.enqueue(pkt(2, 500, 0.5), 0.5)
    s = q.stats(now=1.0, top=1)
    assert s["top_flows"] == [{"flow": 1, "packets": 10, "bytes": 10_000, "sojourn": 1.0}]
    assert s["max_sojourn"] == 1.0 and s["backlog_bytes"] == 10_500
    assert s["ecn_mark"] == 0


# -- conservation --------------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("enq"), st.integers(0, 6), st.integers(40, 1600)),
    st.tuples(st.just("deq"), st.just(0), st.just(0)),
    st.tuples(st.just("peek"), st.just(0), st.just(0)),
    st.tuples(st.just("tick"), st.integers(1, 300), st.just(0)),
    st.tuples(st.just("change"), st.integers(2, 20), st.sampled_from([1, 4, 1024])),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, max_size=250))
def test_every_packet_is_released_dropped_or_held(ops: list[tuple[str, int, int]]) -> None:
    fixed = {"drop_batch_size": 3, "target": 0.002, "interval": 0.02}
    q = FqCodel(limit=12, flows=4, **fixed)  # type: ignore[arg-type]
    t = 0.0
    enqueued: list[QueuedPacket] = []
    released: list[QueuedPacket] = []
    dropped: list[QueuedPacket] = []
    for kind, a, b in ops:
        if kind == "enq":
            p = QueuedPacket(b, enqueued_at=t, flow=a)
            enqueued.append(p)
            dropped += q.enqueue(p, t)
        elif kind == "deq":
            p = q.dequeue(t)
            if p is not None:
                released.append(p)
        elif kind == "peek":
            q.peek(t)
        elif kind == "tick":
            t += a / 1000
        else:
            dropped += q.change(LeafSpec.of("fq_codel", limit=a, flows=b, **fixed))
        dropped += q.take_dropped()
        held = len(enqueued) - len(released) - len(dropped)
        assert q.backlog_packets == held
        assert (q.next_event(t) is None) == (held == 0)
    held_pkts = q.drain()
    assert q.backlog_packets == 0 and q.backlog_bytes == 0
    assert Counter(map(id, released + dropped + held_pkts)) == Counter(map(id, enqueued))
    # Within a flow, packets leave in arrival order (fq_codel never reorders a flow).
    arrival = {id(p): i for i, p in enumerate(enqueued)}
    by_flow: dict[int, list[int]] = defaultdict(list)
    for p in released:
        by_flow[p.flow].append(arrival[id(p)])
    assert all(seq == sorted(seq) for seq in by_flow.values())
