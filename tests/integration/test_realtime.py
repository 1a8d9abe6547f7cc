"""`imqd run --realtime PRIO`: the workers run SCHED_FIFO (and say so in /stats); without it they do not."""

from __future__ import annotations

import os

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
