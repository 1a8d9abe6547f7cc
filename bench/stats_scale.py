"""``GET /stats`` and ``/metrics`` latency at 100, 1,000 and 10,000 classes, and the sampler's cost.

The API over a controller whose workers are the real sampler's snapshot of a real shared-memory counter
segment (two worker blocks filled with counts), no namespaces: what the stats path itself costs.

    .venv/bin/python -m bench.stats_scale [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from typing import Any

from fastapi.testclient import TestClient

from imqd.api import create_app
from imqd.config import parse_config
from imqd.controller import Controller
from imqd.shared_counters import FIELDS_PER_COUNTER_SLOT, SharedCounters
from imqd.stats_sampler import LinkHistory, RateMeter, TreeIndex, build_snapshot

WORKERS = 2


def config_of(n: int) -> Any:
    classes: list[dict[str, Any]] = [{"name": "root", "rate": "10gbit"}]
    classes += [{"name": f"sub{i:05d}", "parent": "root", "rate": "1mbit", "ceil": "100mbit",
                 "match": {"dst": f"198.18.{i // 250}.{i % 250 + 1}/32"}} for i in range(n - 1)]
    return parse_config({"classes": classes})


class SegmentWorkers:
    """The supervisor's stats half over a real segment: sample() is what its timer thread runs."""

    def __init__(self, config: Any) -> None:
        self.enabled = True
        self.slots = {c.name: i for i, c in enumerate(config.classes)}
        self.tree = TreeIndex.of(config, self.slots)
        self.counters = SharedCounters.create(WORKERS, 65536)
        for w in range(WORKERS):
            vals = self.counters.block(w).values
            for slot in range(len(self.slots)):
                for f in range(FIELDS_PER_COUNTER_SLOT):
                    vals[slot * FIELDS_PER_COUNTER_SLOT + f] = slot * 1000 + f
        self.meter = RateMeter()
        self.link_history = LinkHistory()
        self.snap = self.sample()

    def sample(self) -> Any:
        now = time.monotonic()
        totals = self.counters.totals(self.tree.rows)
        rates = self.meter.add(now, totals[0::FIELDS_PER_COUNTER_SLOT])
        self.snap = build_snapshot(self.tree, totals, rates, now, time.time(), {})
        self.link_history.add(self.snap)
        return self.snap

    def counter_snapshot(self) -> Any:
        return self.snap

    def worker_stats(self) -> list[dict[str, Any]]:
        return [{"queue": q, "cpu": q, "pid": 1000 + q, "packets": 0} for q in range(WORKERS)]

    def healthy(self) -> bool:
        return True


def timed(fn: Any, reps: int) -> tuple[float, float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return min(out), statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sizes", default="100,1000,10000")
    args = ap.parse_args()
    print(f"{'classes':>8} {'sample ms':>10} {'/stats ms':>10} {'top=50 ms':>10} {'/metrics ms':>12} "
          f"{'series':>7} {'/stats KB':>9} {'B/class':>8}")
    for n in (int(x) for x in args.sizes.split(",")):
        config = config_of(n)
        tracemalloc.start()
        workers = SegmentWorkers(config)
        workers.sample()
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        controller = Controller(config, None, workers)  # type: ignore[arg-type]
        client = TestClient(create_app(controller, token=None, open_reads=True))
        sample = timed(workers.sample, args.reps)
        full = timed(lambda: client.get("/stats"), args.reps)
        top = timed(lambda: client.get("/stats?top=50"), args.reps)
        met = timed(lambda: client.get("/metrics"), max(3, args.reps // 4))
        text = client.get("/metrics").text
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        size = len(client.get("/stats").content)
        print(f"{n:>8} {sample[1]:>10.1f} {full[1]:>10.1f} {top[1]:>10.1f} {met[1]:>12.1f} {series:>7} "
              f"{size / 1024:>9.0f} {current / n:>8.0f}   (median; min {sample[0]:.1f}/{full[0]:.1f}/"
              f"{top[0]:.1f}/{met[0]:.1f})")
        workers.counters.close()


if __name__ == "__main__":
    main()
