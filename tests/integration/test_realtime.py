"""`imqd run --realtime PRIO`: the workers run SCHED_FIFO (and say so in /stats); without it they do not."""

from __future__ import annotations

import os
import sys

import pytest

from imqd.lab import ImqdInstance
from imqd.netns import Topology

pytestmark = pytest.mark.netns

CONFIG = {"classes": [{"name": "all", "direction": "egress", "rate": "100mbit", "default": True}]}


def _workers(imqd: ImqdInstance) -> list[dict]:
    return imqd.stats()["workers"]


def test_workers_run_sched_fifo_and_still_forward(topology: Topology) -> None:
    with ImqdInstance(topology, CONFIG, queues="0:1", extra_args=("--realtime", "10")) as imqd:
        workers = _workers(imqd)
        assert [w["scheduling"] for w in workers] == ["fifo:10", "fifo:10"]
        for w in workers:  # the kernel's view, not only what the worker reports
            assert os.sched_getscheduler(w["pid"]) == os.SCHED_FIFO
            assert os.sched_getparam(w["pid"]).sched_priority == 10
        assert imqd.proc is not None and os.sched_getscheduler(imqd.proc.pid) != os.SCHED_FIFO, \
            "only the workers: the supervisor and the API stay normal"
        assert topology.ping(0, count=5, interval=0.01), "traffic still crosses the shaper"


def test_default_workers_use_normal_scheduling(topology: Topology) -> None:
    with ImqdInstance(topology, CONFIG, queues="0") as imqd:
        (w,) = _workers(imqd)
        assert w["scheduling"] == "normal" and os.sched_getscheduler(w["pid"]) == os.SCHED_OTHER


def test_a_worker_that_may_not_run_real_time_stops_imqd_with_one_line(topology: Topology) -> None:
    """Without CAP_SYS_NICE (and with RLIMIT_RTPRIO 0) the workers cannot switch: imqd exits naming what is
    missing, and leaves no rules behind."""
    res = topology.exec(topology.router_ns, ["capsh", "--drop=cap_sys_nice", "--", "-c",
                                             f"exec {sys.executable} -m imqd run --queues 0 --realtime 10 "
                                             "--apply-rules --api none"], check=False, timeout=30)
    assert res.returncode != 0, res.stdout
    assert "--realtime 10: not permitted" in res.stderr and "CAP_SYS_NICE" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "NFQUEUE" not in topology.exec(topology.router_ns, ["iptables-save"]).stdout
