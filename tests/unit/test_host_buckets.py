"""Per-host caps shared by several workers (imqd.qdisc.host_buckets), driven by a fake clock.

Two PerHost leaves on one table play two workers whose queues both hold traffic of the same host (its host
pairs hashed to different queues): the host's cap must hold in total, where two unshared leaves give it
twice its cap.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.host_buckets import WAYS, HostBucketTable, SharedBucket, class_tag
from imqd.qdisc.perhost import PerHost
from imqd.qdisc.tbf import TokenBucket
from perhost_lockstep import LOCKSTEP_OPS, drive_in_lockstep

HOST = 0xC6120A02  # 198.18.10.2
CAP = 5_000_000  # bit/s
TAG = class_tag("ingress", "subscribers")


def _greedy(leaves: list[PerHost], seconds: float, size: int = 1000, hosts: tuple[int, ...] = (HOST,)
            ) -> dict[int, int]:
    """Keep every leaf's queue of every host non-empty; each leaf sends whenever it may (a worker with an idle
    link). Returns the bytes released per host, all leaves together."""
    sent = {h: 0 for h in hosts}
    for leaf in leaves:
        for h in hosts:
            for _ in range(50):
                leaf.enqueue(QueuedPacket(size, 0.0, host=h), 0.0)
    t = 0.0
    while t < seconds:
        nxt = seconds
        for leaf in leaves:  # the workers take turns at the same instant, as two CPUs would
            ne = leaf.next_event(t)
            if ne is not None and ne <= t:
                p = leaf.dequeue(t)
                if p is not None:
                    sent[p.host] += p.size
                    leaf.enqueue(QueuedPacket(size, t, host=p.host), t)  # still greedy
                    ne = t
            if ne is not None:
                nxt = min(nxt, max(ne, t + 1e-6))
        t = nxt
    return sent


def test_two_workers_sharing_the_table_hold_the_cap_in_total() -> None:
    table = HostBucketTable.local()
    leaves = [PerHost(rate=CAP), PerHost(rate=CAP)]
    for leaf in leaves:
        leaf.share_buckets(table, TAG)
    seconds = 4.0
    got = _greedy(leaves, seconds)[HOST] * 8 / seconds
    burst_bits = leaves[0].cfg.burst * 8 / seconds
    assert CAP * 0.99 <= got <= CAP + burst_bits + 1000 * 8 / seconds, got
    assert table.overflows == 0


def test_without_sharing_each_worker_gives_the_host_its_whole_cap() -> None:
    """The defect the table fixes: two workers, two buckets, twice the cap."""
    got = _greedy([PerHost(rate=CAP), PerHost(rate=CAP)], 4.0)[HOST] * 8 / 4.0
    assert got > 1.9 * CAP


def test_hosts_and_classes_have_buckets_of_their_own() -> None:
    table = HostBucketTable.local()
    other = HOST + 1
    a = [PerHost(rate=CAP), PerHost(rate=CAP)]
    b = PerHost(rate=CAP)  # another class with a host of the same address
    for leaf in a:
        leaf.share_buckets(table, TAG)
    b.share_buckets(table, class_tag("ingress", "guests"))
    got = _greedy([*a, b], 4.0, hosts=(HOST, other))
    burst_bits = b.cfg.burst * 8 / 4.0
    for host in (HOST, other):
        # each host gets its cap once in class a (two workers) and once in class b (each with its own burst)
        assert 2 * CAP * 0.99 <= got[host] * 8 / 4.0 <= 2 * (CAP + burst_bits) + 2 * 1000 * 8 / 4.0, (host, got)


def _busy_set(table: HostBucketTable, burst: int = 3000) -> list[SharedBucket]:
    """Fill the only set of `table` with hosts that have just spent their bursts."""
    buckets = [SharedBucket(table, TAG, HOST + i, CAP, burst) for i in range(WAYS)]
    for b in buckets:
        b.consume(burst, 0.0)
    return buckets


def test_a_refilled_entry_is_taken_over_and_a_busy_set_falls_back_to_the_worker() -> None:
    table = HostBucketTable.local(entries=WAYS)  # one set of WAYS entries
    busy = _busy_set(table)
    last = SharedBucket(table, TAG, HOST + WAYS, CAP, 3000)
    assert last.conforms(1000, 0.0), "a host without an entry starts full"
    assert table.overflows == 0, "looking claims nothing"
    last.consume(3000, 0.0)
    assert table.overflows == 1, "the charge found the set busy: a bucket of its own"
    assert not last.conforms(1000, 0.001), "which is charged like any other"
    # once an entry's bucket has refilled (3000 B at 5 Mbit/s: 4.8 ms) another host may take it over
    fresh = SharedBucket(table, TAG, HOST + 100, CAP, 3000)
    fresh.consume(1000, 0.01)
    assert table.overflows == 1
    # the host whose entry was taken over lost nothing: its bucket was full, and it starts full again
    assert busy[0].tokens(0.01) == 3000


def test_a_host_on_its_own_bucket_keeps_its_debt_when_the_table_has_room_again() -> None:
    table = HostBucketTable.local(entries=WAYS)
    _busy_set(table, burst=3000)
    x, ref = SharedBucket(table, TAG, 0x0A000001, CAP, 30000), TokenBucket(CAP, 30000)
    x.consume(30000, 0.0), ref.consume(30000, 0.0)  # on its own bucket, which is now empty
    now = 0.005  # the other hosts' 3000-byte buckets have refilled: their entries are free to take
    assert x.conforms(30000, now) == ref.conforms(30000, now) is False
    assert x.tokens(now) == ref.tokens(now)
    x.consume(1000, now), ref.consume(1000, now)
    assert x.ready_at(30000) == ref.ready_at(30000), "the debt went on, not into a fresh entry"
    assert table.overflows == 1


def test_overflows_count_hosts_not_packets() -> None:
    table = HostBucketTable.local(entries=WAYS)
    _busy_set(table)
    leaf = PerHost(rate=CAP, burst=3000)
    leaf.share_buckets(table, TAG)
    t = 0.0
    for _ in range(37):
        leaf.enqueue(QueuedPacket(1000, t, host=0x0A000001), t)
        leaf.dequeue(t)
        t += 0.0001
    assert table.overflows == 1


def test_looking_at_a_bucket_claims_no_entry() -> None:
    table = HostBucketTable.local()
    b = SharedBucket(table, TAG, HOST, CAP, 3000)
    b.conforms(1000, 1.0), b.tokens(1.0), b.ready_at(1000), b.time_until(1000, 1.0)
    assert not any(table.ints), "only a charge writes to the table"


def test_packets_without_a_host_do_not_share_the_all_ones_ipv6_hosts_bucket() -> None:
    table = HostBucketTable.local()
    nobody = SharedBucket(table, TAG, -1, CAP, 3000)  # PerHost's key for packets without a host
    ones = SharedBucket(table, TAG, (1 << 128) - 1, CAP, 3000)  # ffff:...:ffff with prefix6 128
    nobody.consume(3000, 0.0)
    assert ones.conforms(3000, 0.0) and not nobody.conforms(3000, 0.0)


def test_shared_bucket_matches_token_bucket_arithmetic() -> None:
    @given(st.lists(st.tuples(st.sampled_from(["consume", "conforms", "ready", "tokens", "rate"]),
                              st.integers(1, 4000), st.floats(0, 0.01)), max_size=60))
    @settings(max_examples=150, deadline=None)
    def check(ops: list[tuple[str, int, float]]) -> None:
        table = HostBucketTable.local()
        shared, ref = SharedBucket(table, TAG, HOST, CAP, 4000), TokenBucket(CAP, 4000)
        now = 0.0
        for op, size, dt in ops:
            now += dt
            if op == "consume":
                shared.consume(size, now), ref.consume(size, now)
            elif op == "conforms":
                assert shared.conforms(size, now) == ref.conforms(size, now)
            elif op == "ready":
                assert shared.ready_at(size) == ref.ready_at(size)
            elif op == "tokens":
                assert shared.tokens(now) == ref.tokens(now)
            else:
                rate = CAP // 2 + size * 1000
                shared.set_rate(rate, 4000), ref.set_rate(rate, 4000)

    check()


def test_class_tag_is_the_same_in_every_process() -> None:
    """Workers are separate processes: a tag from str hashing (randomised per process) would not match."""
    code = "from imqd.qdisc.host_buckets import class_tag; print(class_tag('ingress', 'subscribers'))"
    tags = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout.strip() for seed in ("1", "2")}
    assert tags == {str(TAG)} and TAG != 0


def test_tables_need_two_equal_views() -> None:
    view = memoryview(bytearray(8 * 6 * WAYS))
    try:
        HostBucketTable(view.cast("q"), view.cast("d")[:-1], None)
    except ValueError as exc:
        assert "two equal views" in str(exc)
    else:
        raise AssertionError("unequal views accepted")


@given(LOCKSTEP_OPS)
@settings(max_examples=150, deadline=None)
def test_one_leaf_on_a_table_behaves_exactly_like_one_without(ops: list[tuple[str, int, int, float]]) -> None:
    """One worker with the table (a single-queue deployment never gets one, but nothing may change if it did)."""
    table = HostBucketTable.local()
    shared, alone = PerHost(rate=1_000_000, limit=20), PerHost(rate=1_000_000, limit=20)
    shared.share_buckets(table, TAG)
    now = drive_in_lockstep(shared, alone, ops, HOST)
    assert shared.stats(now) == alone.stats(now)
    assert table.overflows == 0


def test_a_shaper_with_a_table_shares_every_per_host_leaf_across_live_changes() -> None:
    from imqd.config import parse_config
    from imqd.shaper import Shaper

    def cfg(*extra: dict[str, object]) -> object:
        return parse_config({"classes": [
            {"name": "subs", "direction": "ingress", "rate": "50mbit", "per_host": {"key": "dst", "rate": "5mbit"}},
            {"name": "plain", "direction": "ingress", "rate": "10mbit"}, *extra]})

    table = HostBucketTable.local()
    shaper = Shaper()
    shaper.host_buckets = table
    shaper.apply(cfg(), 0.0)
    leaf = shaper.trees["ingress"].htb.leaf("subs")
    assert isinstance(leaf, PerHost)
    leaf.enqueue(QueuedPacket(1000, 0.0, host=HOST), 0.0)
    assert isinstance(leaf._hosts[HOST].bucket, SharedBucket)  # noqa: SLF001 - what the host is charged to
    # a live change keeps the leaf shared; a per_host class added by it is shared too, under its own tag
    shaper.apply(cfg({"name": "up", "direction": "egress", "rate": "5mbit",
                      "per_host": {"key": "src", "rate": "1mbit"}}), 1.0)
    assert shaper.trees["ingress"].htb.leaf("subs")._shared == (table, class_tag("ingress", "subs"))  # noqa: SLF001
    assert shaper.trees["egress"].htb.leaf("up")._shared == (table, class_tag("egress", "up"))  # noqa: SLF001
    # a shaper without a table (one worker) leaves its leaves alone
    alone = Shaper()
    alone.apply(cfg(), 0.0)
    assert alone.trees["ingress"].htb.leaf("subs")._shared is None  # noqa: SLF001


def test_workers_attached_to_one_segment_charge_the_same_bucket() -> None:
    import multiprocessing as mp

    from imqd.shared_hosts import SharedHostTable

    lock = mp.get_context("spawn").Lock()
    owner = SharedHostTable.create(lock, workers=2, entries=1024)
    worker = SharedHostTable.attach(owner.name, lock, workers=2, worker=1, entries=1024)
    try:
        a = SharedBucket(owner.table, TAG, HOST, CAP, 3000)
        b = SharedBucket(worker.table, TAG, HOST, CAP, 3000)
        assert b.conforms(3000, 1.0)
        a.consume(3000, 1.0)
        assert not b.conforms(100, 1.0), "the other mapping sees the charge"
        assert b.tokens(1.0) == 0.0
    finally:
        worker.close()
        owner.close()
    owner.close()  # twice: harmless (the supervisor's stop may run again)
