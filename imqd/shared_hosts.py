"""The per-host table in shared memory, so a ``per_host`` cap and the equal share hold across all workers.

The supervisor ``create``s one segment (zeroed: every entry free) next to the class token store and
``unlink``s it on exit; workers ``attach`` by name, as worker ``i`` of ``workers``, and hand the table to
their :class:`~imqd.shaper.Shaper`.  A single worker gets no table: its leaves keep their buckets and their
equal share to themselves, as before.  The segment holds two regions: the host buckets
(:mod:`imqd.qdisc.host_buckets`) and, after them, one row per class with each worker's busy hosts and
virtual time (:mod:`imqd.qdisc.host_share`).
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Any

from imqd.qdisc.host_buckets import DEFAULT_ENTRIES, FIELDS, HostBucketTable
from imqd.qdisc.host_share import DEFAULT_ROWS, ShareTable, row_fields
from imqd.shared_tokens import close_segment


class SharedHostTable:
    """A :class:`HostBucketTable` (with its :class:`ShareTable`) over a named shared-memory segment
    (``table``), and its lifetime."""

    def __init__(self, shm: shared_memory.SharedMemory, lock: Any, owner: bool, entries: int, workers: int,
                 worker: int) -> None:
        self._shm = shm
        self._owner = owner
        split = entries * FIELDS * 8
        rsize = row_fields(workers) * 8
        if len(shm.buf) < split + rsize:
            raise ValueError(f"host table segment {shm.name}: {len(shm.buf)} bytes, too small for {entries} "
                             f"entries and the rows of {workers} workers")
        buckets = shm.buf[:split]
        rows = shm.buf[split: split + (len(shm.buf) - split) // rsize * rsize]  # may be rounded up to a page
        self._views = (buckets.cast("q"), buckets.cast("d"), rows.cast("q"), rows.cast("d"), buckets, rows)
        share = ShareTable(self._views[2], self._views[3], workers, worker, lock)
        self.table = HostBucketTable(self._views[0], self._views[1], lock, share)

    @classmethod
    def create(cls, lock: Any, workers: int, entries: int = DEFAULT_ENTRIES, rows: int = DEFAULT_ROWS
               ) -> SharedHostTable:
        size = entries * FIELDS * 8 + rows * row_fields(workers) * 8
        return cls(shared_memory.SharedMemory(create=True, size=size), lock, True, entries, workers, 0)

    @classmethod
    def attach(cls, name: str, lock: Any, workers: int, worker: int, entries: int = DEFAULT_ENTRIES
               ) -> SharedHostTable:
        """Worker ``worker``'s view; its busy hosts from an earlier life are cleared (it starts empty)."""
        self = cls(shared_memory.SharedMemory(name=name), lock, False, entries, workers, worker)
        self.share.clear_worker(worker)
        return self

    @property
    def share(self) -> ShareTable:
        assert self.table.share is not None
        return self.table.share

    @property
    def name(self) -> str:
        return self._shm.name

    def close(self) -> None:
        self.table.ints = self.table.floats = []  # the table is unusable from here on
        share = self.table.share
        if share is not None:
            share.ints = share.floats = []
        close_segment(self._shm, self._owner, list(self._views))  # the casts first, then what they cast
