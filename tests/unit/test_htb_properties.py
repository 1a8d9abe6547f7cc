"""Hypothesis properties of HTB under random trees, traffic, clocks and reconfigurations."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imqd.qdisc import htb as htb_mod
from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.leaves import LeafSpec

MTU = 1500
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, params=sorted(htb_mod.SCHEDULERS))
def scheduler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every property holds for both schedulers (the fixture's value does not change between examples)."""
    monkeypatch.setattr(htb_mod, "DEFAULT_SCHEDULER", request.param)
    return str(request.param)


def max_window_excess(releases: list[tuple[float, int]], rate: float) -> float:
    """max over windows [t_i, t_j] of bytes released in it minus rate*(t_j - t_i)/8 (linear scan)."""
    r = rate / 8
    best, low, total = -math.inf, math.inf, 0.0
    for t, s in releases:
        low = min(low, total - r * t)
        total += s
        best = max(best, total - r * t - low)
    return best


bursts = st.integers(MTU, 30_000)


@st.composite
def trees(draw: Any, max_inner: int = 2) -> list[HTBClassParams]:
    """A random, well-formed tree: children's rates fit in their parent's; names shuffled across roles."""
    if draw(st.integers(0, 5)) == 0:  # sometimes a lone class: root and leaf at once
        rate = draw(st.floats(1e5, 2e7))
        return [HTBClassParams("c0", None, rate, rate * draw(st.sampled_from([1.0, 3.0])), draw(bursts), draw(bursts))]
    names = draw(st.permutations([f"c{i}" for i in range(1, 8)]))
    rate = draw(st.floats(1e5, 2e7))
    root = HTBClassParams("c0", None, rate, rate * draw(st.sampled_from([1.0, 1.5])), draw(bursts), draw(bursts))
    out = [root]
    n_inner = draw(st.integers(0, max_inner))
    n_leaves = draw(st.integers(n_inner + 1, n_inner + 3))
    parents = [root]
    for i in range(n_inner):
        r = root.rate / (n_inner + 1) * draw(st.floats(0.3, 1.0))
        cl = HTBClassParams(names[i], "c0", r, draw(st.floats(r, root.ceil)), draw(bursts), draw(bursts),
                            prio=draw(st.integers(0, 2)))  # fmt: skip
        out.append(cl)
        parents.append(cl)
    kids = {p.name: 0 for p in parents}
    order = [parents[(i + 1) % len(parents)] for i in range(n_leaves)]
    for p in order:
        kids[p.name] += 1
    for i, p in enumerate(order):
        r = p.rate / kids[p.name] * draw(st.floats(0.2, 1.0))
        if draw(st.integers(0, 4)) == 0:
            leaf = LeafSpec.of("tbf", rate=draw(st.floats(r / 2, 2 * p.ceil)), burst=draw(bursts),
                               limit_packets=draw(st.integers(1, 100)))  # fmt: skip
        else:
            leaf = LeafSpec.of("fifo", limit_packets=draw(st.integers(1, 100)))
        out.append(
            HTBClassParams(names[n_inner + i], p.name, r, draw(st.floats(r, p.ceil * 1.2)), draw(bursts),
                           draw(bursts), prio=draw(st.integers(0, 2)), quantum=draw(st.integers(200, 4000)),
                           leaf=leaf)  # fmt: skip
        )
    return out


# One step of traffic: (leaf pick, packet size, how many, time to advance as a fraction of 10 MTU-times).
steps = st.lists(
    st.tuples(st.integers(0, 10), st.integers(40, MTU), st.integers(0, 25), st.floats(0.0, 1.0)),
    min_size=1,
    max_size=40,
)


class Driver:
    """A worker on a fake clock that checks next_event against dequeue at every wake-up."""

    def __init__(self, classes: list[HTBClassParams]) -> None:
        self.h = HTB(classes, 0.0)
        self.now = 0.0
        self.unit = 10 * MTU * 8 / classes[0].rate
        self.enq = self.released = self.dropped = self.returned = 0
        self.enq_bytes = self.rel_bytes = self.drop_bytes = self.ret_bytes = 0
        self.log: dict[str, list[tuple[float, int]]] = {}
        self.outstanding: dict[int, QueuedPacket] = {}
        self.seq = 0

    def put(self, leaf: str, size: int, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            p = QueuedPacket(size, handle=leaf, enqueued_at=self.now, flow=self.seq)
            self.enq += 1
            self.enq_bytes += size
            self.outstanding[id(p)] = p
            for d in self.h.enqueue(p, leaf, self.now):
                self.dropped += 1
                self.drop_bytes += d.size
                del self.outstanding[id(d)]

    def advance(self, until: float, probes: int = 4) -> None:
        """Release everything due up to ``until``, checking that no dequeue could succeed before next_event."""
        h = self.h
        while True:
            e = h.next_event(self.now)
            if e is None or e > until:
                break
            assert e >= self.now
            if e > self.now:
                for k in range(probes):
                    t = self.now + (e - self.now) * k / probes
                    if t >= e:  # e - now can be one ulp: the probe then rounds up onto e itself
                        continue
                    assert h.dequeue(t) is None, f"dequeue succeeded at {t} before next_event {e}"
                assert h.dequeue(math.nextafter(e, -math.inf)) is None
            self.now = e
            p = h.dequeue(e)
            if p is None:
                # exact for the reference; the row scheduler may wake early, but must then move on
                assert not h.exact_next_event, f"dequeue failed at next_event {e}"
                later = h.next_event(e)
                assert later is None or later > e, f"next_event stays at {e} and nothing can go"
                self.collect_drops()
                continue
            self.released += 1
            self.rel_bytes += p.size
            self.log.setdefault(p.handle, []).append((e, p.size))
            del self.outstanding[id(p)]
        self.collect_drops()
        self.now = max(self.now, until)

    def change(self, classes: list[HTBClassParams], fallback: str | None) -> None:
        for p in self.h.change(classes, self.now, fallback=fallback):
            self.returned += 1
            self.ret_bytes += p.size
            del self.outstanding[id(p)]
        self.collect_drops()

    def collect_drops(self) -> None:
        for p in self.h.take_dropped():
            self.dropped += 1
            self.drop_bytes += p.size
            del self.outstanding[id(p)]

    def check_conservation(self) -> None:
        h = self.h
        assert self.enq == self.released + self.dropped + self.returned + h.backlog_packets
        assert self.enq_bytes == self.rel_bytes + self.drop_bytes + self.ret_bytes + h.backlog_bytes
        assert len(self.outstanding) == h.backlog_packets


def run_traffic(d: Driver, ops: list[tuple[int, int, int, float]]) -> None:
    leaves = sorted(d.h.leaves())
    for pick, size, n, frac in ops:
        d.put(leaves[pick % len(leaves)], size, n)
        d.check_conservation()
        d.advance(d.now + frac * d.unit)
        d.check_conservation()


@SETTINGS
@given(classes=trees(), ops=steps)
def test_conservation_and_next_event_never_late(classes: list[HTBClassParams], ops: Any) -> None:
    d = Driver(classes)
    run_traffic(d, ops)
    d.advance(d.now + 1000 * d.unit)  # let everything out
    d.check_conservation()
    assert d.h.backlog_packets == 0 and d.h.next_event(d.now) is None
    stats = d.h.class_stats(d.now)
    for name in d.h.leaves():
        assert stats[name]["packets"] == len(d.log.get(name, []))
    assert sum(stats[n]["packets"] for n in d.h.leaves()) == d.released
    assert sum(stats[n]["drops"] for n in d.h.leaves()) == d.dropped


@SETTINGS
@given(classes=trees(), ops=steps)
def test_rate_and_ceil_bounds_in_every_window(classes: list[HTBClassParams], ops: Any) -> None:
    d = Driver(classes)
    run_traffic(d, ops)
    d.advance(d.now + 50 * d.unit)
    by_name = {c.name: c for c in classes}
    for name, rel in d.log.items():
        c = by_name[name]
        slack = 1e-9 * sum(s for _, s in rel) + 1e-6
        # A leaf never exceeds its ceil: ctokens are checked on every release (plus one packet, as the kernel).
        assert max_window_excess(rel, c.ceil) <= c.cburst + MTU + slack
        if c.parent is None:  # a root cannot borrow: its rate holds
            assert max_window_excess(rel, c.rate) <= c.burst + MTU + slack


@SETTINGS
@given(classes=trees(), ops=steps, step=st.floats(1e-3, 0.2))
def test_next_event_vs_fine_clock_stepping(classes: list[HTBClassParams], ops: Any, step: float) -> None:
    """Stepping the clock finely, the first time dequeue succeeds is never before next_event."""
    d = Driver(classes)
    h = d.h
    leaves = sorted(h.leaves())
    delta = step * d.unit
    for pick, size, n, _ in ops:
        d.put(leaves[pick % len(leaves)], size, n)
        e = h.next_event(d.now)
        if e is None:
            continue
        t = d.now
        for _ in range(20_000):
            if h.dequeue(t) is not None:
                break
            t += delta
        else:
            raise AssertionError("no dequeue succeeded while next_event promised one")
        assert e <= t  # never late
        if h.exact_next_event:
            assert t - e < delta * 1.000001  # and not needlessly early: the exact time
        d.now = t


@SETTINGS
@given(
    first=trees(),
    changes=st.lists(st.tuples(trees(), st.integers(0, 10), st.booleans(), steps), min_size=1, max_size=3),
)
def test_change_loses_and_duplicates_nothing(first: list[HTBClassParams], changes: Any) -> None:
    d = Driver(first)
    for classes, pick, use_fallback, ops in changes:
        run_traffic(d, ops[:10])
        leaves = sorted(
            c.name for c in classes if not any(o.parent == c.name for o in classes)
        )
        d.change(classes, leaves[pick % len(leaves)] if use_fallback else None)
        d.check_conservation()
        assert d.h.leaves() == set(leaves)
    run_traffic(d, changes[-1][3][10:])
    drained = d.h.drain()
    assert sorted(id(p) for p in drained) == sorted(d.outstanding)
    assert d.h.backlog_packets == 0


def _state(h: HTB) -> tuple[Any, ...]:
    """Everything send_now may touch: token state, DRR deficits and pointers, per-class counters."""
    classes = tuple((cl.name, tuple(cl.deficit)) for cl in h._order)
    return tuple(h.tokens.values), tuple(h._ptr), classes, tuple(h.counters.values), h.backlog_packets


@SETTINGS
@given(classes=trees(), ops=steps)
def test_send_now_is_enqueue_then_dequeue_on_an_idle_tree(classes: list[HTBClassParams], ops: Any) -> None:
    """The worker's fast path changes exactly what enqueue + dequeue would, whenever it says yes.

    Two trees see the same arrivals at the same times; A offers each packet to send_now first, B only
    enqueues and, when A's send_now succeeded, dequeues at once.  Both must release the same packets at the
    same times and end in the same state."""
    a, b = HTB(classes, 0.0), HTB(classes, 0.0)
    leaves = sorted(a.leaves())
    now = 0.0
    for pick, size, count, advance in ops:
        leaf = leaves[pick % len(leaves)]
        for _ in range(count):
            pa, pb = QueuedPacket(size), QueuedPacket(size)
            if a.send_now(leaf, size, now):
                assert not b.busy, "send_now said yes although a packet was waiting"
                assert not b.enqueue(pb, leaf, now)
                assert b.dequeue(now) is pb, "enqueue + dequeue would have let it through too"
            else:
                assert len(a.enqueue(pa, leaf, now)) == len(b.enqueue(pb, leaf, now))
                for h in (a, b):
                    while h.dequeue(now) is not None:
                        pass
                    h.take_dropped()
            assert _state(a) == _state(b)
        now += advance * 10 * MTU * 8 / classes[0].rate


def test_send_now_refuses_when_a_packet_waits_or_tokens_lack() -> None:
    h = HTB([HTBClassParams("a", None, 8000.0, 8000.0, 1500, 1500),
             HTBClassParams("b", None, 8000.0, 8000.0, 1500, 1500)], 0.0)
    assert h.send_now("a", 1000, 0.0) and h.send_now("a", 1000, 0.0), "tokens >= 0 let a packet go, as HTB"
    assert not h.send_now("a", 1000, 0.0), "the bucket is overdrawn now"
    assert h.backlog_packets == 0, "a refusal queues nothing"
    assert h.enqueue(QueuedPacket(1000), "a", 0.0) == []
    assert not h.send_now("b", 100, 0.0), "b has tokens, but a packet waits: it must queue behind"
    assert not h.send_now("a", 1000, 10.0), "a packet still waits in a"
    assert h.dequeue(10.0) is not None and h.send_now("b", 100, 10.0), "idle again: b goes straight through"


def test_send_now_skips_no_leaf_that_keeps_state() -> None:
    fq = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500, leaf=LeafSpec.of("fq_codel"))], 0.0)
    assert not fq.send_now("a", 100, 0.0), "fq_codel tracks flows per packet: never skipped"
    small = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500, leaf=LeafSpec.of("fifo", limit_bytes=500))], 0.0)
    assert not small.send_now("a", 600, 0.0), "a packet its FIFO would refuse is not sent past it"
    assert small.send_now("a", 400, 0.0)
