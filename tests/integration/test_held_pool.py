"""The shared pool of held packets (--max-held) with real traffic: many backlogged subscribers share it evenly.

Two hundred subscriber classes, each offered twice its plan at once, through two workers whose pools hold
only 400 packets each: far less than the classes' own limits (200 x 1,000).  The pool, not the kernel,
must do the dropping -- the longest queues first -- so every subscriber still gets its plan and the kernel
drops nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bench import udpgen
from bench.scale import SUB_PORT, subscriber_routes
from bench.subscribers import address, subscriber_config
from bench.udprecv import Receiver
from imqd.kernel_queues import parse_nfqueue_table
from imqd.lab import ImqdInstance

pytestmark = pytest.mark.netns

SUBSCRIBERS = 200
PLAN_BPS = 100_000
PAYLOAD = 1000
WIRE = PAYLOAD + 28 + 14  # what a class is charged per datagram (IP + UDP headers, overhead 14)
HELD_MAX = 400
WARM_S, WINDOW_S = 3.0, 8.0


def test_backlogged_subscribers_share_a_small_pool_evenly_and_the_kernel_drops_nothing(topology_factory: Any
                                                                                        ) -> None:
    topo = topology_factory(clients=1, extra_client_addrs=1, ipv6=False)
    plan_pps = PLAN_BPS / 8 / WIRE
    offered = 2 * SUBSCRIBERS * plan_pps
    sources = topo.clients[0].addrs4[:2]  # two host pairs per subscriber: both workers hold its packets
    with subscriber_routes(topo), ImqdInstance(topo, subscriber_config(SUBSCRIBERS, PLAN_BPS), queues="0:1",
                                               extra_args=["--max-held", str(HELD_MAX)]) as imqd:
        workers = imqd.stats()["workers"]
        assert [w["held_max"] for w in workers] == [HELD_MAX, HELD_MAX]
        peak_held = [0]
        stop = threading.Event()

        def watch() -> None:  # the most any worker held, sampled while the traffic runs
            while not stop.wait(0.25):
                peak_held[0] = max([peak_held[0], *(w.get("held") or 0 for w in imqd.stats()["workers"])])

        popen = lambda argv, **kw: topo.popen(topo.server_ns, argv, **kw)  # noqa: E731
        with Receiver(popen, SUB_PORT, address(0), SUBSCRIBERS) as rx:
            _, argv = udpgen.generator_argv(address(0), SUB_PORT, PAYLOAD, WARM_S + WINDOW_S + 0.5, pps=offered,
                                            sources=sources, destinations=SUBSCRIBERS)
            gen = topo.popen(topo.clients[0].ns, argv)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                time.sleep(WARM_S)
                s0 = rx.snap()
                time.sleep(WINDOW_S)
                s1 = rx.snap()
            finally:
                stop.set()
                watcher.join()
                gen.wait(timeout=30)
        workers = imqd.stats()["workers"]
        kernel = parse_nfqueue_table(topo.exec(topo.router_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout)

    window = s1.t - s0.t
    got = [(b - a) / (plan_pps * window) for a, b in zip(s0.counts, s1.counts)]
    assert sum(q["queue_dropped"] + q["user_dropped"] for q in kernel.values()) == 0, kernel
    assert sum(w["pool_drops"] for w in workers) > 0.3 * offered * WARM_S, "the pool did the dropping"
    assert 0 < peak_held[0] <= HELD_MAX
    assert 0.95 <= sum(got) / SUBSCRIBERS <= 1.05, sum(got) / SUBSCRIBERS
    assert min(got) >= 0.85, f"worst subscriber {min(got):.2f} of its plan (index {got.index(min(got))})"
