"""The C fast path of HTB.send_now (imqd/qdisc/_htbfast.c) against the Python reference, bit for bit.

Two trees get the same operations at the same times -- send_now, enqueue, dequeue rounds, live changes,
drains, fresh token slots and charges by "another worker" -- one with the C lanes, one without; every
answer and every piece of state send_now may touch (token doubles, DRR deficits and pointers, counters)
must be identical after each step.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_htb_properties import MTU, trees

from imqd.qdisc import htb as htb_mod
from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.counters import FIELDS_PER_COUNTER_SLOT, LocalCounters
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.leaves import LeafSpec
from imqd.qdisc.tokens import FIELDS_PER_SLOT, LocalTokenStore

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

needs_c = pytest.mark.skipif(not htb_mod.ACCELERATED, reason="the C extension is not compiled")


def test_the_c_fast_path_is_compiled() -> None:
    """CI builds it (scripts/bootstrap.sh installs gcc and python3-dev); a silent build failure would cost
    the worker most of its packet rate, so it fails here instead."""
    assert htb_mod.ACCELERATED, "imqd.qdisc._htbfast is missing: run `pip install -e .` with gcc and python3-dev"


def state(h: HTB, now: float) -> tuple[Any, ...]:
    classes = tuple((cl.name, tuple(cl.deficit)) for cl in h._order)
    tokens = tuple(struct_bits(v) for v in h.tokens.values)
    return tokens, tuple(h._ptr), classes, tuple(h.counters.values), h.backlog_packets, h.class_stats(now)


def struct_bits(v: float) -> Any:
    """A double's exact value, NaN included (NaN != NaN would make equal states compare unequal)."""
    return "nan" if v != v else v.hex()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 10), st.integers(40, MTU), st.integers(1, 30)),
        st.tuples(st.just("enqueue"), st.integers(0, 10), st.integers(40, MTU), st.integers(1, 5)),
        st.tuples(st.just("dequeue")),
        st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
        st.tuples(st.just("fresh"), st.integers(0, 10)),  # a class's slot made fresh (reset by a change)
        st.tuples(st.just("later"), st.integers(0, 10), st.floats(1e-6, 1e-2)),  # another worker's later t_c
        st.tuples(st.just("drain")),
        st.tuples(st.just("busy"), st.booleans()),
        st.tuples(st.just("change"), st.integers(0, 1)),
    ),
    min_size=1,
    max_size=40,
)


class FakeLock:
    """A shared store's lock as HTB uses it: acquire(block, timeout) and release(), with a busy switch."""

    def __init__(self) -> None:
        self.busy = False
        self.held = False
        self.acquired = self.released = self.waits = 0

    def acquire(self, block: bool = True, timeout: float = -1) -> bool:
        if block:
            self.waits += 1
        if self.busy or self.held:
            return False
        self.held = True
        self.acquired += 1
        return True

    def release(self) -> None:
        assert self.held, "released a lock it did not hold"
        self.held = False
        self.released += 1


class LockedStore(LocalTokenStore):
    def __init__(self) -> None:
        super().__init__()
        self.lock = FakeLock()


class MemoryviewStore(LocalTokenStore):
    """A fixed-size store whose values are a memoryview of doubles, as the shared-memory store's are."""

    SLOTS = 64

    def __init__(self) -> None:
        super().__init__()
        self.values = memoryview(bytearray(8 * FIELDS_PER_SLOT * self.SLOTS)).cast("d")
        for i in range(len(self.values)):
            self.values[i] = math.nan

    def ensure(self, slots: int) -> None:
        if slots > self.SLOTS:
            raise ValueError("store full")


def make_store(kind: str) -> LocalTokenStore:
    return {"local": LocalTokenStore, "locked": LockedStore, "memoryview": MemoryviewStore}[kind]()


class MemoryviewCounters:
    """Counters whose values are a memoryview of int64, as a worker's block of the shared segment is."""

    def __init__(self, slots: int = MemoryviewStore.SLOTS) -> None:
        self.values = memoryview(bytearray(8 * FIELDS_PER_COUNTER_SLOT * slots)).cast("q")
        self.slots = slots

    def ensure(self, slots: int) -> None:
        if slots > self.slots:
            raise ValueError("counters full")


def make_counters(kind: str) -> Any:
    return MemoryviewCounters() if kind == "memoryview" else LocalCounters()


@needs_c
@SETTINGS
@given(classes=trees(), other=trees(), steps=ops, store=st.sampled_from(["local", "locked", "memoryview"]))
def test_c_lanes_do_exactly_what_the_python_reference_does(classes: list[HTBClassParams],
                                                             other: list[HTBClassParams], steps: Any,
                                                             store: str) -> None:
    """The per-packet caller's way (DirectionTree.admit): the lane first, the reference only for its -1."""
    fast_store, ref_store = make_store(store), make_store(store)
    fast = HTB(classes, 0.0, tokens=fast_store, counters=make_counters(store))
    ref = HTB(classes, 0.0, tokens=ref_store, accelerate=False, counters=make_counters(store))
    assert fast.accelerated and not ref.accelerated  # (a tree of TBF leaves only has no lanes)
    now = 0.0
    unit = 10 * MTU * 8 / classes[0].rate
    for step in steps:
        kind = step[0]
        leaves = sorted(fast.leaves())
        if kind == "send":
            _, pick, size, count = step
            leaf = leaves[pick % len(leaves)]
            for _ in range(count):
                lane = fast.lanes.get(leaf)
                sent = lane.send(size, now) if lane is not None else -1
                ours = sent == 1 if sent >= 0 else fast.send_now_reference(leaf, size, now)
                assert ours == ref.send_now(leaf, size, now)
        elif kind == "enqueue":
            _, pick, size, count = step
            leaf = leaves[pick % len(leaves)]
            for _ in range(count):
                assert len(fast.enqueue(QueuedPacket(size), leaf, now)) == len(ref.enqueue(QueuedPacket(size), leaf, now))
        elif kind == "dequeue":
            for h in (fast, ref):
                while h.dequeue(now) is not None:
                    pass
                h.take_dropped()
        elif kind == "advance":
            now += step[1] * unit
        elif kind in ("fresh", "later"):
            order = fast._order
            cl = order[step[1] % len(order)]
            for h in (fast, ref):
                if kind == "fresh":
                    h.tokens.reset(cl.slot)
                else:
                    h.tokens.values[cl.base + 2] = now + step[2]
        elif kind == "busy":  # another worker holds the shared lock: the lane leaves it to Python
            for st_ in (fast_store, ref_store):
                if isinstance(st_, LockedStore):
                    st_.lock.busy = step[1]
        elif kind == "drain":
            assert len(fast.drain()) == len(ref.drain())
        else:  # change to the other tree and back: lanes are rebuilt over the new state
            target = other if step[1] else classes
            assert len(fast.change(target, now)) == len(ref.change(target, now))
            fast.take_dropped()
            ref.take_dropped()
        assert state(fast, now) == state(ref, now), f"after {step}"
        assert fast_store.timeouts == ref_store.timeouts


@needs_c
@pytest.mark.parametrize("store", ["local", "locked", "memoryview"])
def test_lanes_decide_steady_traffic_themselves(store: str) -> None:
    """A lane that always said -1 (leave it to Python) would pass the differential test vacuously: in steady
    traffic over and under the rate it must answer nearly every send itself, and answer like the reference.
    (Deterministic: the differential test's random trees may give the lanes few sends of their own.)"""
    classes = [HTBClassParams("p", None, 8e6, 8e6, 3000, 3000),
               HTBClassParams("a", "p", 4e6, 8e6, 3000, 6000),
               HTBClassParams("b", "p", 4e6, 8e6, 3000, 6000)]
    fast = HTB(classes, 0.0, tokens=make_store(store), counters=make_counters(store))
    ref = HTB(classes, 0.0, tokens=make_store(store), accelerate=False, counters=make_counters(store))
    decided = sent_total = 0
    now = 0.0
    for i in range(4000):
        leaf = "ab"[i % 2]
        now += 0.0005 if i < 2000 else 0.002  # 2 MB/s offered against 1 MB/s, then 0.5 MB/s
        sent = fast.lanes[leaf].send(1000, now)
        decided += sent >= 0
        ours = sent == 1 if sent >= 0 else fast.send_now_reference(leaf, 1000, now)
        assert ours == ref.send_now(leaf, 1000, now), (i, leaf)
        sent_total += ours
    assert decided >= 0.95 * 4000, decided
    assert 1000 < sent_total < 4000, "both sent and held-back answers were exercised"


@needs_c
def test_a_lane_charges_under_the_shared_lock_and_leaves_a_busy_lock_to_python() -> None:
    store = LockedStore()
    h = HTB([HTBClassParams("a", None, 8e6, 8e6, 15_000, 15_000)], 0.0, tokens=store)
    lock = store.lock
    lane = h.lanes["a"]
    assert lane.send(1000, 0.0) == 1
    assert (lock.acquired, lock.released, lock.held, lock.waits) == (1, 1, False, 0), "one try, no wait"
    lock.busy = True
    before = state(h, 0.0)
    assert lane.send(1000, 0.0) == -1, "a busy lock is Python's case"
    assert state(h, 0.0) == before, "and the lane changed nothing"
    assert h.send_now("a", 1000, 0.0), "Python waits (briefly), then charges anyway"
    assert lock.waits == 1 and store.timeouts == 1
    assert h.class_stats(0.0)["a"]["packets"] == 2


@needs_c
def test_a_lane_charges_a_dequeued_packet_as_python_does_and_leaves_a_busy_lock_to_python() -> None:
    """HTB.dequeue charges through the leaf's lane (the shared lock held for the arithmetic only): the same
    tokens, DRR step and counters as HTB._charge; with the lock busy it changes nothing and answers -1."""
    tree = [HTBClassParams("p", None, 8e6, 8e6, 3000, 3000), HTBClassParams("a", "p", 8e5, 8e6, 1500, 6000),
            HTBClassParams("b", "p", 8e5, 8e6, 1500, 1500)]
    fast_store, ref_store = LockedStore(), LockedStore()
    fast = HTB(tree, 0.0, tokens=fast_store)
    ref = HTB(tree, 0.0, tokens=ref_store, accelerate=False)
    for now, key, size in ((0.0, 0, 1500), (0.0, 0, 1500), (0.001, 7 << 3, 900), (0.5, 0, 60)):
        assert fast.lanes["a"].charge(key, size, now) == 1
        ref._charge(ref._leaf_map["a"], key, size, now)
        assert state(fast, now) == state(ref, now)
    assert (fast_store.lock.acquired, fast_store.lock.released, fast_store.lock.waits) == (4, 4, 0)
    fast_store.lock.busy = True
    before = state(fast, 1.0)
    assert fast.lanes["a"].charge(0, 1500, 1.0) == -1 and state(fast, 1.0) == before
    with pytest.raises(ValueError):
        fast.lanes["a"].charge(64, 1500, 1.0)
    with pytest.raises(TypeError):
        fast.lanes["a"].charge(0, 1500)


@needs_c
def test_a_lane_answers_like_send_now_for_each_case() -> None:
    h = HTB([HTBClassParams("p", None, 8e6, 8e6, 3000, 3000),
             HTBClassParams("a", "p", 8e5, 8e6, 1500, 6000),
             HTBClassParams("b", "p", 8e5, 8e6, 1500, 1500)], 0.0)
    a = h.lanes["a"]
    assert a.send(1500, 0.0) == 1 and a.send(1500, 0.0) == 1, "a's own tokens (>= 0 lets a packet go)"
    assert a.send(1500, 0.0) == 1, "borrowed from p"
    st_ = h.class_stats(0.0)
    assert (st_["a"]["lends"], st_["a"]["borrows"], st_["p"]["lends"], st_["p"]["packets"]) == (2, 1, 1, 3)
    assert a.send(1500, 0.0) == 0, "p's ceil bucket is overdrawn now: wait"
    small = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500, leaf=LeafSpec.of("fifo", limit_bytes=500))], 0.0)
    assert small.lanes["a"].send(600, 0.0) == 0 and small.lanes["a"].send(400, 0.0) == 1, "the FIFO's limit holds"
    assert h.enqueue(QueuedPacket(100), "b", 1.0) == []
    assert a.send(100, 1.0) == 0, "a packet waits in b and may be sendable now: queue behind it"
    assert h.next_event(1.0) == 1.0 and a.send(100, 1.0) == 0, "b can be sent now: still queue behind it"
    h.drain()
    assert a.send(100, 1.0) == 1, "drain opens the gate the lane watches, in place"
    h.tokens.reset(h._leaf_map["a"].slot)
    assert a.send(100, 1.0) == -1, "a fresh slot is filled by Python"
    with pytest.raises(TypeError):
        a.send(100)


@needs_c
def test_a_lane_refuses_what_it_cannot_use() -> None:
    lane_type, shared_type = htb_mod.Lane, htb_mod.Shared
    h = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500)], 0.0)
    cl = h._leaf_map["a"]
    spec = ((0, 0, 1.0, 1.0, 1e-6, 1e-6, 0),)
    counts = array("q", [0] * 7)

    def shared(values: Any, counters: Any = counts) -> Any:
        return shared_type(values, counters, h._ptr, None)

    good = (0, 1514, 0, 1500, cl.deficit)
    lane_type(shared(array("d", [0.0] * 3)), spec, *good)
    with pytest.raises(TypeError, match="values must be a writable buffer"):
        shared(array("f", [0.0] * 3))
    with pytest.raises(TypeError, match="counters must be a writable buffer"):
        shared(array("d", [0.0] * 3), array("d", [0.0] * 7))
    with pytest.raises(ValueError, match="ptr needs 64"):
        shared_type(array("d", [0.0] * 3), counts, [0] * 8, None)
    with pytest.raises(TypeError):
        lane_type(array("d", [0.0] * 3), spec, *good)  # not a Shared
    with pytest.raises(ValueError, match="outside its buffer"):
        lane_type(shared(array("d", [0.0] * 2)), spec, *good)
    with pytest.raises(ValueError, match="outside its buffer"):
        lane_type(shared(array("d", [0.0] * 3), array("q", [0] * 4)), spec, *good)
    with pytest.raises(ValueError, match="1..8"):
        lane_type(shared(array("d", [0.0] * 3)), spec * 9, *good)
    with pytest.raises(ValueError, match="deficit needs 8"):
        lane_type(shared(array("d", [0.0] * 3)), spec, *good[:-1], [0] * 7)
    with pytest.raises(TypeError, match="already initialised"):
        h.lanes["a"].__init__(shared(array("d", [0.0] * 3)), spec, *good)
    with pytest.raises(TypeError, match="already initialised"):
        h._gate.__init__(array("d", [0.0] * 3), counts, h._ptr, None)
    with pytest.raises(RuntimeError, match="not initialised"):
        lane_type.__new__(lane_type, shared(array("d")), spec).send(100, 0.0)
    store = array("d", [0.0, 0.0, 0.0])
    lane = lane_type(shared(store), spec, *good)
    del store[:]  # the lane keeps no buffer export, so the store can change under it: it must notice
    with pytest.raises(RuntimeError, match="smaller"):
        lane.send(100, 0.0)
    shrinking = array("q", [0] * 7)
    lane = lane_type(shared(array("d", [0.0] * 3), shrinking), spec, *good)
    del shrinking[:]
    with pytest.raises(RuntimeError, match="counters buffer is smaller"):
        lane.send(100, 0.0)


@needs_c
def test_the_gate_is_two_doubles_shared_by_every_lane_of_a_tree() -> None:
    h = HTB([HTBClassParams("p", None, 8e6, 8e6, 1500, 1500)]
            + [HTBClassParams(f"l{i}", "p", 1e6, 8e6, 1500, 1500) for i in range(3)], 0.0)
    gate = h._gate
    assert len(gate) == 2 and gate[0] == math.inf and gate[1] == 0.0
    assert h.lanes["l0"].send(100, 1.0) == 1 and h.lanes["l2"].send(100, 1.0) == 1
    assert gate[1] == 2.0, "both lanes counted their bypass in the one gate"
    gate[0] = 0.5  # closed from 0.5 on (what next_event writes while a leaf is backlogged)
    assert h.lanes["l1"].send(100, 1.0) == 0 and gate[1] == 2.0
    with pytest.raises(IndexError):
        gate[2]
    with pytest.raises(TypeError):
        gate[0] = "x"


def test_a_tree_without_c_uses_no_lanes() -> None:
    h = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500)], 0.0, accelerate=False)
    assert not h.accelerated and not h.lanes and h.send_now("a", 100, 0.0)
    assert math.isclose(h.class_stats(0.0)["a"]["bytes"], 100)


class ListStore(LocalTokenStore):
    """A store whose values are a plain list: valid for HTB, but no buffer of doubles for a lane."""

    def __init__(self) -> None:
        super().__init__()
        self.values = []

    def ensure(self, slots: int) -> None:
        missing = slots * FIELDS_PER_SLOT - len(self.values)
        if missing > 0:
            self.values.extend([math.nan] * missing)


def test_a_lane_that_cannot_be_built_leaves_its_leaf_to_python() -> None:
    """Building lanes runs inside change(), after the new tree is in place: it must never make change() fail."""
    h = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500)], 0.0, tokens=ListStore())
    assert h.lanes == {} and h.send_now("a", 100, 0.0)
    big = HTB([HTBClassParams("p", None, 8e6, 8e6, 1500, 1500),
               HTBClassParams("a", "p", 8e5, 8e6, 1500, 1500, quantum=2**70),  # no C long holds it
               HTBClassParams("b", "p", 8e5, 8e6, 1500, 1500)], 0.0)
    assert set(big.lanes) == ({"b"} if htb_mod.ACCELERATED else set())
    assert big.send_now("a", 100, 0.0) and big.send_now("b", 100, 0.0)
    assert big.change([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500, quantum=2**70)], 1.0) == []


@needs_c
def test_a_lane_leaves_sizes_it_cannot_hold_to_python() -> None:
    h = HTB([HTBClassParams("a", None, 8e6, 8e6, 1500, 1500)], 0.0)
    lane = h.lanes["a"]
    assert lane.send(2**70, 0.0) == 0, "bigger than any FIFO passes: it must queue, as send_now says"
    assert lane.send(-(2**70), 0.0) == -1 and lane.send(1.5, 0.0) == -1, "not a size C can hold: Python decides"
    assert h.class_stats(0.0)["a"]["packets"] == 0
