"""Samples of the per-class counters: rates, subtree backlogs and link totals, computed once per sample.

The supervisor reads the shared counters (:mod:`imqd.shared_counters`) every ``SAMPLE_INTERVAL_S`` and turns
each reading into a :class:`CounterSnapshot` here; every request (``GET /stats``, ``/metrics``, the
dashboard's stream) reads the latest snapshot instead of asking the workers or recomputing rates.  Rates are
over about the last ``RATE_WINDOW_S`` of samples, so they do not depend on how often anybody asks.

Pure: times and counter values are passed in (tested with made-up samples).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imqd.config import Config
from imqd.shared_counters import FIELD, FIELDS_PER_COUNTER_SLOT

SAMPLE_INTERVAL_S = 0.5
RATE_WINDOW_S = 1.0
LINK_HISTORY_S = 60.0  # the dashboard's link chart: this much history is there when a page opens
DIRECTIONS = ("ingress", "egress")


@dataclass(frozen=True)
class TreeIndex:
    """What a sample needs from one configuration: slots, subtree order and each direction's classes."""

    slots: Mapping[str, int]
    #: slots of the classes that have a parent, deepest first, and their parents' slots (arrays: 16 bytes a
    #: class for as long as the config runs, not a tuple each): adding each to its parent sums subtrees
    children: array[int]
    parents: array[int]
    roots: Mapping[str, Sequence[int]]  # direction -> slots of its top-level classes
    members: Mapping[str, Sequence[int]]  # direction -> slots of all its classes
    rows: int  # 1 + the highest slot in use

    @classmethod
    def of(cls, config: Config, slots: Mapping[str, int]) -> TreeIndex:
        parents = {c.name: c.parent for c in config.classes}
        depth: dict[str, int] = {}
        for c in config.classes:  # a validated tree: parents exist, no cycles (they may follow their children)
            chain: list[str] = []
            name: str | None = c.name
            while name is not None and name not in depth:
                chain.append(name)
                name = parents.get(name)
            level = depth[name] if name is not None else -1
            for n in reversed(chain):
                level += 1
                depth[n] = level

        pairs = []
        for c in config.classes:
            if c.parent is not None and c.name in slots and c.parent in slots:
                pairs.append((depth[c.name], slots[c.name], slots[c.parent]))
        pairs.sort(reverse=True)
        known = [c for c in config.classes if c.name in slots]
        return cls(
            slots=dict(slots),
            children=array("q", [s for _, s, _ in pairs]),
            parents=array("q", [p for _, _, p in pairs]),
            roots={d: [slots[c.name] for c in known if c.direction == d and c.parent is None] for d in DIRECTIONS},
            members={d: [slots[c.name] for c in known if c.direction == d] for d in DIRECTIONS},
            rows=max(slots.values(), default=-1) + 1,
        )

    @property
    def child_parent(self) -> zip[tuple[int, int]]:
        """(slot, parent's slot) pairs, deepest classes first."""
        return zip(self.children, self.parents)


class RateMeter:
    """Bytes/s per row over about the last ``window`` seconds, from successive samples of a byte counter.

    A counter that went down (a slot handed to a new class and zeroed) reads as rate 0, not negative.
    """

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._samples: deque[tuple[float, Sequence[int]]] = deque()

    def add(self, now: float, counts: Sequence[int]) -> array[float]:
        samples = self._samples
        samples.append((now, counts))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        t0, old = samples[0]
        if now <= t0:
            return array("d", bytes(8 * len(counts)))
        dt = now - t0
        n = min(len(old), len(counts))
        rates = array("d", [(b - a) / dt if b > a else 0.0 for a, b in zip(old, counts[:n])])
        if len(counts) > n:  # rows that appeared since: no history yet
            rates.extend([0.0] * (len(counts) - n))
        return rates


@dataclass(frozen=True)
class CounterSnapshot:
    """One sample: per slot, every counter summed over workers (backlogs summed over the subtree) and the rate."""

    time: float  # the supervisor's monotonic clock at the reading
    wall: float  # the same moment in wall-clock time (for the dashboard's chart)
    tree: TreeIndex
    columns: Mapping[str, array[int]]  # COUNTER_FIELDS name -> value per slot
    rates: array[float]  # bytes/s per slot over about the last second
    #: per-leaf details of non-FIFO leaves (fq_codel, sfq, per_host, delay), one entry per worker
    leaves: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    directions: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # link totals per direction

    def value(self, name: str, key: str) -> int:
        slot = self.tree.slots.get(name)
        column = self.columns.get(key)
        if slot is None or column is None or slot >= len(column):
            return 0
        return column[slot]

    def rate(self, name: str) -> float:
        """Bytes/s of class ``name`` over about the last second (0 when unknown)."""
        slot = self.tree.slots.get(name)
        return self.rates[slot] if slot is not None and slot < len(self.rates) else 0.0


def empty_snapshot(tree: TreeIndex, now: float = 0.0, wall: float = 0.0) -> CounterSnapshot:
    """A snapshot with every counter at zero (before the first sample)."""
    return build_snapshot(tree, [0] * (tree.rows * FIELDS_PER_COUNTER_SLOT), array("d", bytes(8 * tree.rows)),
                          now, wall, {})


def build_snapshot(tree: TreeIndex, totals: Sequence[int], rates: array[float], now: float, wall: float,
                   leaves: Mapping[str, list[dict[str, Any]]]) -> CounterSnapshot:
    """A snapshot from the summed rows ``totals`` (flat, ``slot * 7 + field``) and the byte rates per slot."""
    step = FIELDS_PER_COUNTER_SLOT
    columns = {name: array("q", totals[i::step]) for name, i in FIELD.items()}
    for key in ("backlog_packets", "backlog_bytes"):  # leaves hold the backlog; an inner class shows its subtree's
        col = columns[key]
        for child, parent in tree.child_parent:
            col[parent] += col[child]
    return CounterSnapshot(now, wall, tree, columns, rates, dict(leaves), link_totals(tree, columns, rates))


def link_totals(tree: TreeIndex, columns: Mapping[str, array[int]], rates: array[float]
                ) -> dict[str, dict[str, Any]]:
    """Per direction: the rate through its top-level classes, and the drops and backlog of all its classes."""
    out = {}
    for d in DIRECTIONS:
        roots, members = tree.roots[d], tree.members[d]
        drops = columns["drops"]
        out[d] = {
            "rate_bps": round(8 * sum(rates[s] for s in roots)),
            "drops": sum(drops[s] for s in members),
            # the roots' backlog is their subtree's: every held packet once
            "backlog": {"packets": sum(columns["backlog_packets"][s] for s in roots),
                        "bytes": sum(columns["backlog_bytes"][s] for s in roots)},
            "classes": len(members),
        }
    return out


class LinkHistory:
    """The last ``LINK_HISTORY_S`` of per-direction rates: what the dashboard's chart opens with."""

    def __init__(self, seconds: float = LINK_HISTORY_S, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.points: deque[tuple[float, dict[str, int]]] = deque(maxlen=max(2, int(seconds / interval) + 1))

    def add(self, snap: CounterSnapshot) -> None:
        self.points.append((snap.wall, {d: t["rate_bps"] for d, t in snap.directions.items()}))

    def as_json(self) -> dict[str, list[Any]]:
        """Columns, as uPlot wants them: times (s) and one list of bit/s per direction."""
        return {"time": [round(t, 3) for t, _ in self.points],
                **{d: [p.get(d, 0) for _, p in self.points] for d in DIRECTIONS}}
