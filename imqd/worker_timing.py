"""When a worker wakes: the select() timeout of its loop, and the intervals that bound it.

Pure (takes ``now``): :class:`imqd.queue_worker.QueueWorker` asks :func:`sleep_time` once per turn of its
loop; the supervisor takes ``IDLE_TICK_S`` as the default of ``--idle-tick``.
"""

from __future__ import annotations

STATS_INTERVAL_S = 0.5  # a worker sends its stats this often
MAX_SLEEP_S = 0.25  # the longest select(): control messages and stats are served at least this often
IDLE_TICK_S = 0.001  # default WorkerOptions.idle_tick
KEEP_WARM_S = 1.0  # the idle tick runs while a packet came within this long (not on a router with no traffic)


def sleep_time(now: float, wake: float | None, warm_until: float, tick: float) -> float:
    """How long the worker's select() may sleep at ``now``.

    Until the scheduler's next event ``wake`` (None: nothing held), at most MAX_SLEEP_S (stats, control),
    and at most ``tick`` while ``now < warm_until`` -- that is, while packets keep coming.  On a VM (and on
    hardware with deep C-states) a CPU that sleeps for milliseconds wakes slowly and finds the worker's
    code and data out of its caches: even plain kernel forwarding takes ~30 us longer per router crossing
    at 100 packets/s than at 1,000/s, and imqd's longer path pays more (docs/benchmarks.md).  A wake-up
    every ``tick`` that does nothing keeps the next packet's path warm for ~1,000 cheap wake-ups a second
    (~25-30 us less per packet at 100 packets/s); a router with no traffic is left to sleep.
    """
    timeout = MAX_SLEEP_S if wake is None else min(max(wake - now, 0.0), MAX_SLEEP_S)
    if 0.0 < tick < timeout and now < warm_until:
        return tick
    return timeout
