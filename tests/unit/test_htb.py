"""HTB behaviour on a fake clock: rates, borrowing, ceil, prio, DRR, shared token state (change(): test_htb_change)."""

from __future__ import annotations

import math
import threading
from array import array
from typing import Any

import pytest

from imqd.qdisc import htb as htb_mod
from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.leaves import LeafSpec, register_leaf
from imqd.qdisc.tokens import LocalTokenStore

M = 1e6


@pytest.fixture(autouse=True, params=sorted(htb_mod.SCHEDULERS))
def scheduler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every behaviour here holds for both schedulers: the row scheduler and the scan it is held to."""
    monkeypatch.setattr(htb_mod, "DEFAULT_SCHEDULER", request.param)
    return str(request.param)


def C(name: str, parent: str | None, rate: float, ceil: float | None = None, burst: int = 15000,
      cburst: int | None = None, **kw: Any) -> HTBClassParams:  # fmt: skip
    return HTBClassParams(name, parent, rate, ceil if ceil is not None else rate, burst,
                          cburst if cburst is not None else burst, **kw)  # fmt: skip


class Sim:
    """Drives an HTB like a worker does: wake at next_event, dequeue, keep some leaves saturated."""

    def __init__(self, htb: HTB, now: float = 0.0) -> None:
        self.htb = htb
        self.now = now
        self.queued: dict[str, int] = {}
        self.log: list[tuple[float, str, int]] = []
        self.flows: list[int] = []  # QueuedPacket.flow (a sequence number) of each release
        self.seq = 0

    def put(self, leaf: str, size: int = 1500, n: int = 1) -> list[QueuedPacket]:
        dropped = []
        for _ in range(n):
            self.seq += 1
            p = QueuedPacket(size, handle=leaf, enqueued_at=self.now, flow=self.seq)
            d = self.htb.enqueue(p, leaf, self.now)
            dropped += d
            self.queued[leaf] = self.queued.get(leaf, 0) + 1 - len(d)
        return dropped

    def run(self, until: float, busy: dict[str, int] | None = None, strict: bool = True) -> None:
        """Release until ``until``; leaves in ``busy`` (name -> packet size) never run dry."""
        busy = busy or {}
        while True:
            for leaf, size in busy.items():
                while self.queued.get(leaf, 0) < 3:
                    self.put(leaf, size)
            t = self.htb.next_event(self.now)
            if t is None or t > until:
                break
            assert t >= self.now
            self.now = t
            p = self.htb.dequeue(self.now)
            if strict and p is None:
                # The reference's next_event is exact; the row scheduler's may be early (a mode change that
                # releases nothing yet), but then its next answer must be later: no spinning.
                assert not self.htb.exact_next_event, f"dequeue failed at next_event {t}"
                later = self.htb.next_event(self.now)
                assert later is None or later > t, f"next_event stays at {t} and nothing can go"
            if p is not None:
                self.queued[p.handle] -= 1
                self.log.append((self.now, p.handle, p.size))
                self.flows.append(p.flow)
        self.now = max(self.now, until)

    def rate(self, leaf: str | None, t0: float, t1: float) -> float:
        """bit/s released by ``leaf`` (or all) in (t0, t1]."""
        b = sum(s for t, n, s in self.log if t0 < t <= t1 and (leaf is None or n == leaf))
        return b * 8 / (t1 - t0)


def max_window_excess(log: list[tuple[float, str, int]], rate: float, leaf: str | None = None) -> float:
    """max over windows [t_i, t_j] of bytes released in it minus rate*(t_j - t_i)/8."""
    r = rate / 8
    best, low, total = -math.inf, math.inf, 0.0
    for t, n, s in log:
        if leaf is not None and n != leaf:
            continue
        low = min(low, total - r * t)
        total += s
        best = max(best, total - r * t - low)
    return best


# -- rates ------------------------------------------------------------------------------


def test_single_class_holds_rate_plus_burst() -> None:
    h = HTB([C("a", None, 1 * M, 2 * M, burst=10000, cburst=20000)], 0.0)
    sim = Sim(h)
    sim.run(20.0, busy={"a": 1000})
    excess = max_window_excess(sim.log, 1 * M)
    # The kernel sends while tokens >= 0 and charges after: burst plus at most one packet.
    assert 10000 <= excess <= 10000 + 1000 + 1e-6
    sent = sum(s for _, _, s in sim.log)
    assert sent >= 1 * M * 20 / 8 + 10000 - 1000  # saturated: never below rate (after the burst)
    assert sent <= 1 * M * 20 / 8 + 10000 + 1000
    st = h.class_stats(sim.now)["a"]
    assert st["packets"] == len(sim.log) and st["bytes"] == sent and st["borrows"] == 0


def test_siblings_each_get_their_rate() -> None:
    h = HTB([C("root", None, 10 * M), C("a", "root", 6 * M, 10 * M), C("b", "root", 4 * M, 10 * M)], 0.0)
    sim = Sim(h)
    sim.run(12.0, busy={"a": 1500, "b": 1500})
    assert sim.rate("a", 2, 12) == pytest.approx(6 * M, rel=0.02)
    assert sim.rate("b", 2, 12) == pytest.approx(4 * M, rel=0.02)


def test_excess_is_shared_equally_with_equal_quantum() -> None:
    h = HTB([C("root", None, 10 * M), C("a", "root", 3 * M, 10 * M), C("b", "root", 2 * M, 10 * M)], 0.0)
    sim = Sim(h)
    sim.run(12.0, busy={"a": 1500, "b": 1500})
    assert sim.rate("a", 2, 12) == pytest.approx(5.5 * M, rel=0.02)
    assert sim.rate("b", 2, 12) == pytest.approx(4.5 * M, rel=0.02)


def test_borrows_up_to_ceil_and_no_further_when_sibling_idles() -> None:
    h = HTB([C("root", None, 10 * M), C("a", "root", 2 * M, 5 * M), C("b", "root", 2 * M, 10 * M)], 0.0)
    sim = Sim(h)
    sim.run(12.0, busy={"a": 1500})
    assert sim.rate("a", 2, 12) == pytest.approx(5 * M, rel=0.02)
    assert max_window_excess(sim.log, 5 * M) <= 15000 + 1500 + 1e-6  # ceil + cburst + one packet
    st = h.class_stats(sim.now)
    assert st["a"]["borrows"] > 0 and st["root"]["lends"] > 0
    assert st["a"]["lends"] > 0  # it also sent on its own rate


def test_inner_ceil_caps_the_sum_of_its_children() -> None:
    h = HTB(
        [C("top", None, 100 * M), C("mid", "top", 2 * M, 4 * M), C("a", "mid", 0.5 * M, 100 * M),
         C("b", "mid", 0.5 * M, 100 * M), C("other", "top", 1 * M, 100 * M)],
        0.0,
    )  # fmt: skip
    sim = Sim(h)
    sim.run(12.0, busy={"a": 1500, "b": 1500})
    total = sim.rate("a", 2, 12) + sim.rate("b", 2, 12)
    assert total == pytest.approx(4 * M, rel=0.02)
    assert sim.rate("a", 2, 12) == pytest.approx(2 * M, rel=0.03)
    st = h.class_stats(sim.now)
    assert st["mid"]["lends"] > 0 and st["top"]["lends"] > 0  # borrowed from both levels
    assert st["mid"]["borrows"] > 0  # mid itself borrowed from top for its children
    assert st["mid"]["bytes"] == st["a"]["bytes"] + st["b"]["bytes"]


def test_lower_prio_gets_the_excess_first() -> None:
    h = HTB(
        [C("root", None, 10 * M), C("a", "root", 1 * M, 10 * M, prio=0), C("b", "root", 1 * M, 10 * M, prio=1)], 0.0
    )
    sim = Sim(h)
    sim.run(12.0, busy={"a": 1500, "b": 1500})
    assert sim.rate("a", 2, 12) == pytest.approx(9 * M, rel=0.02)
    assert sim.rate("b", 2, 12) == pytest.approx(1 * M, rel=0.03)  # its guaranteed rate, nothing more


def test_drr_shares_excess_by_quantum() -> None:
    h = HTB(
        [C("root", None, 10 * M), C("a", "root", 1 * M, 10 * M, quantum=3000),
         C("b", "root", 1 * M, 10 * M, quantum=1500)],
        0.0,
    )  # fmt: skip
    sim = Sim(h)
    sim.run(12.0, busy={"a": 1500, "b": 1500})
    ea = sim.rate("a", 2, 12) - 1 * M
    eb = sim.rate("b", 2, 12) - 1 * M
    assert ea / eb == pytest.approx(2.0, rel=0.05)
    assert ea + eb == pytest.approx(8 * M, rel=0.02)


def test_several_roots_are_independent() -> None:
    h = HTB([C("r1", None, 2 * M), C("a", "r1", 1 * M, 2 * M), C("r2", None, 1 * M)], 0.0)
    sim = Sim(h)
    sim.run(11.0, busy={"a": 1000, "r2": 1000})
    assert sim.rate("a", 1, 11) == pytest.approx(2 * M, rel=0.02)
    assert sim.rate("r2", 1, 11) == pytest.approx(1 * M, rel=0.02)


def test_non_work_conserving_leaf_is_respected_and_does_not_block_others() -> None:
    tbf = LeafSpec.of("tbf", rate=1 * M, burst=3000)
    h = HTB([C("root", None, 10 * M), C("a", "root", 5 * M, 10 * M, leaf=tbf), C("b", "root", 1 * M, 2 * M)], 0.0)
    sim = Sim(h)
    sim.run(11.0, busy={"a": 1500, "b": 1500})  # strict: dequeue at next_event always succeeds
    assert sim.rate("a", 1, 11) == pytest.approx(1 * M, rel=0.02)
    assert sim.rate("b", 1, 11) == pytest.approx(2 * M, rel=0.02)


# -- data path details ----------------------------------------------------------------------


def test_next_event_and_dequeue_basics() -> None:
    h = HTB([C("root", None, 8000.0, burst=500), C("a", "root", 8000.0, burst=500)], 5.0)
    assert h.next_event(5.0) is None and h.dequeue(5.0) is None and h.peek(5.0) is None
    sim = Sim(h, 5.0)
    sim.put("a", 1000, n=3)
    assert h.next_event(5.0) == 5.0
    assert h.peek(5.0) is h.peek(5.0) is not None
    first = h.dequeue(5.0)
    assert first is not None and first.flow == 1
    # 500 bytes of credit at 1000 B/s: the first packet left 500 bytes of debt, the next is due in 0.5 s.
    assert h.next_event(5.0) == pytest.approx(5.5)
    assert h.dequeue(5.499) is None and h.peek(5.499) is None
    assert h.dequeue(h.next_event(5.0)).flow == 2  # type: ignore[arg-type, union-attr]
    assert (h.backlog_packets, h.backlog_bytes) == (1, 1000)
    rest = h.drain()
    assert [p.flow for p in rest] == [3]
    assert (h.backlog_packets, h.next_event(7.0)) == (0, None)


def test_enqueue_rejects_unknown_and_inner_classes_and_reports_drops() -> None:
    h = HTB([C("root", None, M), C("a", "root", M, leaf=LeafSpec.of("fifo", limit_packets=2))], 0.0)
    with pytest.raises(ValueError, match="unknown class 'nope'"):
        h.enqueue(QueuedPacket(100), "nope", 0.0)
    with pytest.raises(ValueError, match="'root' is an inner class"):
        h.enqueue(QueuedPacket(100), "root", 0.0)
    sim = Sim(h)
    assert sim.put("a", n=2) == []
    third = sim.put("a")
    assert len(third) == 1 and third[0].flow == 3
    st = h.class_stats(0.0)
    assert st["a"]["drops"] == 1 and st["a"]["backlog_packets"] == 2
    assert st["root"]["backlog_packets"] == 2 and st["root"]["backlog_bytes"] == 3000
    assert h.leaves() == {"a"} and h.is_leaf("a") and not h.is_leaf("root")


def test_modes_follow_tokens() -> None:
    h = HTB([C("root", None, 8000.0, 16000.0, burst=500, cburst=1000), C("a", "root", 8000.0, 16000.0,
             burst=500, cburst=1000)], 0.0)  # fmt: skip
    assert h.mode("a", 0.0) == "can_send"
    h.enqueue(QueuedPacket(1000), "a", 0.0)
    h.dequeue(0.0)  # tokens 0.5 s -> -0.5 s, ctokens 0.5 s -> 0
    h.enqueue(QueuedPacket(1000), "a", 0.0)
    assert h.mode("a", 0.0) == "may_borrow"
    assert h.dequeue(0.0) is None  # root has no tokens either (same rate, charged too)
    assert h.class_stats(0.0)["a"]["mode"] == "may_borrow"
    assert h.next_event(0.0) == pytest.approx(0.5) and h.dequeue(0.5) is not None
    h2 = HTB([C("x", None, 8000.0, 8000.0, burst=500, cburst=500)], 0.0)
    h2.enqueue(QueuedPacket(1000), "x", 0.0)
    h2.dequeue(0.0)
    assert h2.mode("x", 0.0) == "cant_send" and h2.mode("x", 1.0) == "can_send"
    with pytest.raises(ValueError, match="unknown class"):
        h2.mode("zz", 0.0)


# -- shared token state ----------------------------------------------------------------------


def run_two_workers(shared: bool, until: float) -> tuple[Sim, Sim]:
    tree = [C("root", None, 10 * M, slot=0), C("a", "root", 2 * M, 2 * M, slot=1)]
    store = LocalTokenStore()
    store.lock = threading.Lock()  # as the supervisor gives several workers: a store with other writers has a lock
    h1 = HTB(tree, 0.0, tokens=store)
    h2 = HTB(tree, 0.0, tokens=store if shared else LocalTokenStore())
    s1, s2 = Sim(h1), Sim(h2)
    now = 0.0
    order = (s1, s2)
    while True:
        order = order[::-1]  # neither worker always wins the race for the same tokens
        for s in order:
            while s.queued.get("a", 0) < 3:
                s.put("a")
        due = [t for t in (h1.next_event(now), h2.next_event(now)) if t is not None]
        now = min(due)
        if now > until:
            break
        for s in order:  # one worker may find the tokens gone: the other just charged them
            s.now = now
            p = s.htb.dequeue(now)
            if p is not None:
                s.queued["a"] -= 1
                s.log.append((now, "a", p.size))
    return s1, s2


def test_two_instances_sharing_a_store_hold_the_class_rate_together() -> None:
    s1, s2 = run_two_workers(shared=True, until=11.0)
    r1, r2 = s1.rate("a", 1, 11), s2.rate("a", 1, 11)
    assert r1 + r2 == pytest.approx(2 * M, rel=0.02)
    assert r1 > 0.2 * M and r2 > 0.2 * M  # both workers got to send
    merged = sorted(s1.log + s2.log)
    assert max_window_excess(merged, 2 * M) <= 15000 + 1500 + 1e-6
    p1, p2 = run_two_workers(shared=False, until=11.0)  # control: private stores double the rate
    assert p1.rate("a", 1, 11) + p2.rate("a", 1, 11) == pytest.approx(4 * M, rel=0.02)


def test_fresh_slot_reset_by_another_worker_starts_full(scheduler: str) -> None:
    store = LocalTokenStore()
    h = HTB([C("a", None, 8000.0, burst=500, slot=0)], 0.0, tokens=store)
    sim = Sim(h)
    sim.put("a", 1000, n=3)
    assert h.dequeue(0.0) is not None and h.dequeue(0.0) is None
    store.reset(0)  # e.g. the control plane handed the slot over afresh
    if scheduler == "scan":
        assert h.next_event(0.0) == 0.0  # the scan reads every slot each time
        assert h.dequeue(0.0) is not None
    else:
        # The row scheduler goes by the mode it cached (can't send until 0.5 s) and finds the fresh, full slot
        # then.  In imqd a slot is only reset for a class new to every worker, which reaches each worker as a
        # change (a rebuild), so a class it caches is never reset under it; here it is merely not early.
        assert h.next_event(0.0) == 0.5
        assert h.dequeue(0.5) is not None
    assert isinstance(store.values, array)


# -- leaf registry --------------------------------------------------------------------------


def test_leaf_spec_is_normalised_and_hashable() -> None:
    a = LeafSpec("fifo", (("limit_packets", 5), ("limit_bytes", 900)))
    b = LeafSpec("fifo", {"limit_bytes": 900, "limit_packets": 5})  # type: ignore[arg-type]
    assert a == b == LeafSpec.of("fifo", limit_packets=5, limit_bytes=900) and hash(a) == hash(b)
    assert a.params == (("limit_bytes", 900), ("limit_packets", 5))
    assert a.get("limit_packets") == 5 and a.get("nope", 7) == 7
    with pytest.raises(ValueError, match="'x' given twice"):
        LeafSpec("fifo", (("x", 1), ("x", 2)))
    with pytest.raises(ValueError, match="kind"):
        LeafSpec("")
    with pytest.raises(ValueError, match="already registered"):
        register_leaf("fifo", lambda spec: None)  # type: ignore[arg-type, return-value]


class DropOnDequeue:
    """A leaf that, like CoDel, may drop packets inside dequeue: it drops every packet with an odd flow."""

    work_conserving = False

    def __init__(self, spec: LeafSpec) -> None:
        self.q: list[QueuedPacket] = []
        self.dropped: list[QueuedPacket] = []
        self.changes = 0

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        self.q.append(pkt)
        return []

    def dequeue(self, now: float) -> QueuedPacket | None:
        while self.q:
            p = self.q.pop(0)
            if p.flow % 2 == 0:
                return p
            self.dropped.append(p)
        return None

    def peek(self, now: float) -> QueuedPacket | None:
        return self.q[0] if self.q else None

    def next_event(self, now: float) -> float | None:
        return now if self.q else None

    def drain(self) -> list[QueuedPacket]:
        out, self.q = self.q, []
        return out

    def take_dropped(self) -> list[QueuedPacket]:
        out, self.dropped = self.dropped, []
        return out

    def change(self, spec: LeafSpec) -> list[QueuedPacket]:
        self.changes += 1
        return []

    @property
    def backlog_packets(self) -> int:
        return len(self.q)

    @property
    def backlog_bytes(self) -> int:
        return sum(p.size for p in self.q)


def test_custom_leaf_dropping_in_dequeue_and_changed_in_place() -> None:
    register_leaf("test-drop-odd", DropOnDequeue, replace=True)
    spec = LeafSpec.of("test-drop-odd", level=1)
    tree = [C("root", None, 10 * M), C("a", "root", 1 * M, 10 * M, leaf=spec), C("b", "root", 1 * M, 10 * M)]
    h = HTB(tree, 0.0)
    sim = Sim(h)
    sim.put("a", n=3)  # flows 1, 2, 3
    sim.put("b", n=1)  # flow 4
    sim.run(1.0, strict=False)  # a leaf that drops on dequeue may return nothing when it promised something
    assert sorted(sim.flows) == [2, 4]
    dropped = h.take_dropped()
    assert sorted(p.flow for p in dropped) == [1, 3] and h.take_dropped() == []
    assert h.backlog_packets == 0 and h.next_event(1.0) is None  # the emptied leaf went idle
    assert h.class_stats()["a"]["drops"] == 2
    leafq = h._leaf_map["a"].q
    h.change([tree[0], C("a", "root", 1 * M, 10 * M, leaf=LeafSpec.of("test-drop-odd", level=2)), tree[2]], 1.0)
    assert h._leaf_map["a"].q is leafq and leafq.changes == 1  # changed in place via change(spec)


class ReadyAt:
    """A non-work-conserving leaf releasing each packet at its own time (``enqueued_at``), earliest first."""

    work_conserving = False

    def __init__(self, spec: LeafSpec) -> None:
        self.q: list[QueuedPacket] = []

    def enqueue(self, pkt: QueuedPacket, now: float) -> list[QueuedPacket]:
        self.q.append(pkt)
        self.q.sort(key=lambda p: p.enqueued_at)
        return []

    def peek(self, now: float) -> QueuedPacket | None:
        return self.q[0] if self.q and self.q[0].enqueued_at <= now else None

    def dequeue(self, now: float) -> QueuedPacket | None:
        return self.q.pop(0) if self.peek(now) is not None else None

    def next_event(self, now: float) -> float | None:
        return max(now, self.q[0].enqueued_at) if self.q else None

    def drain(self) -> list[QueuedPacket]:
        out, self.q = self.q, []
        return out

    @property
    def backlog_packets(self) -> int:
        return len(self.q)

    @property
    def backlog_bytes(self) -> int:
        return sum(p.size for p in self.q)


def test_next_event_follows_a_non_work_conserving_leaf_that_gets_an_earlier_packet() -> None:
    register_leaf("test-ready-at", ReadyAt, replace=True)
    h = HTB([C("root", None, 10 * M), C("a", "root", 1 * M, 10 * M, leaf=LeafSpec("test-ready-at"))], 0.0)
    h.enqueue(QueuedPacket(100, enqueued_at=10.0), "a", 0.0)
    assert h.next_event(0.0) == 10.0 and h.next_event(0.5) == 10.0
    h.enqueue(QueuedPacket(100, enqueued_at=1.0), "a", 0.5)
    assert h.next_event(0.5) == 1.0
    assert h.dequeue(0.99) is None
    released = h.dequeue(1.0)
    assert released is not None and released.enqueued_at == 1.0
    assert h.next_event(1.0) == 10.0
