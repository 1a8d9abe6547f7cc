"""HTB's classes: what an operator configures (:class:`HTBClassParams`) and what the scheduler keeps per class
at run time (:class:`ClassState`), plus the constants both schedulers share.

Token state is in *seconds*, like the kernel's nanoseconds (``net/sched/sch_htb.c``): ``buffer =
burst*8/rate``, ``cbuffer = cburst*8/ceil``; a class's ``tokens``, ``ctokens`` and ``t_c`` live in a
:class:`~imqd.qdisc.tokens.TokenStore` slot so that several workers can share them.  Its counters (bytes,
packets, drops, ...) live in a :mod:`~imqd.qdisc.counters` row, so statistics can be read without asking
the worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from imqd.qdisc.leaves import LeafSpec

MAX_DEPTH = 8  # TC_HTB_MAXDEPTH: levels 0..7
NUM_PRIO = 8  # TC_HTB_NUMPRIO
MBUFFER = 60.0  # seconds; cap on the credit of an idle period (kernel: 60 * NSEC_PER_SEC)
TOKEN_FLOOR = 1e-9 - MBUFFER  # the kernel's "1 - mbuffer", in ns, expressed in seconds
NO_KEY = MAX_DEPTH * NUM_PRIO  # "not eligible": greater than any level*8+prio
NWC_POLL = 0.001  # re-poll delay for a leaf whose next_event claims "now" but peek says no

CAN_SEND, MAY_BORROW, CANT_SEND = "can_send", "may_borrow", "cant_send"
# The same modes as small ints, ordered from worst to best (the row scheduler caches them per class).
M_UNTRACKED, M_CANT, M_MAY, M_CAN = -1, 0, 1, 2
MODE_NAMES = {M_CANT: CANT_SEND, M_MAY: MAY_BORROW, M_CAN: CAN_SEND}

#: Distance between the DRR positions (``idx``) of consecutive leaves, so a leaf added later can be given a
#: position between two others without renumbering the tree.
IDX_GAP = 1 << 16


_FLOATS: dict[float, float] = {}


def shared_float(x: float) -> float:
    """The one float object of value ``x``: a worker keeps several floats per class, and subscribers share a
    few plans.  Forgotten and started again past 65,536 values, so it never grows without bound."""
    if len(_FLOATS) >= 65_536:
        _FLOATS.clear()
    return _FLOATS.setdefault(x, x)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class HTBClassParams:
    """One class of the tree, as ``tc class add ... htb`` would describe it (rates in bit/s, sizes in bytes)."""

    name: str
    parent: str | None  # None = a root of this tree (several roots allowed)
    rate: float
    ceil: float
    burst: int
    cburst: int
    prio: int = 0
    quantum: int = 1514
    slot: int = -1  # index into the TokenStore; -1 = HTB assigns one (local store)
    leaf: LeafSpec = field(default_factory=LeafSpec)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"class {name!r}: name must be a non-empty string")
        if self.parent is not None and (not isinstance(self.parent, str) or not self.parent):
            raise ValueError(f"class {name!r}: parent must be None or a class name, got {self.parent!r}")
        if self.parent == name:
            raise ValueError(f"class {name!r}: parent: a class cannot be its own parent")
        if not _is_num(self.rate) or not (0 < self.rate < math.inf):
            raise ValueError(f"class {name!r}: rate must be a finite number > 0 (bit/s), got {self.rate!r}")
        if not _is_num(self.ceil) or not (0 < self.ceil < math.inf):
            raise ValueError(f"class {name!r}: ceil must be a finite number > 0 (bit/s), got {self.ceil!r}")
        if self.ceil < self.rate:
            raise ValueError(f"class {name!r}: ceil {self.ceil!r} is below rate {self.rate!r}")
        for fname in ("burst", "cburst", "quantum"):
            v = getattr(self, fname)
            if not _is_int(v) or v < 1:
                raise ValueError(f"class {name!r}: {fname} must be an int >= 1 (bytes), got {v!r}")
        if not _is_int(self.prio) or not (0 <= self.prio < NUM_PRIO):
            raise ValueError(f"class {name!r}: prio must be an int in 0..{NUM_PRIO - 1}, got {self.prio!r}")
        if not _is_int(self.slot) or self.slot < -1:
            raise ValueError(f"class {name!r}: slot must be an int >= -1, got {self.slot!r}")
        if not isinstance(self.leaf, LeafSpec):
            raise ValueError(f"class {name!r}: leaf must be a LeafSpec, got {self.leaf!r}")


class ClassState:
    """Run-time state of one class; constants are precomputed so the per-packet paths only read them.

    ``idx`` is the class's DRR position: leaves are numbered in tree order (depth first, children in
    definition order, ``IDX_GAP`` apart) and an inner class spans ``lo..hi``, the positions of its first and
    last leaf, so every subtree is one interval.  The row scheduler relies on that to find "the first
    eligible leaf at or after the DRR pointer" by descending the tree instead of scanning every leaf.

    A FIFO leaf's queue ``q`` exists only while it holds packets (``spec`` says how to build it): most of
    10,000 subscriber classes are idle or let straight through at any moment, and an empty queue object costs
    more memory than the rest of the class.
    """

    __slots__ = (
        "name", "params", "idx", "lo", "hi", "level", "prio", "quantum", "slot", "base", "cbase",
        "buffer", "cbuffer", "spb", "cspb", "chain", "parent", "parent_name", "nchildren",
        "q", "spec", "lazy", "wc", "passthrough", "take_dropped", "active", "deficit", "key", "defined",
        "pooled",  # the packets of this leaf the worker's HeldPool counts (HTB._pool_sync keeps it = the backlog)
        # the row scheduler's cache (imqd/qdisc/htb_rows.py)
        "mode", "feeds", "prios", "wait_seq", "wait_at", "hold",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.name = name
        self.q: Any = None
        self.spec: LeafSpec | None = None
        self.lazy = False
        self.wc = True
        self.passthrough = 0
        self.take_dropped: Any = None
        self.active = False
        self.pooled = 0
        self.deficit = [0] * MAX_DEPTH
        self.key = NO_KEY
        self.chain: tuple[ClassState, ...] = ()
        self.parent: ClassState | None = None
        self.nchildren = 0
        self.idx = self.lo = self.hi = 0
        self.defined = 0  # rank in definition order (HTB._classes' order), for iterating a few classes in it
        self.mode = M_UNTRACKED
        self.feeds: list[list[ClassState]] | None = None
        self.prios = 0
        self.wait_seq = 0
        self.wait_at = 0.0
        self.hold = 0

    def set_params(self, p: HTBClassParams, level: int, slot: int, counter_fields: int) -> None:
        self.params = p
        self.parent_name = p.parent
        self.level = level
        self.prio = p.prio
        self.quantum = p.quantum
        self.slot = slot
        self.base = slot * 3  # FIELDS_PER_SLOT of the token store: tokens, ctokens, t_c
        self.cbase = slot * counter_fields
        # classes on the same plan share these four objects (32 bytes each, times 10,000 subscribers)
        self.spb = shared_float(8.0 / p.rate)  # seconds of rate-tokens per byte
        self.cspb = shared_float(8.0 / p.ceil)
        self.buffer = shared_float(p.burst * self.spb)
        self.cbuffer = shared_float(p.cburst * self.cspb)

    def set_leaf(self, q: Any, spec: LeafSpec | None, lazy: bool = False, passthrough: int = 0) -> None:
        """Install the leaf qdisc ``q`` (None: an inner class, or a lazy FIFO with nothing queued)."""
        self.q = q
        self.spec = spec
        self.lazy = lazy
        self.take_dropped = getattr(q, "take_dropped", None) if q is not None else None
        if spec is None:
            self.wc, self.passthrough = True, 0
        elif q is None:  # lazy FIFO: what the queue would say, without building it
            self.wc, self.passthrough = True, passthrough
        else:
            self.wc = bool(getattr(q, "work_conserving", False))
            # packets up to this size may skip an empty leaf (send_now); 0 = never (the leaf keeps state)
            self.passthrough = int(getattr(q, "passthrough_max", 0))

    @property
    def is_leaf(self) -> bool:
        return self.spec is not None
