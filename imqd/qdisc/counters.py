"""Where HTB keeps each class's counters: one row of int64 per class, at the class's token slot.

A worker's counters are plain machine integers in a buffer (an ``array('q')`` here, or a worker's block of
a shared-memory segment, see ``imqd/shared_counters.py``), not Python ints in objects: the C fast path adds
to them without allocating, a statistics reader (the supervisor, the API) reads them without asking the
worker to serialise 10,000 classes, and a restarted worker continues the counts of the one that died.

Row layout, ``slot * FIELDS_PER_COUNTER_SLOT + field``:

* ``bytes``, ``packets``: what the class was charged for (an inner class counts what its children sent
  through it, as the kernel's ``bstats``);
* ``drops``: packets its leaf queue dropped;
* ``borrows``, ``lends``: packets the class sent by borrowing from an ancestor / that it lent to a
  descendant (the kernel's ``xstats``);
* ``backlog_packets``, ``backlog_bytes``: what a leaf holds now (0 for an inner class: a reader sums its
  leaves).

Each worker writes only its own rows; a reader sums a class's rows over workers.  Aligned 8-byte stores are
single instructions on every platform imqd runs on, so a reader never sees half a counter.
"""

from __future__ import annotations

from array import array
from typing import MutableSequence, Protocol

COUNTER_FIELDS = ("bytes", "packets", "drops", "borrows", "lends", "backlog_packets", "backlog_bytes")
FIELDS_PER_COUNTER_SLOT = len(COUNTER_FIELDS)
C_BYTES, C_PACKETS, C_DROPS, C_BORROWS, C_LENDS, C_BACKLOG_PACKETS, C_BACKLOG_BYTES = range(FIELDS_PER_COUNTER_SLOT)


class CounterStore(Protocol):
    """Per-class counters of one worker, addressed by token slot; ``values`` is a writable int64 buffer."""

    values: MutableSequence[int]

    def ensure(self, slots: int) -> None:
        """Make sure rows ``0 .. slots-1`` exist (a shared segment is fixed-size and raises ValueError)."""
        ...


class LocalCounters:
    """Counters private to one process: an ``array('q')`` that grows as classes get slots."""

    def __init__(self, slots: int = 0) -> None:
        self.values: MutableSequence[int] = array("q")
        self.ensure(slots)

    def ensure(self, slots: int) -> None:
        missing = slots * FIELDS_PER_COUNTER_SLOT - len(self.values)
        if missing > 0:
            self.values.extend([0] * missing)  # type: ignore[attr-defined]


def row(values: MutableSequence[int], slot: int) -> dict[str, int]:
    """One class's counters as a dict (for statistics; not on the per-packet path)."""
    base = slot * FIELDS_PER_COUNTER_SLOT
    return {name: int(values[base + i]) for i, name in enumerate(COUNTER_FIELDS)}


def zero_row(values: MutableSequence[int], slot: int) -> None:
    base = slot * FIELDS_PER_COUNTER_SLOT
    for i in range(FIELDS_PER_COUNTER_SLOT):
        values[base + i] = 0


def zero_backlog(values: MutableSequence[int], slot: int) -> None:
    """A new worker holds nothing: whatever backlog a dead one left in the row is gone with it."""
    base = slot * FIELDS_PER_COUNTER_SLOT
    values[base + C_BACKLOG_PACKETS] = 0
    values[base + C_BACKLOG_BYTES] = 0
