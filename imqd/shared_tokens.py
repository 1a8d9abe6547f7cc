"""HTB token state in shared memory, so a class's rate holds across all workers.

``--queue-balance`` spreads the host pairs of one subnet over several worker
processes.  Each worker keeps its own HTB queues, but every class's buckets
(``tokens``, ``ctokens``, ``t_c``) live here, in one POSIX shared-memory
segment created by the supervisor.  A packet released by any worker is
charged against the same buckets, so the class's rate and ceil hold in total.
All workers read ``time.monotonic()`` (CLOCK_MONOTONIC, system wide), so
``t_c`` means the same thing in every process.

The read-modify-write of a charge is guarded by one process-shared lock.  A
worker killed with SIGKILL while holding it must not freeze the others, so
the lock is taken with a short timeout; on timeout the charge goes ahead
unlocked (at worst one lost update, i.e. one packet of extra credit) and the
event is counted in ``lock_timeouts``.  A POSIX semaphore stays taken when its
holder dies, and every later charge would wait out that timeout, so the
supervisor frees a lock a dead worker left taken (:func:`free_if_stuck`).
"""

from __future__ import annotations

import math
from multiprocessing import shared_memory
from typing import Any, MutableSequence

from imqd.qdisc.tokens import FIELDS_PER_SLOT, LOCK_TIMEOUT_S

DEFAULT_SLOTS = 65536
STUCK_AFTER_S = 0.2  # a charge holds the lock for microseconds: taken this long after a death = the dead held it


def free_if_stuck(lock: Any, wait: float = STUCK_AFTER_S) -> bool:
    """Call after a worker died: free the lock if it stays taken for ``wait`` seconds; whether it had to.

    Only a dead worker can have left it taken that long (the live ones hold it for microseconds), and a
    semaphore is not released when its holder dies: without this every later charge of every worker would
    wait ``LOCK_TIMEOUT_S`` (5 ms) -- 200 packets/s."""
    if lock.acquire(True, wait):
        lock.release()
        return False
    try:
        lock.release()
    except ValueError:  # released in the meantime after all ("released too many times")
        return False
    return True


class _TimedLock:
    """Context manager over the store's lock that never blocks for long (for the paths off the per-packet one)."""

    __slots__ = ("_store", "_held")

    def __init__(self, store: "SharedTokenStore") -> None:
        self._store = store
        self._held = False

    def __enter__(self) -> "_TimedLock":
        lock = self._store.lock
        if lock is None:  # the only worker: nobody to exclude
            return self
        self._held = lock.acquire(True, LOCK_TIMEOUT_S)
        if not self._held:
            self._store.timeouts += 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self._store.lock.release()


class SharedTokenStore:
    """A fixed-size token store in a named shared-memory segment.

    The supervisor ``create``s it (and ``unlink``s it on exit); workers
    ``attach`` by name.  ``values`` is a memoryview of doubles, indexed like
    :class:`imqd.qdisc.tokens.LocalTokenStore`'s array.
    """

    def __init__(self, shm: shared_memory.SharedMemory, lock: Any, owner: bool) -> None:
        self._shm = shm
        self._owner = owner
        self.values: MutableSequence[float] = shm.buf.cast("d")
        self.slots = len(self.values) // FIELDS_PER_SLOT
        # HTB's per-packet charge takes it directly: acquire(True, LOCK_TIMEOUT_S); None when this process is
        # the store's only writer (a single worker)
        self.lock = lock
        self.timeouts = 0  # acquisitions that timed out (the charge then went ahead unlocked)
        self._locked = _TimedLock(self)

    @classmethod
    def create(cls, lock: Any, slots: int = DEFAULT_SLOTS) -> "SharedTokenStore":
        shm = shared_memory.SharedMemory(create=True, size=slots * FIELDS_PER_SLOT * 8)
        store = cls(shm, lock, owner=True)
        for slot in range(slots):
            store.reset(slot)
        return store

    @classmethod
    def attach(cls, name: str, lock: Any) -> "SharedTokenStore":
        # Workers (forkserver children) share the supervisor's resource tracker, so registering the segment
        # again is harmless, and if the supervisor dies the tracker still unlinks it.
        return cls(shared_memory.SharedMemory(name=name), lock, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def lock_timeouts(self) -> int:
        return self.timeouts

    def ensure(self, slots: int) -> None:
        if slots > self.slots:
            raise ValueError(f"too many classes: the shared token store holds {self.slots} slots")

    def locked(self) -> _TimedLock:
        return self._locked

    def reset(self, slot: int) -> None:
        base = slot * FIELDS_PER_SLOT
        self.values[base] = 0.0
        self.values[base + 1] = 0.0
        self.values[base + 2] = math.nan

    def read(self, slot: int) -> tuple[float, float, float]:
        base = slot * FIELDS_PER_SLOT
        return self.values[base], self.values[base + 1], self.values[base + 2]

    def close(self) -> None:
        values = self.values
        self.values = []  # drop the export before closing the mapping
        close_segment(self._shm, self._owner, [values] if isinstance(values, memoryview) else [])


def close_segment(shm: shared_memory.SharedMemory, owner: bool, views: list[memoryview]) -> None:
    """Release `views` (the mapping cannot close while they export it), close it, and unlink it if `owner`."""
    for view in views:
        view.release()
    shm.close()
    if owner:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass

