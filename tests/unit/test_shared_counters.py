"""Per-class counters in shared memory: blocks per worker, summed by the supervisor's sampler into rates,
subtree backlogs and link totals."""

from __future__ import annotations

import multiprocessing as mp
from array import array
from collections.abc import Iterator
from typing import Any

import pytest

from imqd.config import parse_config
from imqd.shared_counters import FIELD, FIELDS_PER_COUNTER_SLOT, SharedCounters
from imqd.stats_sampler import LinkHistory, RateMeter, TreeIndex, build_snapshot, empty_snapshot
from imqd.supervisor import Supervisor, WorkerLoad

F = FIELDS_PER_COUNTER_SLOT


def put(values: Any, slot: int, **fields: int) -> None:
    for key, v in fields.items():
        values[slot * F + FIELD[key]] = v


@pytest.fixture
def segment() -> Iterator[SharedCounters]:
    seg = SharedCounters.create(workers=3, slots=16)
    try:
        yield seg
    finally:
        seg.close()


def test_blocks_are_disjoint_and_totals_sum_them(segment: SharedCounters) -> None:
    blocks = [segment.block(i) for i in range(3)]
    for i, b in enumerate(blocks):
        put(b.values, 2, bytes=1000 * (i + 1), packets=i + 1, drops=i)
        put(b.values, 15, lends=7)  # the last row of each block
    totals = segment.totals(16)
    assert totals[2 * F + FIELD["bytes"]] == 6000
    assert totals[2 * F + FIELD["packets"]] == 6 and totals[2 * F + FIELD["drops"]] == 3
    assert totals[15 * F + FIELD["lends"]] == 21
    assert segment.totals(3) == totals[:3 * F], "only the rows asked for"
    assert sum(totals) == 6000 + 6 + 3 + 21


def test_bad_blocks_and_sizes_are_refused(segment: SharedCounters) -> None:
    with pytest.raises(ValueError, match="no counter block 3"):
        segment.block(3)
    with pytest.raises(ValueError, match="too many classes"):
        segment.block(0).ensure(17)
    segment.block(0).ensure(16)


def _worker_writes(name: str, index: int, packets: int) -> None:
    seg = SharedCounters.attach(name, workers=2, slots=8)
    try:
        block = seg.block(index)
        for _ in range(packets):
            block.values[5 * F + FIELD["packets"]] += 1
    finally:
        seg.close()


def test_worker_processes_write_their_own_blocks() -> None:
    seg = SharedCounters.create(workers=2, slots=8)
    try:
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_worker_writes, args=(seg.name, i, 5000 * (i + 1))) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(20)
            assert p.exitcode == 0
        assert seg.totals(8)[5 * F + FIELD["packets"]] == 15000, "no lost updates: one writer per block"
    finally:
        seg.close()


def test_a_reattached_block_keeps_its_counts() -> None:
    seg = SharedCounters.create(workers=1, slots=4)
    try:
        put(seg.block(0).values, 1, bytes=42)
        again = SharedCounters.attach(seg.name, workers=1, slots=4)  # a restarted worker
        assert again.block(0).values[1 * F + FIELD["bytes"]] == 42
        again.close()
        assert seg.totals(4)[F] == 42, "a worker closing its mapping does not unlink the segment"
    finally:
        seg.close()


# -- the sampler's pure parts ----------------------------------------------------------
def test_rate_over_the_last_second_from_samples() -> None:
    meter = RateMeter(window=1.0)
    assert list(meter.add(10.0, [0])) == [0.0]
    for i in range(1, 9):  # 125 kB every 0.5 s = 250 kB/s
        rates = meter.add(10.0 + i * 0.5, [i * 125_000])
    assert rates[0] == pytest.approx(250_000)
    assert len(meter._samples) <= 3, "old samples are dropped"


def test_rate_follows_a_change_and_never_goes_negative() -> None:
    meter = RateMeter(window=1.0)
    total = 0
    for i in range(10):
        total += 62_500
        meter.add(i * 0.5, [total, 0])
    for i in range(10, 13):
        total += 187_500
        rates = meter.add(i * 0.5, [total, 0])
    assert rates[0] == pytest.approx(375_000), "only the last second counts"
    rates = meter.add(6.5, [0, 5])  # slot 0 handed to a new class and zeroed
    assert rates[0] == 0.0 and rates[1] > 0
    assert list(meter.add(7.0, [0, 5, 99])) [2] == 0.0, "a new row has no history yet"


TREE = {"classes": [
    {"name": "leaf-b", "parent": "mid", "rate": "1mbit"},  # a child before its parent in the file
    {"name": "top", "rate": "10mbit"},
    {"name": "mid", "parent": "top", "rate": "5mbit"},
    {"name": "leaf-a", "parent": "mid", "rate": "1mbit"},
    {"name": "leaf-c", "parent": "top", "rate": "1mbit"},
    {"name": "in", "direction": "ingress", "rate": "1mbit"},
]}


def test_inner_backlog_is_the_subtree_sum_and_link_totals_count_each_packet_once() -> None:
    config = parse_config(TREE)
    slots = {"top": 3, "mid": 0, "leaf-a": 1, "leaf-b": 4, "leaf-c": 2, "in": 6}
    tree = TreeIndex.of(config, slots)
    totals = [0] * (tree.rows * F)
    put(totals, 1, backlog_packets=2, backlog_bytes=3000, drops=1)
    put(totals, 4, backlog_packets=1, backlog_bytes=1500, drops=4)
    put(totals, 2, backlog_packets=5, backlog_bytes=500)
    put(totals, 3, bytes=999)
    rates = array("d", [0.0] * tree.rows)
    rates[3], rates[6] = 1000.0, 250.0
    snap = build_snapshot(tree, totals, rates, 5.0, 1e9, {})
    assert snap.value("mid", "backlog_packets") == 3 and snap.value("mid", "backlog_bytes") == 4500
    assert snap.value("top", "backlog_packets") == 8 and snap.value("top", "backlog_bytes") == 5000
    assert snap.value("leaf-a", "backlog_packets") == 2, "a leaf keeps its own"
    assert snap.value("top", "bytes") == 999 and snap.value("nosuch", "bytes") == 0
    assert snap.directions["egress"] == {"rate_bps": 8000, "drops": 5, "backlog": {"packets": 8, "bytes": 5000},
                                         "classes": 5}
    assert snap.directions["ingress"]["rate_bps"] == 2000
    assert snap.rate("in") == 250.0 and snap.rate("nosuch") == 0.0


def test_empty_snapshot_and_history() -> None:
    tree = TreeIndex.of(parse_config({"classes": []}), {})
    snap = empty_snapshot(tree, 1.0, 1e9)
    assert snap.directions["egress"]["rate_bps"] == 0 and tree.rows == 0
    history = LinkHistory(seconds=2.0, interval=0.5)
    for i in range(10):
        history.add(empty_snapshot(tree, i, 1e9 + i))
    cols = history.as_json()
    assert cols["time"] == [1e9 + i for i in range(5, 10)] and cols["egress"] == [0] * 5


def test_worker_load_is_packets_and_cpu_per_second() -> None:
    load = WorkerLoad()
    load.update(1.0, 100, 2.0)
    load.update(1.5, 600, 2.25)
    assert load.packets_per_second == 1000 and load.cpu_percent == pytest.approx(50.0)
    load.update(2.0, 10, None)  # a restarted worker counts from 0 again; its CPU time unreadable
    assert load.packets_per_second == 0 and load.cpu_percent == pytest.approx(50.0)


def test_supervisor_samples_the_workers_blocks() -> None:
    sup = Supervisor([3, 4], parse_config(TREE), cpus=[])
    try:
        first = sup.sample()
        assert first.rate("leaf-a") == 0.0
        slot = sup.slots["leaf-a"]
        for q in (3, 4):
            block = sup.counters.block(sup.block_of[q])
            put(block.values, slot, bytes=50_000, packets=40, backlog_packets=1, backlog_bytes=1500)
        sup.workers[3].stats = {"packets": 80, "leaves": {"leaf-a": {"kind": "fq_codel", "codel_drops": 2}}}
        sup._meter._samples[0] = (sup._meter._samples[0][0] - 1.0, sup._meter._samples[0][1])  # a second ago
        snap = sup.sample()
        assert snap.value("leaf-a", "bytes") == 100_000 and snap.value("leaf-a", "packets") == 80
        assert snap.value("top", "backlog_packets") == 2, "two workers' held packets under the root"
        assert snap.rate("leaf-a") == pytest.approx(100_000, rel=0.05)
        assert snap.leaves["leaf-a"] == [{"queue": 3, "kind": "fq_codel", "codel_drops": 2}]
        assert sup.counter_snapshot() is snap
        assert len(sup.link_history.points) == 2
    finally:
        sup.store.close()
        sup.hosts.close()
        sup.counters.close()
