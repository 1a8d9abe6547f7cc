"""Per-class rates from a worker's successive reports (imqd.supervisor.class_rates)."""

from collections import deque

import pytest

from imqd.supervisor import class_rates


def report(t: float, **bytes_by_class: int) -> dict:
    return {"time": t, "classes": {name: {"bytes": b} for name, b in bytes_by_class.items()}}


def test_rate_over_the_last_second_uses_worker_report_times() -> None:
    history: deque = deque()
    assert class_rates(history, report(10.0, a=0)) == {"a": 0.0}
    for i in range(1, 9):  # 125 kB every 0.5 s = 2 Mbit/s
        rates = class_rates(history, report(10.0 + i * 0.5, a=i * 125_000))
    assert rates["a"] == pytest.approx(2e6)
    assert len(history) <= 3, "old samples are dropped"


def test_rate_follows_a_change_within_the_window() -> None:
    history: deque = deque()
    total = 0
    for i in range(10):
        total += 62_500  # 1 Mbit/s
        class_rates(history, report(i * 0.5, a=total))
    for i in range(10, 13):
        total += 187_500  # 3 Mbit/s
        rates = class_rates(history, report(i * 0.5, a=total))
    assert rates["a"] == pytest.approx(3e6)


def test_new_class_and_counter_reset_never_go_negative() -> None:
    history: deque = deque()
    class_rates(history, report(0.0, a=1000))
    rates = class_rates(history, report(0.5, a=10, b=500))  # a restarted worker reports smaller counters
    assert rates["a"] == 0.0 and rates["b"] == 0.0


def test_kernel_queue_counters_are_read_per_queue(tmp_path) -> None:
    from imqd.supervisor import kernel_queue_stats

    proc = tmp_path / "nfnetlink_queue"
    proc.write_text("    0  12345     3 2   128     7    9    1000  1\n    1  12346     0 2   128     0    0      20  1\n")
    stats = kernel_queue_stats(str(proc))
    assert stats[0] == {"kernel_waiting": 3, "queue_dropped": 7, "user_dropped": 9}
    assert stats[1]["queue_dropped"] == 0
    assert kernel_queue_stats(str(tmp_path / "missing")) == {}
