"""The worker's stats message: the pieces imqd.worker_stats builds, and how QueueWorker counts a full queue."""

from __future__ import annotations

from typing import Any

import pytest

import imqd.queue_worker
from imqd.links import LinkCosts
from imqd.queue_flags import QueueFlags
from imqd.queue_worker import QueueWorker, WorkerOptions
from imqd.shaper import Shaper
from imqd.worker_options import WorkerCounters
from imqd.worker_stats import counter_stats, flag_stats, overflow_stats

# What the supervisor relays for each worker, in this order (api, metrics and the dashboard read these).
STATS_KEYS = ["queue", "cpu", "pid", "packets", "verdicts", "accepted", "drops", "malformed", "errors",
              "batch_verdicts", "drain_pauses", "hook_packets", "gso", "gso_status", "on_overflow",
              "overflow_status", "gso_packets", "gso_segments", "gso_bytes", "gso_unknown_length", "mtu_floor",
              "socket_overflows", "unshaped_overflow", "queue_full_samples", "host_bucket_overflows", "held",
              "held_max", "pool_drops", "version", "enabled", "leaves", "scheduling", "time"]


def row(last_id: int, waiting: int) -> dict[str, int]:
    return {"portid": 1, "waiting": waiting, "queue_dropped": 0, "user_dropped": 0, "last_id": last_id}


def test_counter_stats_name_every_counter() -> None:
    c = WorkerCounters(packets=9, accepted=5, dropped=2, malformed=1, errors=1, batches=3, drain_pauses=1)
    c.by_hook[0], c.by_hook[4] = 2, 7
    s = counter_stats(c)
    assert (s["packets"], s["verdicts"], s["accepted"], s["drops"]) == (9, 7, 5, 2)
    assert (s["malformed"], s["errors"], s["batch_verdicts"], s["drain_pauses"]) == (1, 1, 3, 1)
    assert s["hook_packets"] == {"prerouting": 2, "input": 0, "forward": 0, "output": 0, "postrouting": 7}


def test_flag_stats_say_drop_only_when_fail_open_was_refused_or_not_asked() -> None:
    f = QueueFlags()
    f.fail_open = False
    assert flag_stats(f)["on_overflow"] == "drop"
    for answer in (True, None):  # taken, or the kernel's answer unseen: it may pass packets unshaped
        f.fail_open = answer
        assert flag_stats(f)["on_overflow"] == "accept"


def test_overflow_stats_of_an_unbound_queue_are_zero_but_keep_the_samples() -> None:
    assert overflow_stats(None, 10, 0, True, 4) == {"socket_overflows": 0, "unshaped_overflow": 0,
                                                     "queue_full_samples": 4}


@pytest.mark.parametrize(("fail_open", "unshaped"), [(True, 30), (False, 0), (None, 0)])
def test_overflow_stats_count_lost_messages_and_unshaped_only_when_failing_open(fail_open: bool | None,
                                                                               unshaped: int) -> None:
    s = overflow_stats(row(100, 20), 60, 10, fail_open, 0)
    assert s == {"socket_overflows": 30, "unshaped_overflow": unshaped, "queue_full_samples": 0}


def test_the_worker_counts_samples_that_find_its_queue_full(monkeypatch: pytest.MonkeyPatch) -> None:
    table: dict[int, dict[str, int]] = {}
    monkeypatch.setattr(imqd.queue_worker, "read_nfqueue_table", lambda: table)
    worker = QueueWorker(WorkerOptions(queue=2, cpu=None, max_len=10), Shaper(),
                         links=LinkCosts(mtu_of=lambda i: None, all_mtus=lambda: [1500]))
    table[2] = row(5, 10)
    assert worker.overflow_stats()["queue_full_samples"] == 0, "not bound: the row is another process's"
    worker._nfq = object()
    samples = []
    for waiting in (10, 9, 12):
        table[2] = row(5, waiting)
        samples.append(worker.overflow_stats()["queue_full_samples"])
    assert samples == [1, 1, 2]
    del table[2]
    assert worker.overflow_stats() == {"socket_overflows": 0, "unshaped_overflow": 0, "queue_full_samples": 2}


def test_worker_stats_keep_their_keys_and_order() -> None:
    stats: dict[str, Any] = QueueWorker(WorkerOptions(queue=3, cpu=1), Shaper(),
                                        links=LinkCosts(mtu_of=lambda i: None, all_mtus=lambda: [1500])).stats()
    assert list(stats) == STATS_KEYS
    assert (stats["queue"], stats["cpu"], stats["held"], stats["leaves"]) == (3, 1, 0, {})
    assert stats["scheduling"] == "normal", "the test runner is not real-time"
