"""The delay leaf (netem-like delay, jitter and loss), driven by a fake clock."""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.leaves import LeafSpec, make_leaf
from imqd.qdisc.netem import Netem


def run(q: Netem, arrivals: list[float]) -> list[tuple[float, float, int]]:
    """Enqueue one packet at each arrival time and release each at the time ``next_event`` names.

    Returns (arrival, release, arrival index) per released packet, in release order.
    """
    pending = sorted(arrivals)
    sent: list[tuple[float, float, int]] = []
    index: dict[int, tuple[int, float]] = {}
    i = 0
    t = 0.0
    while i < len(pending) or q.backlog_packets:
        ne = q.next_event(t)
        if i < len(pending) and (ne is None or pending[i] <= ne):
            t = pending[i]
            p = QueuedPacket(100, enqueued_at=t)
            index[id(p)] = (i, t)
            q.enqueue(p, t)
            i += 1
            continue
        assert ne is not None
        t = ne
        head = q.peek(t)
        p = q.dequeue(t)
        assert p is not None and p is head, "next_event named a time at which nothing was due"
        n, at = index[id(p)]
        sent.append((at, t, n))
    return sent


def test_fixed_delay_within_a_millisecond() -> None:
    q = make_leaf(LeafSpec.of("delay", delay=0.04))
    assert isinstance(q, Netem)
    sent = run(q, [k * 0.003 for k in range(500)])
    assert len(sent) == 500
    for at, out, _ in sent:
        assert abs((out - at) - 0.04) <= 0.001


def test_packet_not_released_early() -> None:
    q = Netem(delay=0.05)
    p = QueuedPacket(100)
    q.enqueue(p, 1.0)
    assert q.peek(1.049) is None and q.dequeue(1.049) is None
    assert q.next_event(1.0) == pytest.approx(1.05)
    assert q.dequeue(1.05) is p
    assert q.next_event(1.05) is None


def test_uniform_jitter_stays_in_bounds_and_never_reorders() -> None:
    q = Netem(delay=0.05, jitter=0.02, seed=1)
    sent = run(q, [k * 0.001 for k in range(3000)])
    order = [n for _, _, n in sent]
    assert order == sorted(order)  # FIFO release
    delays = [out - at for at, out, _ in sent]
    assert min(delays) >= 0.03 - 1e-9
    # Held back only by the packet in front, so never beyond its latest release.
    assert max(delays) <= 0.07 + 1e-9
    assert 0.05 < statistics.mean(delays) < 0.07


def test_reorder_lets_jitter_overtake() -> None:
    q = Netem(delay=0.05, jitter=0.02, reorder=True, seed=1)
    sent = run(q, [k * 0.001 for k in range(2000)])
    order = [n for _, _, n in sent]
    assert order != sorted(order)
    delays = [out - at for at, out, _ in sent]
    assert min(delays) >= 0.03 - 1e-9 and max(delays) <= 0.07 + 1e-9
    assert statistics.mean(delays) == pytest.approx(0.05, abs=0.001)  # unbiased: nobody waits on others
    assert statistics.pstdev(delays) == pytest.approx(0.02 / math.sqrt(3), rel=0.1)  # uniform on +-jitter


def test_normal_jitter_has_the_configured_spread() -> None:
    q = Netem(delay=0.1, jitter=0.01, distribution="normal", reorder=True, seed=7)
    sent = run(q, [k * 0.001 for k in range(4000)])
    delays = [out - at for at, out, _ in sent]
    assert statistics.mean(delays) == pytest.approx(0.1, abs=0.001)
    assert statistics.pstdev(delays) == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("loss, seed", [(0.5, 1), (10.0, 2), (33.3, 3), (90.0, 4)])
def test_loss_rate_within_binomial_bounds(loss: float, seed: int) -> None:
    n = 20_000
    q = Netem(loss=loss, limit=n, seed=seed)
    lost = sum(len(q.enqueue(QueuedPacket(100), 0.0)) for _ in range(n))
    p = loss / 100
    sd = math.sqrt(n * p * (1 - p))
    assert abs(lost - n * p) <= 3.29 * sd, (lost, n * p)  # two-sided 99.9 % interval
    assert q.backlog_packets == n - lost
    assert q.stats()["loss_drops"] == lost


def test_no_loss_and_full_loss() -> None:
    keep = Netem(loss=0, limit=10_000, seed=1)
    assert all(keep.enqueue(QueuedPacket(100), 0.0) == [] for _ in range(5000))
    lose = Netem(loss=100, seed=1)
    assert all(len(lose.enqueue(QueuedPacket(100), 0.0)) == 1 for _ in range(5000))


def test_same_seed_same_fate() -> None:
    def fates(seed: int) -> list[int]:
        q = Netem(loss=30, jitter=0.01, delay=0.02, limit=10_000, seed=seed)
        return [len(q.enqueue(QueuedPacket(100), 0.0)) for _ in range(300)]

    assert fates(5) == fates(5)
    assert fates(5) != fates(6)


def test_limit_drops_the_arrival() -> None:
    q = Netem(delay=1.0, limit=3)
    for _ in range(3):
        assert q.enqueue(QueuedPacket(100), 0.0) == []
    extra = QueuedPacket(100)
    assert [id(p) for p in q.enqueue(extra, 0.0)] == [id(extra)]
    assert q.stats()["limit_drops"] == 1


def test_change_applies_to_new_packets_and_keeps_held_ones() -> None:
    q = Netem(delay=0.1)
    first = QueuedPacket(100)
    q.enqueue(first, 0.0)
    assert q.change(LeafSpec.of("delay", delay=0.01)) == []
    second = QueuedPacket(100)
    q.enqueue(second, 0.0)
    # No reordering: the quicker packet still waits for the one in front.
    assert q.dequeue(0.01) is None
    assert q.dequeue(0.1) is first and q.dequeue(0.1) is second
    # Switching reordering on keeps what is held.
    q.enqueue(a := QueuedPacket(1), 0.2)
    q.change(LeafSpec.of("delay", delay=0.001, reorder=True))
    q.enqueue(b := QueuedPacket(2), 0.2)
    assert q.dequeue(0.201) is b and q.dequeue(0.211) is a


def test_change_to_a_smaller_limit_drops_the_last_to_leave() -> None:
    q = Netem(delay=0.1)
    held = [QueuedPacket(100 + i) for i in range(5)]
    for i, p in enumerate(held):
        q.enqueue(p, i * 0.001)
    dropped = q.change(LeafSpec.of("delay", delay=0.1, limit=2))
    assert [id(p) for p in dropped] == [id(p) for p in held[2:]]
    assert q.backlog_packets == 2 and q.backlog_bytes == 201


@pytest.mark.parametrize(
    "params, field",
    [
        ({"delay": -0.1}, "delay"),
        ({"jitter": "5ms"}, "jitter"),
        ({"loss": 101}, "loss"),
        ({"limit": 0}, "limit"),
        ({"distribution": "pareto"}, "distribution"),
        ({"reorder": "yes"}, "reorder"),
        ({"seed": 1.5}, "seed"),
        ({"rate": 1}, "rate"),
    ],
)
def test_bad_parameters_are_refused_by_name(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_leaf(LeafSpec("delay", tuple(params.items())))


# -- conservation -------------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("enq"), st.integers(40, 1600)),
    st.tuples(st.just("deq"), st.just(0)),
    st.tuples(st.just("tick"), st.integers(1, 50)),
    st.tuples(st.just("change"), st.integers(1, 10)),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, max_size=200), reorder=st.booleans(), loss=st.sampled_from([0, 20, 100]))
def test_every_packet_is_released_dropped_or_held(ops: list[tuple[str, int]], reorder: bool, loss: int) -> None:
    params = {"delay": 0.01, "jitter": 0.008, "loss": loss, "reorder": reorder, "seed": 3}
    q = Netem(limit=6, **params)  # type: ignore[arg-type]
    t = 0.0
    enqueued: list[QueuedPacket] = []
    released: list[QueuedPacket] = []
    dropped: list[QueuedPacket] = []
    for kind, a in ops:
        if kind == "enq":
            p = QueuedPacket(a, enqueued_at=t)
            enqueued.append(p)
            dropped += q.enqueue(p, t)
        elif kind == "deq":
            head = q.peek(t)
            p = q.dequeue(t)
            assert p is head
            if p is None:
                ne = q.next_event(t)
                assert ne is None or ne > t
            else:
                assert t - p.enqueued_at >= 0.002 - 1e-9  # never before delay - jitter
                released.append(p)
        elif kind == "tick":
            t += a / 1000
        else:
            dropped += q.change(LeafSpec.of("delay", limit=a, **params))
        assert q.backlog_packets == len(enqueued) - len(released) - len(dropped)
        assert q.backlog_bytes == sum(p.size for p in enqueued) - sum(p.size for p in released + dropped)
    rest = q.drain()
    assert q.backlog_packets == 0 and q.backlog_bytes == 0
    assert Counter(map(id, released + dropped + rest)) == Counter(map(id, enqueued))
    if not reorder:
        arrival = {id(p): i for i, p in enumerate(enqueued)}
        seq = [arrival[id(p)] for p in released]
        assert seq == sorted(seq)
