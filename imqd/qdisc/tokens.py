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

    Names keep their slot across changes (their token state survives a live change); a slot freed by a
    removed class is reset before a new class gets it.  Raises ``ValueError`` when a fixed-size store is
    full.
    """

    def __init__(self, store: TokenStore, capacity: int | None = None) -> None:
        self.store = store
        self.capacity = capacity  # None: the store grows
        self.slots: dict[str, int] = {}

    def assign(self, names: Iterable[str]) -> dict[str, int]:
        wanted = set(names)
        slots = {n: s for n, s in self.slots.items() if n in wanted}
        used = set(slots.values())
        nxt = 0
        for name in sorted(wanted - set(slots)):
            while nxt in used:
                nxt += 1
            if self.capacity is not None and nxt >= self.capacity:
                raise ValueError(f"too many classes (the token store holds {self.capacity})")
            used.add(nxt)
            slots[name] = nxt
        for name, slot in slots.items():
            if self.slots.get(name) != slot:
                self.store.reset(slot)  # a new class starts fresh, whatever a removed one left there
        self.slots = slots
        return dict(slots)
