"""Per-host token buckets that several workers share, so a ``per_host`` cap holds in total.

``--queue-balance`` hashes host *pairs*: a subscriber downloading from two servers can land on two
workers, and each worker's :class:`~imqd.qdisc.perhost.PerHost` leaf keeps its own queue for that host.
The queues may stay per worker (they only order the host's own packets); the cap may not.  So with more
than one worker, every host's bucket state (tokens, ``t_c``) lives in one :class:`HostBucketTable` in
shared memory (:mod:`imqd.shared_hosts` makes it), and a packet released by any worker is charged to the
same bucket -- as :mod:`imqd.shared_tokens` does for a class's rate.

The table is set-associative: a (class tag, host) pair hashes to a set of ``WAYS`` entries.  An entry
whose bucket has refilled to its burst holds nothing a fresh bucket would not, so any worker may take it
over for another host: idle hosts need no clean-up, and a host that comes back simply starts full, as it
would on its own.  Only when every entry of a set belongs to a host still paying off its burst does a new
host fall back to a bucket of its own in this worker (counted in ``overflows``): the per-worker behaviour,
never a lost packet.  Each read-modify-write takes the table's lock (the token store's, tried with a short
timeout like every charge, see :mod:`imqd.shared_tokens`).

Pure: the table works over any pair of int64 / double sequences (a ``bytearray`` in tests, a shared
memory segment in the workers) and takes ``now`` as an argument.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import MutableSequence
from typing import Any

from imqd.qdisc.host_share import ShareTable
from imqd.qdisc.tbf import TokenBucket
from imqd.qdisc.tokens import LOCK_TIMEOUT_S

WAYS = 4
FIELDS = 6  # per entry: tag, key_lo, key_hi (int64 view) | tokens, t_c, buffer (double view), in seconds
_TAG, _LO, _HI, _TOKENS, _TC, _BUFFER = range(FIELDS)
_U64 = (1 << 64) - 1
DEFAULT_ENTRIES = 65536


def _int64(x: int) -> int:
    x &= _U64
    return x - (1 << 64) if x >> 63 else x


def class_tag(direction: str, name: str) -> int:
    """A class's identity in the table: the same in every worker process (unlike ``hash(str)``), never 0."""
    digest = hashlib.blake2b(f"{direction}\0{name}".encode(), digest_size=8).digest()
    return _int64(int.from_bytes(digest, "little") | 1)


class HostBucketTable:
    """Bucket state of (class, host) pairs over two views of one buffer; see the module docstring."""

    __slots__ = ("ints", "floats", "sets", "lock", "overflows", "lock_timeouts", "share")

    def __init__(self, ints: MutableSequence[int], floats: MutableSequence[float], lock: Any | None,
                 share: ShareTable | None = None) -> None:
        if len(ints) != len(floats) or len(ints) < FIELDS * WAYS:
            raise ValueError(f"host bucket table: views of {len(ints)} and {len(floats)} items; need two equal "
                             f"views of at least {FIELDS * WAYS}")
        self.ints = ints
        self.floats = floats
        self.sets = len(ints) // (FIELDS * WAYS)
        self.lock = lock  # None: one process uses the table
        self.overflows = 0  # hosts that found their set full of busy buckets (they got one of their own)
        self.lock_timeouts = 0
        #: the classes' busy hosts and virtual times in every worker, for equal shares across workers
        #: (imqd.qdisc.host_share); None: each worker's leaf shares among its own hosts only
        self.share = share

    @classmethod
    def local(cls, entries: int = 1024, lock: Any | None = None) -> HostBucketTable:
        """A table in this process's memory (tests; several leaves in one process can share it)."""
        view = memoryview(bytearray(max(entries, WAYS) * FIELDS * 8))
        return cls(view.cast("q"), view.cast("d"), lock)

    def acquire(self) -> bool:
        lock = self.lock
        if lock is None:
            return False
        if lock.acquire(True, LOCK_TIMEOUT_S):
            return True
        self.lock_timeouts += 1  # a worker died holding it: go ahead unlocked (at worst one lost update)
        return False

    def release(self, held: bool) -> None:
        if held:
            self.lock.release()

    def find(self, tag: int, lo: int, hi: int, now: float, buffer: float, hint: int, claim: bool) -> int:
        """The offset of the entry of (tag, lo, hi); -1 if it has none.  With ``claim`` an entry is made for
        it, full, if its set has room (a free or a refilled entry); without, a missing entry stands for a full
        bucket and nothing is written.

        ``hint`` is the offset found last time (checked first: it may have been taken over since).
        Call with the lock held."""
        ints, floats = self.ints, self.floats
        if hint >= 0 and ints[hint] == tag and ints[hint + _LO] == lo and ints[hint + _HI] == hi:
            return hint
        mix = ((tag * 0x9E3779B97F4A7C15) ^ (lo * 0xC2B2AE3D27D4EB4F) ^ (hi * 0x165667B19E3779F9)) & _U64
        base = ((mix >> 16) % self.sets) * WAYS * FIELDS
        free = -1
        for o in range(base, base + WAYS * FIELDS, FIELDS):
            t = ints[o]
            if t == tag and ints[o + _LO] == lo and ints[o + _HI] == hi:
                return o
            if free < 0 and (t == 0 or floats[o + _TOKENS] + (now - floats[o + _TC]) >= floats[o + _BUFFER]):
                free = o  # free, or a bucket that has refilled: as good as new for anyone
        if free < 0 or not claim:
            return -1
        ints[free], ints[free + _LO], ints[free + _HI] = tag, lo, hi
        floats[free + _TOKENS], floats[free + _TC], floats[free + _BUFFER] = buffer, -math.inf, buffer
        return free


class SharedBucket:
    """One host's cap in a :class:`HostBucketTable`: a :class:`~imqd.qdisc.tbf.TokenBucket` whose state
    (``tokens``, ``t_c``) lives in the table, so every worker charges the same one.  Each look or charge loads
    the entry into ``_view``, a TokenBucket with the host's rate and burst, and lets it do the arithmetic.

    Only a charge claims an entry; a look at a host without one sees a full bucket.  A host whose charge
    found its set busy gets a bucket of its own in this worker (``_own``, counted once in ``overflows``) and
    keeps it until it has refilled: moving its debt to a fresh entry earlier would forgive the debt."""

    __slots__ = ("table", "tag", "lo", "hi", "_at", "_own", "_view")

    def __init__(self, table: HostBucketTable, tag: int, key: int, rate: float, burst: int) -> None:
        self.table = table
        if key < 0:  # packets without a host: a key no address has (lo, hi = -1, -1 is ff..ff/128)
            tag, key = tag ^ 2, 0
        self.tag = tag
        self.lo = _int64(key)
        self.hi = _int64(key >> 64)
        self._at = -1  # offset of this host's entry when last seen
        self._own: TokenBucket | None = None  # while the table had no room for this host
        self._view = TokenBucket(rate, burst)  # validates both

    @property
    def rate(self) -> float:
        return self._view.rate

    @property
    def burst(self) -> int:
        return self._view.burst

    def _find(self, now: float, claim: bool) -> int:
        """This host's entry (see :meth:`HostBucketTable.find`); call with the lock held."""
        o = self._at = self.table.find(self.tag, self.lo, self.hi, now, self._view.buffer, self._at, claim)
        return o

    def set_rate(self, rate: float, burst: int) -> None:
        """Change rate and burst at once; saved-up time is kept (capped at the new buffer).

        Every worker applies the same change to the same entry: capping is idempotent."""
        view = self._view
        view.set_rate(rate, burst)
        if self._own is not None:
            self._own.set_rate(rate, burst)
        table = self.table
        held = table.acquire()
        try:
            o = self._find(-math.inf, claim=False)  # -inf: only an entry this host has, never another's
            if o >= 0:
                floats = table.floats
                floats[o + _TOKENS] = min(floats[o + _TOKENS], view.buffer)
                floats[o + _BUFFER] = view.buffer
        finally:
            table.release(held)

    def _look(self, now: float) -> TokenBucket:
        """The bucket as it stands: this worker's own while it is in debt, else the table's entry loaded into
        ``_view`` (a full bucket if the host has none)."""
        own = self._own
        if own is not None and not own.full(now):
            return own
        view = self._view
        table = self.table
        held = table.acquire()
        try:
            o = self._find(now, claim=False)
            view.state = (view.buffer, -math.inf) if o < 0 else (table.floats[o + _TOKENS], table.floats[o + _TC])
        finally:
            table.release(held)
        return view

    def tokens(self, now: float) -> float:
        return self._look(now).tokens(now)

    def ready_at(self, size: int) -> float:
        return self._look(-math.inf).ready_at(size)  # -inf: an own bucket in debt stays the source

    def conforms(self, size: int, now: float) -> bool:
        return self._look(now).conforms(size, now)

    def time_until(self, size: int, now: float) -> float:
        return self._look(-math.inf).time_until(size, now)

    def consume(self, size: int, now: float) -> None:
        own = self._own
        if own is not None and not own.full(now):
            own.consume(size, now)
            return
        table = self.table
        held = table.acquire()
        try:
            o = self._find(now, claim=True)
            if o < 0:
                if own is None:
                    own = self._own = TokenBucket(self.rate, self.burst)
                    table.overflows += 1
                own.consume(size, now)
                return
            self._own = None  # it had refilled: the entry carries on from a full bucket
            floats, view = table.floats, self._view
            view.state = (floats[o + _TOKENS], floats[o + _TC])
            view.consume(size, now)
            floats[o + _TOKENS], floats[o + _TC] = view.state
            floats[o + _BUFFER] = view.buffer
        finally:
            table.release(held)
