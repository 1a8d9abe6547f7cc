"""Equal per_host shares across workers (imqd.qdisc.host_share), driven by a fake clock.

Two (or three) Shapers play workers: one token store and one host table shared between them, each with its
own HTB and PerHost leaf, as the processes have.  The hosts of one class are split over the workers the way
the flow hash splits them; every host must get the same share of the class whatever the split.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.config import parse_config
from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.host_buckets import HostBucketTable, class_tag
from imqd.qdisc.host_share import POLL, SLACK, STALE, ClassShare, ShareTable, row_fields
from imqd.qdisc.perhost import PerHost
from imqd.qdisc.tokens import LocalTokenStore
from imqd.shaper import Shaper
from perhost_lockstep import LOCKSTEP_OPS, drive_in_lockstep

RATE = 40_000_000  # bit/s of the class
NET = 0xC6120000  # 198.18.0.0
TAG = class_tag("ingress", "subs")


def _config(per_host: dict[str, object] | None = None) -> object:
    return parse_config({"classes": [{"name": "subs", "direction": "ingress", "rate": RATE,
                                      "per_host": {"limit": 5000, **(per_host or {"key": "dst", "rate": 0})}}]})


def _workers(n: int, fair: bool = True, per_host: dict[str, object] | None = None) -> list[Shaper]:
    """``n`` workers sharing one class's tokens and one host table (with the share rows when ``fair``)."""
    store = LocalTokenStore()
    buckets = HostBucketTable.local()
    share = ShareTable.local(n)
    out = []
    for i in range(n):
        s = Shaper(tokens=store)
        s.host_buckets = HostBucketTable(buckets.ints, buckets.floats, None, share.as_worker(i) if fair else None)
        s.apply(_config(per_host), 0.0, slots={"subs": 0})
        out.append(s)
    return out


def _leaf(s: Shaper) -> PerHost:
    leaf = s.trees["ingress"].htb.leaf("subs")  # type: ignore[union-attr]
    assert isinstance(leaf, PerHost)
    return leaf


def _run(workers: list[Shaper], hosts: list[list[int]], seconds: float, t0: float = 0.0, size: int = 1500,
         sizes: dict[int, int] | None = None, offered: dict[int, float] | None = None, late: float = 0.0,
         seed: int = 0, sent: dict[int, int] | None = None, stop: dict[int, float] | None = None
         ) -> dict[int, int]:
    """Greedy hosts (``hosts[i]`` on worker ``i``) for ``seconds``; returns bytes released per host.

    ``offered`` caps a host's arrivals (bit/s) instead; ``stop`` ends a host's arrivals at that time.
    ``late``: each worker wakes up to that many seconds after the time it asked for (a busy CPU), drawn
    from ``seed``."""
    rng = random.Random(seed)
    sent = sent if sent is not None else {}
    sizes = sizes or {}
    offered = offered or {}
    stop = stop or {}
    nxt_arrival: dict[int, float] = {}
    for w, hs in enumerate(hosts):
        for h in hs:
            sent.setdefault(h, 0)
            if h in offered:
                nxt_arrival[h] = t0
            else:
                for _ in range(max(20, 400_000 // sizes.get(h, size))):  # never empty within a wake-up
                    workers[w].trees["ingress"].htb.enqueue(
                        QueuedPacket(sizes.get(h, size), t0, host=h), "subs", t0)
    wake = [t0] * len(workers)
    end = t0 + seconds
    while True:
        w = min(range(len(workers)), key=lambda i: wake[i])
        t = wake[w]
        if t >= end:
            break
        s = workers[w]
        htb = s.trees["ingress"].htb  # type: ignore[union-attr]
        for h in hosts[w]:  # paced arrivals
            if h in nxt_arrival and h not in stop:
                while nxt_arrival[h] <= t:
                    htb.enqueue(QueuedPacket(sizes.get(h, size), t, host=h), "subs", t)
                    nxt_arrival[h] += sizes.get(h, size) * 8 / offered[h]
        for p in s.release(t):
            sent[p.host] += p.size
            if p.host not in offered and not (p.host in stop and t >= stop[p.host]):
                htb.enqueue(QueuedPacket(p.size, t, host=p.host), "subs", t)  # still greedy
        ne = s.next_event(t)
        for h in hosts[w]:
            if h in nxt_arrival:
                ne = nxt_arrival[h] if ne is None else min(ne, nxt_arrival[h])
        ne = t + 0.001 if ne is None else max(ne, t + 1e-6)
        wake[w] = ne + (rng.random() * late if late else 0.0)
    return sent


def _shares(sent: dict[int, int]) -> dict[int, float]:
    total = sum(sent.values())
    return {h: b / total for h, b in sent.items()}


def test_one_host_against_three_gets_a_quarter() -> None:
    workers = _workers(2)
    sent = _run(workers, [[NET + 1], [NET + 2, NET + 3, NET + 4]], 4.0)
    shares = _shares(sent)
    assert all(abs(v - 0.25) < 0.005 for v in shares.values()), shares
    assert sum(sent.values()) * 8 / 4.0 == pytest.approx(RATE, rel=0.01), "the class is used in full"


def test_without_the_share_rows_the_lone_host_gets_more_than_its_share() -> None:
    """The defect the rows fix: each worker shares only among its own hosts."""
    shares = _shares(_run(_workers(2, fair=False), [[NET + 1], [NET + 2, NET + 3, NET + 4]], 4.0))
    assert shares[NET + 1] > 0.35, shares


@given(split=st.lists(st.integers(0, 4), min_size=2, max_size=3).filter(lambda s: sum(s) >= 2),
       sizes=st.lists(st.sampled_from([200, 600, 1500, 9000, 64000]), min_size=1, max_size=4),
       late=st.sampled_from([0.0, 0.0002, 0.002]), seed=st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_every_host_gets_an_equal_share_whatever_the_split(split: list[int], sizes: list[int], late: float,
                                                           seed: int) -> None:
    hosts, h = [], NET
    for n in split:
        hosts.append(list(range(h, h + n)))
        h += n
    every = [x for hs in hosts for x in hs]
    size_of = {x: sizes[i % len(sizes)] for i, x in enumerate(every)}
    seconds = 4.0
    sent = _run(_workers(len(split)), hosts, seconds, sizes=size_of, late=late, seed=seed)
    fair = sum(sent.values()) / len(every)
    # one super-packet per host either way is the granularity; +-3 % of the share beyond it
    tol = 0.03 * fair + 2 * max(sizes) + SLACK
    assert all(abs(b - fair) <= tol for b in sent.values()), (sent, fair)
    assert sum(sent.values()) * 8 / seconds >= RATE * 0.98, "holding back never wastes the class's tokens"


def test_a_host_that_goes_idle_stops_counting() -> None:
    workers = _workers(2)
    lone, three = [NET + 1], [NET + 2, NET + 3, NET + 4]
    first = _run(workers, [lone, three], 1.0, stop={NET + 1: 0.2})  # its backlog is gone ~0.3 s later
    assert _leaf(workers[0])._fair.act == 0  # noqa: SLF001 - what the other worker reads
    assert first[NET + 1] < first[NET + 2]
    later = _run(workers, [[], three], 1.0, t0=1.0)
    # with the lone host gone, the three share the whole class: a third each, not three quarters of it
    for h in three:
        assert later[h] * 8 == pytest.approx(RATE / 3, rel=0.02), later


def test_a_host_below_its_share_leaves_the_rest_to_the_others() -> None:
    """Max-min: a host offering 4 Mbit/s gets it, the three greedy hosts of the other worker share the rest."""
    workers = _workers(2)
    sent = _run(workers, [[NET + 1], [NET + 2, NET + 3, NET + 4]], 4.0, offered={NET + 1: 4_000_000})
    assert sent[NET + 1] * 8 / 4.0 == pytest.approx(4_000_000, rel=0.02)
    for h in (NET + 2, NET + 3, NET + 4):
        assert sent[h] * 8 / 4.0 == pytest.approx(12_000_000, rel=0.02), sent


def test_hosts_held_by_their_cap_do_not_hold_the_others_back() -> None:
    """Hosts waiting for their own cap are not busy for the class; with a cap above the equal share every
    host gets the share, with one below it every host gets its cap."""
    for ceil, each in ((15_000_000, 10_000_000), (8_000_000, 8_000_000)):
        workers = _workers(2, per_host={"key": "dst", "rate": 1_000_000, "ceil": ceil})
        sent = _run(workers, [[NET + 1, NET + 2, NET + 3], [NET + 4]], 4.0)
        for b in sent.values():
            assert b * 8 / 4.0 == pytest.approx(each, rel=0.03), (ceil, sent)


def test_a_worker_that_joins_gets_no_credit_for_its_idle_time() -> None:
    workers = _workers(2)
    three = [NET + 2, NET + 3, NET + 4]
    first = _run(workers, [[], three], 2.0)
    sent = _run(workers, [[NET + 1], three], 0.2, t0=2.0, sent=dict(first))
    new = {h: sent[h] - first.get(h, 0) for h in sent}
    # from the moment it joins it gets a quarter, not the two seconds of service the others had
    assert new[NET + 1] / sum(new.values()) == pytest.approx(0.25, abs=0.02), new


def test_a_dead_worker_is_cleared_and_a_stopped_one_goes_stale() -> None:
    workers = _workers(2)
    lone, three = [NET + 1], [NET + 2, NET + 3, NET + 4]
    _run(workers, [lone, three], 0.5)
    a = _leaf(workers[0])
    share = a._fair.table  # noqa: SLF001
    # worker 1 stops running with three busy hosts: it is ahead or behind; make it far behind
    b = _leaf(workers[1])._fair  # noqa: SLF001
    share.floats[b.own + 1] -= 10_000_000.0
    t = 0.5
    assert not a._fair.may_send(t + 0.01), "a busy worker far behind holds this one back"  # noqa: SLF001
    assert a._fair.may_send(t + STALE + 0.01), "until it has not been seen for STALE"  # noqa: SLF001
    share.floats[b.own + 2] = t + STALE  # seen again (a pause, not a death)
    a._fair.read_at = float("-inf")  # noqa: SLF001 - forget what it read
    assert not a._fair.may_send(t + STALE + 0.02)  # noqa: SLF001
    assert share.clear_worker(1) == 1, "the supervisor clears a dead worker's busy hosts"
    assert a._fair.may_send(t + STALE + 0.03)  # noqa: SLF001
    sent = _run(workers, [lone, []], 0.5, t0=t + STALE + 0.03)
    assert sent[NET + 1] * 8 / 0.5 == pytest.approx(RATE, rel=0.05), "the lone host gets the whole class"


def test_a_held_leaf_asks_to_be_polled_and_never_spins() -> None:
    workers = _workers(2)
    _run(workers, [[NET + 1], [NET + 2, NET + 3, NET + 4]], 0.1)
    a, b = _leaf(workers[0]), _leaf(workers[1])
    b._fair.table.floats[b._fair.own + 1] = 0.0  # noqa: SLF001 - the other worker is far behind
    a._fair.read_at = float("-inf")  # noqa: SLF001 - forget what it read
    t = 0.1
    assert a.peek(t) is None and a.dequeue(t) is None
    assert a.next_event(t) == pytest.approx(t + POLL)


def test_one_worker_with_share_rows_behaves_exactly_like_one_without() -> None:
    @given(LOCKSTEP_OPS)
    @settings(max_examples=100, deadline=None)
    def check(ops: list[tuple[str, int, int, float]]) -> None:
        table = HostBucketTable(*_views(), None, ShareTable.local(1))
        shared, alone = PerHost(rate=1_000_000, limit=20), PerHost(rate=1_000_000, limit=20)
        shared.share_buckets(table, TAG)
        now = drive_in_lockstep(shared, alone, ops, NET)
        st_shared = shared.stats(now)
        # as published at the leaf's last select (an enqueue publishes nothing: it costs a packet nothing)
        assert 0 <= st_shared.pop("busy_hosts_all_workers") <= len(shared._active)  # noqa: SLF001
        assert st_shared == alone.stats(now)

    check()


def _views() -> tuple[memoryview, memoryview]:
    view = memoryview(bytearray(1024 * 6 * 8))
    return view.cast("q"), view.cast("d")


def test_a_single_worker_shaper_has_no_share() -> None:
    s = Shaper()
    s.apply(_config(), 0.0)
    assert _leaf(s)._fair is None  # noqa: SLF001 - one worker: no table, the leaf's path is unchanged


def test_the_busy_hosts_of_every_worker_are_in_the_leaf_stats() -> None:
    workers = _workers(2)
    _run(workers, [[NET + 1], [NET + 2, NET + 3, NET + 4]], 0.2)
    assert _leaf(workers[0]).stats(0.2)["busy_hosts_all_workers"] == 4


# -- the table ------------------------------------------------------------------------


def test_rows_are_claimed_found_and_reclaimed() -> None:
    share = ShareTable.local(2, rows=8)
    tags = [class_tag("ingress", f"c{i}") for i in range(9)]
    claims = [ClassShare(share, tag) for tag in tags]
    for c in claims[:8]:
        c.set_active(1, 0.0)
    assert len({c.row for c in claims[:8]}) == 8, "8 classes, 8 rows"
    claims[8].set_active(1, 0.0)
    assert claims[8].row == -1 and share.overflows == 1, "no row left: per worker, counted"
    assert claims[8].may_send(0.0), "a class without a row is never held"
    again = ClassShare(share.as_worker(1), tags[3])
    again.set_active(2, 0.0)
    assert again.row == claims[3].row, "the other worker finds the same row"
    claims[5].set_active(0, 1.0)  # idle in every worker: its row may go to another class
    claims[8].set_active(0, 2.0)
    claims[8].set_active(1, 2.0)
    assert claims[8].row == claims[5].row
    claims[5].set_active(1, 3.0)  # back: its row is gone, it looks again (and finds none)
    assert claims[5].row == -1 and share.overflows == 2


def test_a_row_busy_but_unseen_for_a_minute_is_reclaimed() -> None:
    share = ShareTable.local(1, rows=1)
    a = ClassShare(share, class_tag("ingress", "a"))
    a.set_active(1, 0.0)
    b = ClassShare(share, class_tag("ingress", "b"))
    b.set_active(1, 30.0)
    assert b.row == -1
    b.set_active(0, 30.0)
    b.set_active(1, 61.0)
    assert b.row == 0


def test_table_arguments_are_checked() -> None:
    view = memoryview(bytearray(8 * row_fields(2)))
    with pytest.raises(ValueError, match="workers must be"):
        ShareTable(view.cast("q"), view.cast("d"), 0, 0, None)
    with pytest.raises(ValueError, match="worker must be"):
        ShareTable(view.cast("q"), view.cast("d"), 2, 2, None)
    with pytest.raises(ValueError, match="two equal views"):
        ShareTable(view.cast("q"), view.cast("d")[:-1], 2, 0, None)
    with pytest.raises(ValueError, match="no worker 5"):
        ShareTable(view.cast("q"), view.cast("d"), 2, 0, None).clear_worker(5)


def test_workers_attached_to_one_segment_share_the_rows() -> None:
    import multiprocessing as mp

    from imqd.shared_hosts import SharedHostTable

    lock = mp.get_context("spawn").Lock()
    owner = SharedHostTable.create(lock, workers=2, entries=1024)
    w0 = SharedHostTable.attach(owner.name, lock, workers=2, worker=0, entries=1024)
    w1 = SharedHostTable.attach(owner.name, lock, workers=2, worker=1, entries=1024)
    try:
        a, b = ClassShare(w0.share, TAG), ClassShare(w1.share, TAG)
        a.set_active(1, 0.0)
        b.set_active(3, 0.0)
        assert a.busy_hosts(0.0) == 4
        b.sent(30_000, 0.0)  # 10,000 bytes per host on worker 1
        a.sent(30_000, 0.0)  # 30,000 for the lone host: ahead by more than SLACK
        assert not a.may_send(0.001) and b.may_send(0.001)
        again = SharedHostTable.attach(owner.name, lock, workers=2, worker=1, entries=1024)
        again.close()  # a restarted worker 1 starts with no busy host
        assert a.busy_hosts(0.002) == 1 and a.may_send(0.002)
    finally:
        w0.close()
        w1.close()
        owner.close()


def test_the_supervisor_clears_the_busy_hosts_of_a_worker_that_dies() -> None:
    from types import SimpleNamespace

    from imqd.config import parse_config
    from imqd.supervisor import Supervisor

    sup = Supervisor([3, 4], parse_config({"classes": []}), cpus=[])
    try:
        assert sup.hosts is not None
        rows = sup.hosts.share
        alive, dying = ClassShare(rows.as_worker(0), TAG), ClassShare(rows.as_worker(1), TAG)  # queues 3, 4
        alive.set_active(1, 0.0)
        dying.set_active(3, 0.0)
        alive.sent(30_000, 0.0)
        assert not alive.may_send(0.0), "held back by the three busy hosts of queue 4's worker"
        w = sup.workers[4]
        w.process = SimpleNamespace(exitcode=-9, is_alive=lambda: False)
        sup._on_exit(w)  # noqa: SLF001 - what the monitor thread calls when the worker is gone
        assert alive.busy_hosts(0.0) == 1 and alive.may_send(0.0), "its hosts no longer count"
    finally:
        sup.store.close()
        sup.hosts.close()
        sup.counters.close()
