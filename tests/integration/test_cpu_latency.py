"""`imqd run --cpu-latency 0`: while it runs idle CPUs poll instead of sleeping; when it exits they sleep again."""

from __future__ import annotations

import glob
import os
import time

import pytest

from imqd.lab import ImqdInstance
from imqd.netns import Topology

pytestmark = pytest.mark.netns

CONFIG = {"classes": [{"name": "all", "direction": "egress", "rate": "100mbit", "default": True}]}


def sleeping_states() -> list[str]:
    """cpuidle states that take time to leave (every state but POLL): the ones a 0 us limit forbids."""
    return [os.path.dirname(p) for p in glob.glob("/sys/devices/system/cpu/cpu*/cpuidle/state*/latency")
            if int(open(p).read()) > 0]


def entries(states: list[str], seconds: float) -> int:
    """How often the CPUs entered `states` in `seconds`."""

    def count() -> int:
        return sum(int(open(f"{s}/usage").read()) for s in states)

    before = count()
    time.sleep(seconds)
    return count() - before


def test_cpus_stop_sleeping_while_imqd_holds_the_limit(topology: Topology) -> None:
    states = sleeping_states()
    if not states or not os.path.exists("/dev/cpu_dma_latency"):
        pytest.skip("this kernel has no cpuidle sleep states or no /dev/cpu_dma_latency")
    assert entries(states, 0.5) > 0, "idle CPUs sleep when nobody limits their wake-up latency"
    with ImqdInstance(topology, CONFIG, queues="0", extra_args=("--cpu-latency", "0")) as imqd:
        assert imqd.proc is not None
        held = {os.readlink(f"/proc/{imqd.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{imqd.proc.pid}/fd")}
        assert "/dev/cpu_dma_latency" in held
        assert entries(states, 0.5) == 0, "with a 0 us limit idle CPUs poll instead of sleeping"
        assert topology.ping(0, count=5, interval=0.01), "traffic still crosses the shaper"
    time.sleep(0.2)
    assert entries(states, 0.5) > 0, "the limit goes with imqd: the CPUs sleep again"


def test_default_run_leaves_cpu_sleep_alone(topology: Topology) -> None:
    states = sleeping_states()
    if not states:
        pytest.skip("this kernel has no cpuidle sleep states")
    with ImqdInstance(topology, CONFIG, queues="0"):
        assert entries(states, 0.5) > 0, "without --cpu-latency imqd asks nothing of the CPUs' power states"
