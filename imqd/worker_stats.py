"""What a worker reports in its stats message, built from its counters, flags and shaper.

Pure: :meth:`imqd.queue_worker.QueueWorker.stats` reads the clock and the kernel's queue table and puts
these pieces together; the supervisor sums and relays them (``/stats``, ``/metrics``).
"""

from __future__ import annotations

from typing import Any

from imqd.queue_flags import QueueFlags, lost_messages
from imqd.rules import HOOK_NAMES
from imqd.shaper import Shaper
from imqd.worker_options import WorkerCounters


def counter_stats(c: WorkerCounters) -> dict[str, Any]:
    """The worker's own packet and verdict counters."""
    return {
        "packets": c.packets,
        "verdicts": c.accepted + c.dropped,
        "accepted": c.accepted,
        "drops": c.dropped,
        "malformed": c.malformed,
        "errors": c.errors,
        "batch_verdicts": c.batches,
        "drain_pauses": c.drain_pauses,
        "hook_packets": dict(zip(HOOK_NAMES, c.by_hook)),
    }


def flag_stats(f: QueueFlags) -> dict[str, Any]:
    """What the kernel answered to the queue flags the worker asked for (GSO, fail-open)."""
    return {"gso": f.gso, "gso_status": f.gso_status, "on_overflow": "drop" if f.fail_open is False else "accept",
            "overflow_status": f.overflow_status}


def overflow_stats(row: dict[str, int] | None, packets: int, held: int, fail_open: bool | None,
                   queue_full_samples: int) -> dict[str, int]:
    """What the kernel could not queue for this worker (see :func:`lost_messages` and docs).

    ``row`` is the queue's line of the kernel's table (None: not bound), ``packets`` what the worker has
    received, ``held`` what it has not given a verdict yet.  ``socket_overflows``: packets whose message
    found the socket buffer full (exact); with ``--on-overflow accept`` they passed unshaped
    (``unshaped_overflow``), else the kernel dropped them (its ``user_dropped``).  A packet that finds the
    *queue* full gets no id: the kernel counts it in ``queue_dropped`` when it drops it and nowhere when it
    accepts it, so ``queue_full_samples`` counts the stats samples (every STATS_INTERVAL_S) that found the
    queue full."""
    if row is None:
        return {"socket_overflows": 0, "unshaped_overflow": 0, "queue_full_samples": queue_full_samples}
    lost = lost_messages(row["last_id"], packets, row["waiting"], held)
    return {"socket_overflows": lost, "unshaped_overflow": lost if fail_open else 0,
            "queue_full_samples": queue_full_samples}


def shaper_stats(shaper: Shaper) -> dict[str, Any]:
    """The shaper's part: what it holds, its held pool, its configuration version, the leaves' details."""
    return {
        # per_host caps that found the shared table's set full and fell back to this worker's own bucket
        "host_bucket_overflows": hosts.overflows if (hosts := shaper.host_buckets) is not None else 0,
        "held": shaper.held,
        # what its classes may hold together, and the arrivals refused because their class had more than
        # its share of that (imqd.qdisc.held_pool): the longest queues' drops, counted in "drops" too
        "held_max": shaper.pool.capacity,
        "pool_drops": shaper.pool.drops,
        "version": shaper.version,
        "enabled": shaper.enabled,
        # per-class counters are in shared memory (imqd.shared_counters); only the few non-FIFO leaves'
        # own details (top hosts, flows, CoDel) travel
        "leaves": leaf_details(shaper),
    }


def leaf_details(shaper: Shaper) -> dict[str, dict[str, Any]]:
    """``stats()`` of every leaf that has more to say than its counters: fq_codel, sfq, per_host, delay."""
    out: dict[str, dict[str, Any]] = {}
    for tree in shaper.trees.values():
        if tree is None:
            continue
        for name in tree.needs_info:  # exactly the leaves that are not a plain FIFO
            stats = getattr(tree.htb.leaf(name), "stats", None)
            if stats is not None:
                out[name] = stats()
    return out
