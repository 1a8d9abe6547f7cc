"""A worker process from start to exit: signals, CPU, shared memory, the first configuration, bind, loop.

The supervisor spawns :func:`worker_main` (through its fork server); everything per packet happens in
:class:`imqd.queue_worker.QueueWorker`, which this module only sets up and tears down.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from imqd.bind_errors import WorkerError
from imqd.memtrim import mmap_large_blocks, trim
from imqd.qdisc.held_pool import HeldPool
from imqd.queue_worker import QueueWorker
from imqd.realtime import RealtimeError, set_realtime
from imqd.shaper import Shaper
from imqd.worker_options import WorkerOptions

EXIT_FATAL = 3  # the supervisor must not restart: bad queue number, queue busy, no permission


def pin_to_cpu(cpu: int | None) -> None:
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def worker_main(opts: WorkerOptions, control: Any, lock: Any) -> None:
    """Entry point of a worker process (spawned by the supervisor)."""
    from imqd.shared_counters import SharedCounters
    from imqd.shared_hosts import SharedHostTable
    from imqd.shared_tokens import SharedTokenStore

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    mmap_large_blocks()  # (imqd.memtrim)
    pin_to_cpu(opts.cpu)
    store = SharedTokenStore.attach(opts.shm_name, lock) if opts.shm_name else None
    hosts = (SharedHostTable.attach(opts.hosts_shm_name, lock, opts.counters_workers, opts.counters_block)
             if opts.hosts_shm_name else None)  # worker i of n: the same numbering as the counter blocks
    counters = (SharedCounters.attach(opts.counters_shm_name, opts.counters_workers, opts.counters_slots)
                if opts.counters_shm_name else None)
    worker: QueueWorker | None = None
    try:  # however this ends (a fatal bind exits here): unmap the segments before the interpreter tears down
        shared: dict[str, Any] = {}
        if store is not None:
            shared["tokens"] = store
        if counters is not None:  # HTB writes its per-class counters straight into this worker's block
            shared["counters"] = counters.block(opts.counters_block)
        shaper = Shaper(**shared, pool=HeldPool(opts.held_max))
        shaper.host_buckets = hosts.table if hosts is not None else None
        worker = QueueWorker(opts, shaper, control)
        signal.signal(signal.SIGTERM, lambda *_: worker.stop())
        # Take the first configuration before binding, so no packet is ever seen unconfigured.
        worker.handle_message(control.recv())  # (not kept here: the configuration is dropped once applied)
        trim()  # what it used (imqd.memtrim)
        try:
            set_realtime(opts.realtime)
            worker.bind()
        except (WorkerError, RealtimeError) as exc:
            worker._send(("fatal", str(exc)))
            sys.exit(EXIT_FATAL)
        worker._send(("ready", opts.queue, os.getpid(), worker.flags.refused()))
        worker.run()
        worker.send_stats()
    finally:
        if worker is not None:
            worker.links.close()
        if store is not None:
            store.close()
        if hosts is not None:
            hosts.close()
        if counters is not None:
            counters.close()
