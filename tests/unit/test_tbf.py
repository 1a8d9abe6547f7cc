"""Token bucket helper and the TBF qdisc, driven by a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.tbf import Tbf, TokenBucket


def test_bucket_starts_full_and_refills_at_rate() -> None:
    b = TokenBucket(rate=8000.0, burst=3000, now=0.0)  # 1000 bytes/s
    assert b.conforms(3000, 0.0)
    assert not b.conforms(3001, 1e9)  # more than the bucket holds: never
    assert b.time_until(3001, 0.0) == math.inf
    b.consume(3000, 0.0)
    assert b.tokens(0.0) == pytest.approx(0.0)
    assert not b.conforms(500, 0.0)
    assert b.time_until(500, 0.0) == pytest.approx(0.5)
    ready = b.ready_at(500)
    assert ready == pytest.approx(0.5)
    assert not b.conforms(500, math.nextafter(ready, 0.0))
    assert b.conforms(500, ready)  # exactly when promised, no rounding gap
    assert b.time_until(500, ready) == 0.0


def test_refill_is_capped_at_burst() -> None:
    b = TokenBucket(rate=8000.0, burst=2000, now=0.0)
    b.consume(2000, 0.0)
    assert b.tokens(1000.0) == pytest.approx(2000.0)
    b.consume(2000, 1000.0)
    assert not b.conforms(1, 1000.0)


def test_forced_consume_goes_negative_and_time_going_back_gives_no_credit() -> None:
    b = TokenBucket(rate=8000.0, burst=1000, now=10.0)
    b.consume(1000, 10.0)
    b.consume(500, 10.0)  # the caller sent although it did not conform
    assert b.tokens(10.0) == pytest.approx(-500.0)
    assert b.time_until(100, 10.0) == pytest.approx(0.6)
    b.consume(0, 9.0)  # a stale clock reading
    assert b.tokens(10.0) == pytest.approx(-500.0)


def test_bucket_without_start_time_is_full_at_any_clock() -> None:
    b = TokenBucket(rate=1e6, burst=1500)
    assert b.conforms(1500, 12345.678)


@pytest.mark.parametrize(
    ("rate", "burst", "field"),
    [(0, 1000, "rate"), (-1.0, 1000, "rate"), (math.inf, 1000, "rate"), (math.nan, 1000, "rate"),
     ("1M", 1000, "rate"), (1e6, 0, "burst"), (1e6, 1.5, "burst")],
)  # fmt: skip
def test_bad_parameters_name_the_field(rate: object, burst: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TokenBucket(rate, burst)  # type: ignore[arg-type]


@given(
    rate=st.floats(1e4, 1e8),
    burst=st.integers(1500, 100_000),
    sizes=st.lists(st.integers(40, 1500), min_size=1, max_size=200),
)
def test_bucket_long_run_bound(rate: float, burst: int, sizes: list[int]) -> None:
    """Sending whenever conforming: bytes in [0, t] <= burst + rate*t/8, and the sender is never held late."""
    b = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    sent = 0
    for s in sizes:
        t = b.ready_at(s)
        waited = t > now
        now = max(now, t)
        assert b.conforms(s, now)
        b.consume(s, now)
        sent += s
        assert sent <= burst + rate * now / 8 + 1e-6 * sent
        if waited:
            # Held exactly until the bucket had this packet's worth: it is empty now, so
            # everything the rate and the burst allowed has been sent -- not less.
            assert sent == pytest.approx(burst + rate * now / 8, rel=1e-9)


def test_tbf_shapes_to_rate_and_next_event_is_exact() -> None:
    q = Tbf(rate=80_000.0, burst=2000, limit_packets=100, now=0.0)  # 10 kB/s
    for i in range(50):
        assert q.enqueue(QueuedPacket(1000, handle=i), 0.0) == []
    assert not Tbf.work_conserving
    now = 0.0
    times = []
    while q.backlog_packets:
        t = q.next_event(now)
        assert t is not None and t >= now
        if t > now:
            probe = math.nextafter(t, 0.0)
            assert q.peek(probe) is None and q.dequeue(probe) is None
        now = t
        p = q.dequeue(now)
        assert p is not None and p.handle == len(times)
        times.append(now)
    assert times[:2] == [0.0, 0.0]  # the burst
    assert times[-1] == pytest.approx((50 * 1000 - 2000) / 10_000)
    assert q.next_event(now) is None


def test_tbf_drops_oversize_and_overflow() -> None:
    q = Tbf(rate=1e6, burst=1500, limit_packets=2)
    big = QueuedPacket(1501)
    assert q.enqueue(big, 0.0) == [big]
    assert q.enqueue(QueuedPacket(100), 0.0) == []
    assert q.enqueue(QueuedPacket(100), 0.0) == []
    third = QueuedPacket(100)
    assert q.enqueue(third, 0.0) == [third]
    assert q.stats()["drops"] == 2 and q.stats()["oversize_drops"] == 1


def test_tbf_change_drops_what_no_longer_fits() -> None:
    q = Tbf(rate=1e6, burst=3000, limit_packets=10)
    a, b, c = QueuedPacket(1000), QueuedPacket(2500), QueuedPacket(1000)
    for p in (a, b, c):
        q.enqueue(p, 0.0)
    dropped = q.change(rate=2e6, burst=2000, limit_packets=10)
    assert dropped == [b]  # larger than the new burst: it could never leave
    assert q.backlog_packets == 2 and q.bucket.rate == 2e6
    assert q.dequeue(0.0) is a and q.dequeue(0.0) is c
