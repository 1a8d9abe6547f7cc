"""Equal sharing of a ``per_host`` class among the hosts busy in *all* workers.

Each worker's :class:`~imqd.qdisc.perhost.PerHost` leaf runs DRR over the hosts it sees, and the workers
compete for the class's shared tokens.  Left alone, a worker with one busy host and a worker with three get
about half of the class each, so the lone host gets twice its share.  Weighing the workers' claims by their
busy hosts makes the share per host again:

* Every worker publishes, per class, how many of its hosts are busy (``act``: backlogged and not held back by
  their own cap) and its *virtual time* ``vt``: the bytes it released for the class divided by ``act`` at
  each release, i.e. the service each of its hosts got.  Only the worker itself writes its own fields, so
  that needs no lock.
* A worker may release a packet of the class only while its ``vt`` is not ahead of the smallest ``vt`` of the
  other workers with busy hosts by more than ``SLACK`` bytes.  The worker that lags is never held, so the
  class's tokens always have a taker, and the ``vt``s of busy workers stay within ``SLACK`` plus one packet
  of each other: every busy host gets the same service, whichever worker carries it (start-time fair
  queueing with the workers as flows weighted by their busy hosts).
* A worker whose hosts become busy again starts at the smallest ``vt`` of the busy others (or the largest of
  all when none is busy), like a flow joining a fair queue: idle time earns no credit.
* Freshness: each worker stamps ``seen`` whenever its leaf is used.  A worker not seen for ``STALE`` seconds
  (stopped, or its class blocked that long) holds nobody back; the supervisor zeroes a dead worker's fields.
  Hosts going idle stop counting at once (``act`` falls as their queues empty).

The rows live in the host bucket segment (:mod:`imqd.shared_hosts`), one per class, found by the class's tag
(:func:`~imqd.qdisc.host_buckets.class_tag`) with linear probing; a row whose workers are all idle (or stale
for ``RECLAIM`` seconds) may be taken over by another class.  A class that finds no row is shared per worker,
as before, and counted in ``overflows``.

Pure: the table works over any pair of int64 / double views of one buffer and takes ``now`` as an argument.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import MutableSequence
from typing import Any

from imqd.qdisc.tokens import LOCK_TIMEOUT_S

ACT, VT, SEEN = range(3)  # a worker's fields in a row (double view), after the row's tag (int64 view)
WORKER_FIELDS = 3
SLACK = 3028.0  # bytes per host a worker may run ahead of the slowest busy one (two full-size frames)
STALE = 1.0  # s: a worker not seen for this long holds nobody back
RECLAIM = 60.0  # s: a row none of whose workers was busy this recently may serve another class
POLL = 0.001  # s: a held worker looks again this soon (the laggard's progress is not announced); and how
# long a worker trusts what it read of the others while that lets it send (their virtual times only grow)
SEEN_EVERY = 0.01  # s: how often a busy worker stamps ``seen`` (far below STALE; saves a write per packet)
PROBES = 8  # rows looked at for a class (linear probing)
DEFAULT_ROWS = 4096


def row_fields(workers: int) -> int:
    return 1 + WORKER_FIELDS * workers


class ShareTable:
    """The classes' rows over two views of one buffer, as seen by worker ``worker`` of ``workers``."""

    __slots__ = ("ints", "floats", "workers", "worker", "rows", "rsize", "lock", "overflows")

    def __init__(self, ints: MutableSequence[int], floats: MutableSequence[float], workers: int, worker: int,
                 lock: Any | None) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"host share table: workers must be an int >= 1, got {workers!r}")
        if not isinstance(worker, int) or not 0 <= worker < workers:
            raise ValueError(f"host share table: worker must be an int in [0, {workers}), got {worker!r}")
        rsize = row_fields(workers)
        if len(ints) != len(floats) or len(ints) < rsize:
            raise ValueError(f"host share table: views of {len(ints)} and {len(floats)} items; need two equal "
                             f"views of at least {rsize}")
        self.ints = ints
        self.floats = floats
        self.workers = workers
        self.worker = worker
        self.rsize = rsize
        self.rows = len(ints) // rsize
        self.lock = lock
        self.overflows = 0  # classes that found no row (shared per worker instead)

    @classmethod
    def local(cls, workers: int, rows: int = 64) -> ShareTable:
        """A table in this process's memory, as worker 0 (tests: :meth:`as_worker` gives the others)."""
        view = memoryview(bytearray(rows * row_fields(workers) * 8))
        return cls(view.cast("q"), view.cast("d"), workers, 0, None)

    def as_worker(self, worker: int) -> ShareTable:
        """The same rows as seen by another worker."""
        return ShareTable(self.ints, self.floats, self.workers, worker, self.lock)

    def find(self, tag: int, now: float) -> int:
        """The offset of ``tag``'s row, claimed (zeroed) if it has none; -1 when its rows are all in use."""
        ints, floats, rsize, rows = self.ints, self.floats, self.rsize, self.rows
        start = int.from_bytes(hashlib.blake2b(tag.to_bytes(8, "little", signed=True), digest_size=4).digest(),
                               "little") % rows
        held = self.lock is not None and self.lock.acquire(True, LOCK_TIMEOUT_S)
        try:
            free = -1
            for i in range(min(PROBES, rows)):
                o = (start + i) % rows * rsize
                if ints[o] == tag:
                    return o
                if free < 0 and (ints[o] == 0 or self._unused(o, now)):
                    free = o
            if free < 0:
                self.overflows += 1
                return -1
            ints[free] = tag
            for f in range(free + 1, free + rsize):
                floats[f] = 0.0
            for w in range(self.workers):
                floats[free + 1 + w * WORKER_FIELDS + SEEN] = now
            return free
        finally:
            if held:
                self.lock.release()

    def _unused(self, o: int, now: float) -> bool:
        floats = self.floats
        for w in range(self.workers):
            f = o + 1 + w * WORKER_FIELDS
            if floats[f + ACT] > 0 and now - floats[f + SEEN] < RECLAIM:
                return False
        return True

    def clear_worker(self, worker: int) -> int:
        """Zero ``worker``'s busy hosts in every row (it died or starts afresh); returns the rows changed."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"host share table: no worker {worker} (of {self.workers})")
        floats, rsize = self.floats, self.rsize
        n = 0
        for o in range(1 + worker * WORKER_FIELDS + ACT, len(floats), rsize):
            if floats[o]:
                floats[o] = 0.0
                n += 1
        return n


class ClassShare:
    """This worker's claim on one class: publishes its busy hosts and virtual time, and says whether it may
    release now.  Used by one :class:`~imqd.qdisc.perhost.PerHost` leaf.

    Per packet it writes its virtual time and reads nothing: its own ``vt`` is kept here (it is the only
    writer), and the smallest ``vt`` of the busy others (``others_min``) is re-read only when it would hold
    this worker back or is older than ``POLL``.  The others' ``vt``s only grow and a worker joins at no less
    than that smallest one, so within ``POLL`` a stale ``others_min`` can only err towards holding back, and
    that case re-reads."""

    __slots__ = ("table", "tag", "row", "own", "others", "act", "vt", "others_min", "read_at", "_seen_at")

    def __init__(self, table: ShareTable, tag: int) -> None:
        self.table = table
        self.tag = tag
        self.row = -1  # found when the class first gets busy
        self.own = -1
        self.others: tuple[int, ...] = ()
        self.act = 0  # busy hosts as last published
        self.vt = 0.0  # this worker's virtual time (published in the row)
        self.others_min = math.inf  # the smallest vt of the fresh busy others, as read at read_at
        self.read_at = -math.inf
        self._seen_at = -math.inf  # when this worker last stamped its seen field

    def _locate(self, now: float) -> bool:
        t = self.table
        if self.row >= 0 and t.ints[self.row] == self.tag:
            return True
        o = self.row = t.find(self.tag, now)
        if o < 0:
            return False
        self.own = o + 1 + t.worker * WORKER_FIELDS
        self.others = tuple(o + 1 + w * WORKER_FIELDS for w in range(t.workers) if w != t.worker)
        self.vt = t.floats[self.own + VT]
        return True

    def set_active(self, n: int, now: float) -> None:
        """Publish that ``n`` hosts are busy here (a worker joining starts at the others' virtual time)."""
        if n and not self.act:
            if not self._locate(now):
                self.act = n  # no row: not shared (counted in overflows)
                return
            self._rejoin(now)
        elif self.row < 0:
            self.act = n
            return
        self.act = n
        floats = self.table.floats
        floats[self.own + ACT] = float(n)
        floats[self.own + SEEN] = self._seen_at = now

    def _rejoin(self, now: float) -> None:
        """Start no earlier than the smallest virtual time of the fresh busy others (else the largest of all):
        idle time earns no credit."""
        floats = self.table.floats
        lo = math.inf
        hi = 0.0
        for f in self.others:
            v = floats[f + VT]
            if floats[f + ACT] > 0 and now - floats[f + SEEN] < STALE:
                if v < lo:
                    lo = v
            elif v > hi:
                hi = v
        floor = hi if lo == math.inf else lo
        if floor > self.vt:
            self.vt = floats[self.own + VT] = floor
        self.read_at = -math.inf

    def may_send(self, now: float) -> bool:
        """Whether this worker's hosts are not ahead of the busy others (by more than ``SLACK``)."""
        if self.vt - SLACK <= self.others_min and now - self.read_at < POLL:
            return True
        if self.row < 0 or not self.act:
            return True
        if now - self._seen_at >= STALE:  # back after a long pause: rejoin like an idle worker
            self._rejoin(now)
        if now - self._seen_at >= SEEN_EVERY:
            self.table.floats[self.own + SEEN] = self._seen_at = now
        floats = self.table.floats
        lo = math.inf
        for f in self.others:
            v = floats[f + VT]
            if v < lo and floats[f + ACT] > 0 and now - floats[f + SEEN] < STALE:
                lo = v
        self.others_min = lo
        self.read_at = now
        return self.vt - SLACK <= lo

    def sent(self, size: int, now: float) -> None:
        """Account ``size`` bytes released for the class: each busy host's share of it."""
        act = self.act
        if self.row < 0 or not act:
            return
        vt = self.vt = self.vt + size / act
        floats = self.table.floats
        floats[self.own + VT] = vt
        if now - self._seen_at >= SEEN_EVERY:
            floats[self.own + SEEN] = self._seen_at = now

    def busy_hosts(self, now: float) -> int:
        """Busy hosts of the class in every fresh worker, this one's included (for statistics)."""
        if self.row < 0:
            return self.act
        floats = self.table.floats
        n = self.act
        for f in self.others:
            if now - floats[f + SEEN] < STALE:
                n += int(floats[f + ACT])
        return n
