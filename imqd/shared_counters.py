"""Per-class counters in shared memory: each worker writes its own block, the supervisor reads them all.

Why: with 10,000 classes, a worker that built and pickled a dict per class every 0.5 s spent tens of
milliseconds on it while its packets waited, and the supervisor rebuilt those dicts for every request.
Instead each worker's HTB writes its counters (``bytes``, ``packets``, ``drops``, ...: see
:data:`COUNTER_FIELDS`) as int64s straight into one block of this segment, one row per class token slot
(the same numbering as :mod:`imqd.shared_tokens`), and the worker sends no per-class data at all.  The
supervisor sums a row over the workers' blocks whenever it samples (:mod:`imqd.stats_sampler`).

Layout: ``workers x slots x FIELDS_PER_COUNTER_SLOT`` int64, block ``i`` belongs to the worker of the
supervisor's ``i``-th queue, for good: a restarted worker attaches the same block and continues the counts
it finds there.  Only the supervisor creates and unlinks the segment.  A reader sees each int64 whole (aligned
8-byte stores), but the fields of one row are not read as one atomic unit: a sample may count a packet's bytes
and not yet its packet.  That is fine for statistics.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from imqd.qdisc.counters import COUNTER_FIELDS, FIELDS_PER_COUNTER_SLOT
from imqd.shared_tokens import close_segment

__all__ = ["COUNTER_FIELDS", "FIELDS_PER_COUNTER_SLOT", "FIELD", "CounterBlock", "SharedCounters"]

#: field name -> its offset within a row
FIELD = {name: i for i, name in enumerate(COUNTER_FIELDS)}
_ITEM = 8  # int64


class CounterBlock:
    """One worker's rows, a :class:`~imqd.qdisc.counters.CounterStore` that HTB writes to (``values``: a
    writable int64 view, ``slot * 7 + field``)."""

    def __init__(self, values: memoryview, slots: int) -> None:
        self.values = values
        self.slots = slots

    def ensure(self, slots: int) -> None:
        """A block is fixed-size, like the shared token store it mirrors."""
        if slots > self.slots:
            raise ValueError(f"too many classes: the shared counters hold {self.slots} slots")


class SharedCounters:
    """The segment: the supervisor ``create``s (and unlinks) it, each worker ``attach``es and takes its ``block``."""

    def __init__(self, shm: shared_memory.SharedMemory, workers: int, slots: int, owner: bool) -> None:
        size = workers * slots * FIELDS_PER_COUNTER_SLOT * _ITEM
        if workers < 1 or slots < 1 or len(shm.buf) < size:
            shm.close()
            raise ValueError(f"a counter segment of {len(shm.buf)} bytes cannot hold {workers} workers x "
                             f"{slots} slots")
        self._shm = shm
        self._owner = owner
        self.workers = workers
        self.slots = slots
        self._bytes = shm.buf[:size]  # the segment may be rounded up to a page
        self.values = self._bytes.cast("q")
        self._blocks: list[memoryview] = []

    @classmethod
    def create(cls, workers: int, slots: int) -> SharedCounters:
        """A zeroed segment for ``workers`` blocks of ``slots`` rows (POSIX shared memory starts zeroed)."""
        size = max(1, workers * slots * FIELDS_PER_COUNTER_SLOT * _ITEM)
        return cls(shared_memory.SharedMemory(create=True, size=size), workers, slots, owner=True)

    @classmethod
    def attach(cls, name: str, workers: int, slots: int) -> SharedCounters:
        # Workers (forkserver children) share the supervisor's resource tracker, as with the token store.
        return cls(shared_memory.SharedMemory(name=name), workers, slots, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    def block(self, index: int) -> CounterBlock:
        """Block ``index`` (0 .. workers-1): the rows of one worker."""
        if not 0 <= index < self.workers:
            raise ValueError(f"no counter block {index}: the segment has {self.workers}")
        width = self.slots * FIELDS_PER_COUNTER_SLOT * _ITEM
        view = self._bytes[index * width:(index + 1) * width].cast("q")
        self._blocks.append(view)
        return CounterBlock(view, self.slots)

    def totals(self, rows: int) -> list[int]:
        """Rows ``0 .. rows-1`` summed over every worker's block, flat (``slot * 7 + field``).

        One C-level copy per block (``tolist``) and one sum per value: ~2 ms per worker for 10,000 classes.
        """
        rows = max(0, min(rows, self.slots))
        n = rows * FIELDS_PER_COUNTER_SLOT
        stride = self.slots * FIELDS_PER_COUNTER_SLOT
        parts = [self.values[w * stride:w * stride + n].tolist() for w in range(self.workers)]
        if len(parts) == 1:
            return parts[0]
        return [sum(column) for column in zip(*parts)]

    def close(self) -> None:
        """Release every view, unmap, and unlink if this process created the segment."""
        views = [*self._blocks, self.values, self._bytes]
        self._blocks = []
        self.values = memoryview(b"").cast("q")
        close_segment(self._shm, self._owner, views)
