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
from contextlib import AbstractContextManager, nullcontext
from typing import MutableSequence, Protocol

FIELDS_PER_SLOT = 3  # tokens, ctokens, t_c
_UNLOCKED = nullcontext()  # reusable: a private store's "lock" costs no allocation per packet


class TokenStore(Protocol):
    """Token state of HTB classes, addressed by slot number."""

    values: MutableSequence[float]

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
