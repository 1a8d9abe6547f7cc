"""A worker SIGKILLed while holding the shared token lock: the supervisor frees the lock it left taken."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any

from imqd.shared_tokens import free_if_stuck


def _hold(lock: Any, taken: Any) -> None:
    lock.acquire()
    taken.set()
    signal.pause()  # killed in the middle of its "charge"


def test_a_lock_left_taken_by_a_killed_worker_is_freed() -> None:
    ctx = mp.get_context("fork")
    lock, taken = ctx.Lock(), ctx.Event()
    p = ctx.Process(target=_hold, args=(lock, taken))
    p.start()
    assert taken.wait(10)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert not lock.acquire(True, 0.05), "a semaphore stays taken when its holder dies"
    assert free_if_stuck(lock, 0.05) is True
    assert lock.acquire(False), "free again"
    lock.release()


def test_a_free_lock_is_left_as_it_is() -> None:
    lock = mp.get_context("fork").Lock()
    assert free_if_stuck(lock, 0.05) is False
    assert lock.acquire(False), "still free"
    assert not lock.acquire(False), "and still a lock (taken once, not twice)"
    lock.release()


def test_the_supervisor_frees_the_lock_when_a_worker_dies(caplog: Any) -> None:
    import logging
    from types import SimpleNamespace

    from imqd.config import parse_config
    from imqd.supervisor import Supervisor

    sup = Supervisor([3, 4], parse_config({"classes": []}), cpus=[])
    try:
        assert sup.hosts is not None, "two workers: the per-host table exists"
        sup.lock.acquire()  # as a worker would, in the middle of a charge, when it is killed
        w = sup.workers[3]
        w.process = SimpleNamespace(exitcode=-9, is_alive=lambda: False)
        with caplog.at_level(logging.WARNING, logger="imqd"):
            sup._on_exit(w)
        assert sup.lock.acquire(False), "the dead worker's lock is free again"
        sup.lock.release()
        assert any("died holding the shared token lock" in r.getMessage() for r in caplog.records)
        assert w.restart_at is not None, "and the worker is restarted as usual"
    finally:
        sup.store.close()
        sup.hosts.close()
        sup.counters.close()
