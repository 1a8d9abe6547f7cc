"""What a worker is told when it starts and what it counts: plain data, no I/O.

The supervisor builds a :class:`WorkerOptions` (picklable: it is sent to the spawned process); the
worker's per-packet path increments a :class:`WorkerCounters` (slotted: it is touched for every packet).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imqd.kernel_queues import DEFAULT_HELD_MAX, SOCK_LEN
from imqd.rules import HOOK_NAMES
from imqd.worker_timing import IDLE_TICK_S


@dataclass
class WorkerOptions:
    """What a worker needs to start (picklable: sent to a spawned process)."""

    queue: int
    cpu: int | None
    max_len: int = 20000
    copy_range: int = 128
    sock_len: int = SOCK_LEN
    shm_name: str | None = None
    hosts_shm_name: str | None = None  # the per-host bucket table (imqd.shared_hosts); None: one worker
    # While traffic flows, an idle worker wakes at least this often (s; 0 = only for the scheduler's events).
    # A CPU left idle for milliseconds makes the next packet's wake-up and Python code cold: see sleep_time.
    idle_tick: float = IDLE_TICK_S
    # The per-class counter segment (imqd.shared_counters) and which of its blocks is this worker's
    counters_shm_name: str | None = None
    counters_workers: int = 1
    counters_slots: int = 0
    counters_block: int = 0
    gso: bool = True  # ask the kernel for whole GSO/GRO super-packets (NFQA_CFG_F_GSO); False: --no-gso
    fail_open: bool = False  # a full queue or socket passes packets unshaped (NFQA_CFG_F_FAIL_OPEN), else drops
    held_max: int = DEFAULT_HELD_MAX  # packets the worker's classes may hold together (imqd.qdisc.held_pool)
    realtime: int = 0  # SCHED_FIFO priority of the worker (imqd.realtime); 0 = normal scheduling


@dataclass(slots=True)
class WorkerCounters:
    packets: int = 0
    accepted: int = 0
    dropped: int = 0
    malformed: int = 0
    errors: int = 0
    batches: int = 0  # batch verdict messages sent
    drain_pauses: int = 0  # socket drains ended after DRAIN_MAX packets to serve control messages and stats
    # packets per NF_INET hook (imqd.rules.HOOK_NAMES order): which direction saw traffic, and where ingress is
    # taken (imqd.hook_checks reports classes that match nothing although their direction saw packets)
    by_hook: list[int] = field(default_factory=lambda: [0] * len(HOOK_NAMES))
