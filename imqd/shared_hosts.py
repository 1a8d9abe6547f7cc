"""The per-host bucket table in shared memory, so a ``per_host`` cap holds across all workers.

The supervisor ``create``s one segment (zeroed: every entry free) next to the class token store and
``unlink``s it on exit; workers ``attach`` by name and hand the table to their :class:`~imqd.shaper.Shaper`.
A single worker gets no table: its leaves keep their buckets to themselves, as before.  How the table
works: :mod:`imqd.qdisc.host_buckets`.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Any

from imqd.qdisc.host_buckets import DEFAULT_ENTRIES, FIELDS, HostBucketTable
from imqd.shared_tokens import close_segment


class SharedHostTable:
    """A :class:`HostBucketTable` over a named shared-memory segment (``table``), and its lifetime."""

    def __init__(self, shm: shared_memory.SharedMemory, lock: Any, owner: bool) -> None:
        self._shm = shm
        self._owner = owner
        view = shm.buf[: len(shm.buf) // (FIELDS * 8) * FIELDS * 8]  # the segment may be rounded up to a page
        self._views = (view.cast("q"), view.cast("d"), view)
        self.table = HostBucketTable(self._views[0], self._views[1], lock)

    @classmethod
    def create(cls, lock: Any, entries: int = DEFAULT_ENTRIES) -> SharedHostTable:
        return cls(shared_memory.SharedMemory(create=True, size=entries * FIELDS * 8), lock, owner=True)

    @classmethod
    def attach(cls, name: str, lock: Any) -> SharedHostTable:
        return cls(shared_memory.SharedMemory(name=name), lock, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    def close(self) -> None:
        self.table.ints = self.table.floats = []  # the table is unusable from here on
        close_segment(self._shm, self._owner, list(self._views))  # the casts first, then what they cast
