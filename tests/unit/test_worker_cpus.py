"""Which CPU each worker is pinned to (the benchmark pins its bare loop and its pings by the same rule)."""

from __future__ import annotations

import os

from imqd.supervisor import worker_cpus


def test_round_robin_over_the_given_cpus() -> None:
    assert worker_cpus(3, [4, 7]) == [4, 7, 4]
    assert worker_cpus(2, []) == [None, None], "no CPUs given: nobody is pinned"


def test_default_is_this_process_s_cpus_in_order() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert worker_cpus(len(cpus) + 1) == cpus + cpus[:1]
