"""The idle tick: while traffic flows an idle worker wakes every --idle-tick; without traffic it sleeps."""

from __future__ import annotations

import time

import pytest

from imqd.lab import ImqdInstance
from imqd.netns import Topology

pytestmark = pytest.mark.netns

CONFIG = {"classes": [{"name": "all", "direction": "egress", "rate": "100mbit", "default": True}]}


def wakeups(pid: int, seconds: float) -> int:
    """How often the worker's main thread went to sleep and woke (voluntary context switches) in `seconds`."""

    def count() -> int:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches:"))

    before = count()
    time.sleep(seconds)
    return count() - before


def worker_pid(imqd: ImqdInstance) -> int:
    (worker,) = imqd.stats()["workers"]
    return int(worker["pid"])


def test_idle_worker_ticks_while_traffic_flows_and_sleeps_without(topology: Topology) -> None:
    topo = topology
    with ImqdInstance(topo, CONFIG, queues="0") as imqd:
        pid = worker_pid(imqd)
        time.sleep(1.5)  # no traffic since start: the worker sleeps until stats or control need it
        cold = wakeups(pid, 0.5)
        assert topo.ping(0, count=20, interval=0.01), "pings cross the shaper"
        warm = wakeups(pid, 0.3)  # within KEEP_WARM_S of the last packet: a wake-up every 1 ms
        time.sleep(0.6)  # the worker reports its stats every 0.5 s
        assert imqd.stats()["workers"][0]["packets"] >= 20, "the worker saw the pings"
        time.sleep(0.4)
        cooled = wakeups(pid, 0.5)
    assert warm >= 100, f"a 1 ms tick wakes the worker ~300 times in 0.3 s after traffic, saw {warm}"
    assert cold <= 30 and cooled <= 30, f"without traffic the worker must sleep: {cold}, {cooled} wake-ups in 0.5 s"


def test_idle_tick_zero_turns_it_off(topology: Topology) -> None:
    topo = topology
    with ImqdInstance(topo, CONFIG, queues="0", extra_args=["--idle-tick", "0"]) as imqd:
        pid = worker_pid(imqd)
        assert topo.ping(0, count=20, interval=0.01)
        warm = wakeups(pid, 0.3)
    assert warm <= 20, f"--idle-tick 0: the worker sleeps until its next event, saw {warm} wake-ups in 0.3 s"
