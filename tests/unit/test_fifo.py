"""Tail-drop FIFO: limits, order, change() and conservation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.fifo import Fifo


def pk(size: int, tag: object = None) -> QueuedPacket:
    return QueuedPacket(size=size, handle=tag)


def test_packet_limit_drops_the_arriving_packet_and_keeps_order() -> None:
    f = Fifo(limit_packets=3)
    for i in range(3):
        assert f.enqueue(pk(100, i), 0.0) == []
    late = pk(100, "late")
    assert f.enqueue(late, 0.0) == [late]
    assert f.drops == 1
    assert (f.backlog_packets, f.backlog_bytes) == (3, 300)
    assert [f.dequeue(0.0).handle for _ in range(3)] == [0, 1, 2]
    assert f.dequeue(0.0) is None
    assert (f.backlog_packets, f.backlog_bytes) == (0, 0)


def test_byte_limit_and_oversized_packet() -> None:
    f = Fifo(limit_packets=100, limit_bytes=1000)
    assert f.enqueue(pk(600), 0.0) == []
    second = pk(500)
    assert f.enqueue(second, 0.0) == [second]  # 1100 > 1000
    assert f.enqueue(pk(400), 0.0) == []  # exactly 1000 fits
    assert f.backlog_bytes == 1000
    empty = Fifo(limit_packets=10, limit_bytes=100)
    big = pk(101)
    assert empty.enqueue(big, 0.0) == [big]
    assert empty.drops == 1 and empty.backlog_packets == 0


def test_peek_next_event_and_drain() -> None:
    f = Fifo(limit_packets=10)
    assert f.peek(1.0) is None and f.next_event(1.0) is None
    a, b = pk(10, "a"), pk(20, "b")
    f.enqueue(a, 0.0)
    f.enqueue(b, 0.0)
    assert f.peek(5.0) is a and f.backlog_packets == 2  # peek does not remove
    assert f.next_event(5.0) == 5.0  # work-conserving: due at once
    assert f.drain() == [a, b]
    assert (f.backlog_packets, f.backlog_bytes, f.next_event(6.0)) == (0, 0, None)


def test_change_keeps_the_head_and_drops_the_newest() -> None:
    f = Fifo(limit_packets=10)
    pkts = [pk(100, i) for i in range(6)]
    for p in pkts:
        f.enqueue(p, 0.0)
    dropped = f.change(4, None)
    assert dropped == pkts[4:]  # newest, returned in arrival order
    assert f.drops == 2
    dropped = f.change(10, 250)
    assert dropped == pkts[2:4]
    assert [f.dequeue(0.0) for _ in range(2)] == pkts[:2]
    assert f.change(100, None) == []  # growing drops nothing
    assert f.limit_packets == 100 and f.limit_bytes is None


@pytest.mark.parametrize(
    ("lp", "lb", "field"),
    [(0, None, "limit_packets"), (-1, None, "limit_packets"), (True, None, "limit_packets"),
     (1.5, None, "limit_packets"), (10, 0, "limit_bytes"), (10, "x", "limit_bytes")],
)  # fmt: skip
def test_bad_limits_name_the_field(lp: object, lb: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Fifo(lp, lb)  # type: ignore[arg-type]
    f = Fifo(5)
    f.enqueue(pk(1), 0.0)
    with pytest.raises(ValueError, match=field):
        f.change(lp, lb)  # type: ignore[arg-type]
    assert (f.limit_packets, f.limit_bytes, f.backlog_packets) == (5, None, 1)  # unchanged


ops = st.lists(
    st.one_of(
        st.tuples(st.just("enq"), st.integers(1, 1500)),
        st.tuples(st.just("deq"), st.just(0)),
        st.tuples(st.just("change"), st.integers(1, 8)),
    ),
    max_size=60,
)


@given(ops=ops, limit_bytes=st.one_of(st.none(), st.integers(1, 5000)))
def test_conservation_and_limits(ops: list[tuple[str, int]], limit_bytes: int | None) -> None:
    f = Fifo(limit_packets=5, limit_bytes=limit_bytes)
    enq = out = dropped = 0
    expect: list[QueuedPacket] = []  # model of the queue
    for op, arg in ops:
        if op == "enq":
            p = pk(arg)
            enq += 1
            d = f.enqueue(p, 0.0)
            dropped += len(d)
            if not d:
                expect.append(p)
        elif op == "deq":
            p = f.dequeue(0.0)
            if p is not None:
                assert p is expect.pop(0)
                out += 1
        else:
            d = f.change(arg, limit_bytes)
            dropped += len(d)
            for p in reversed(d):  # returned in arrival order; the newest are the ones to go
                assert p is expect.pop()
        assert f.backlog_packets <= f.limit_packets
        if limit_bytes is not None:
            assert f.backlog_bytes <= limit_bytes
        assert f.backlog_bytes == sum(p.size for p in expect)
        assert enq == out + dropped + f.backlog_packets
    assert f.drops == dropped
