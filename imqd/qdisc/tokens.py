"""Where HTB keeps each class's token state, so that a class's rate can be global.

Every worker process runs its own HTB tree (its own queues, DRR pointers and
priorities), but the *token* state of each class -- ``tokens``, ``ctokens``
and the time of the last charge ``t_c``, as in the kernel's ``htb_class`` --
can live in a store shared by all workers.  A packet released by any worker
is then charged against the same buckets, so a class's rate and ceil hold in
total across workers (see docs/architecture.md).

A store is a flat array of floats, three per slot.  A slot whose ``t_c`` is
NaN is *fresh*: the first HTB that touches it fills both buckets.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, MutableSequence, Protocol

FIELDS_PER_SLOT = 3  # tokens, ctokens, t_c
LOCK_TIMEOUT_S = 0.005  # a shared store's lock is never waited for longer (a worker may die holding it)
_UNLOCKED = nullcontext()  # reusable: a private store's "lock" costs no allocation per packet


class TokenStore(Protocol):
    """Token state of HTB classes, addressed by slot number."""

    values: MutableSequence[float]
    #: None for a private store; else a process-shared lock (``acquire(block, timeout)``, ``release()``)
    #: that HTB's per-packet charge takes directly, counting failed acquisitions in ``timeouts``.
    lock: Any
    timeouts: int

    def ensure(self, slots: int) -> None:
        """Make sure slots ``0 .. slots-1`` exist (a shared store is fixed-size)."""
        ...

    def locked(self) -> AbstractContextManager[object]:
        """Context manager that makes a read-modify-write of slots atomic."""
        ...

    def reset(self, slot: int) -> None:
        """Mark ``slot`` fresh (a new class taking over a freed slot)."""
        ...


class LocalTokenStore:
    """A store private to one process: an ``array('d')`` and no lock."""

    def __init__(self, slots: int = 0) -> None:
        self.values: MutableSequence[float] = array("d")
        self.lock = None
        self.timeouts = 0
        self.ensure(slots)

    def ensure(self, slots: int) -> None:
        missing = slots * FIELDS_PER_SLOT - len(self.values)
        if missing > 0:
            self.values.extend([math.nan] * missing)  # type: ignore[attr-defined]

    def locked(self) -> AbstractContextManager[object]:
        return _UNLOCKED

    def reset(self, slot: int) -> None:
        self.ensure(slot + 1)
        base = slot * FIELDS_PER_SLOT
        self.values[base] = self.values[base + 1] = 0.0
        self.values[base + 2] = math.nan


class SlotMap:
    """Class name -> slot of one store, for every class of both directions' trees.

    Names keep their slot across changes (their token state survives a live change).  Changes are
    incremental: :meth:`add` gives new names a slot each, :meth:`release` frees the slots of removed ones,
    both in time proportional to the names given.  A new class gets a slot never used before while there is
    one, else the slot freed longest ago, so a worker still applying the previous version (which may charge
    a removed class a last packet) rarely touches a slot that already belongs to a new class (a private,
    growing store reuses freed slots at once: it has no other worker); the slot is
    reset (fresh, full buckets) before the new class gets it.  Raises ``ValueError`` when a fixed-size store
    is full.
    """

    def __init__(self, store: TokenStore, capacity: int | None = None) -> None:
        self.store = store
        self.capacity = capacity  # None: the store grows
        self.slots: dict[str, int] = {}
        self._free: deque[int] = deque()  # freed slots, oldest first
        self._next = 0  # slots from here on were never used

    def add(self, names: Iterable[str]) -> dict[str, int]:
        """Slots for the names that have none yet (in the order given); returns just those."""
        added: dict[str, int] = {}
        for name in names:
            if name in self.slots or name in added:
                continue
            if self.capacity is None and self._free:  # a private store: no other worker, reuse at once
                slot = self._free.popleft()
            elif self.capacity is None or self._next < self.capacity:
                slot = self._next
                self._next += 1
            elif self._free:
                slot = self._free.popleft()
            else:
                for n, s in added.items():  # all or nothing
                    del self.slots[n]
                    self._free.appendleft(s)
                raise ValueError(f"too many classes (the token store holds {self.capacity})")
            self.store.reset(slot)  # a new class starts fresh, whatever a removed one left there
            self.slots[name] = added[name] = slot
        return added

    def release(self, names: Iterable[str]) -> None:
        """Free the slots of removed classes (names without a slot are ignored)."""
        for name in names:
            slot = self.slots.pop(name, None)
            if slot is not None:
                self._free.append(slot)

    def assign(self, names: Iterable[str]) -> dict[str, int]:
        """Make exactly ``names`` have slots (the others are released); returns the whole map."""
        wanted = dict.fromkeys(names)
        self.release([n for n in self.slots if n not in wanted])
        self.add(wanted)
        return dict(self.slots)
