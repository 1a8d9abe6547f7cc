"""The configuration as a worker receives it: one small tuple per class instead of pickled pydantic models.

A worker reads a handful of values per class and drops the message once applied.  Pickled as a
:class:`~imqd.config.Config`, 10,000 subscriber classes unpickle into ~18 MB of models (~1,800 bytes a class)
that the worker's own objects then sit among: pymalloc fills the free blocks of the fullest arenas first, so
when the models go, their arenas stay (~1,300 bytes a class of RSS).  This form carries exactly what a worker
reads, and what many classes have in common once:

* a **row** per class, ``(name, parent, settings, src, dst)``, sent as columns (:class:`Rows`: five lists).
  A list is one block of the C library's heap, which ``malloc_trim`` gives back whole; 10,000 small tuples would
  be 800 KB of pymalloc pools in arenas that the worker's own objects fill the rest of, kept after the message
  is dropped.  Iterating the columns makes a row at a time (``zip`` reuses it), nothing per class stays;
* its :class:`Settings`: direction, the effective rate/ceil/burst/cburst/quantum, prio, effective overhead,
  the default flag, the leaf queue (:class:`~imqd.qdisc.leaves.LeafSpec`) and the non-address part of the
  match (:class:`MatchRest`; None: no match).  Equal settings are one object when the message is built, and
  pickle sends an object it has sent already as a reference: 10,000 subscribers on a few plans carry a few
  ``Settings``, and the worker's numbers of those classes are the same few objects.

:func:`worker_config` and :func:`worker_delta` build it from a validated ``Config`` / ``ConfigDelta`` (the
supervisor validates; nothing here is a second validation).  :meth:`WorkerConfig.check` and
:meth:`WorkerDelta.check` only make sure a message has this shape, so a malformed one is refused with a message
naming the class instead of failing half way through an apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from imqd.config_fields import address_pairs
from imqd.qdisc.leaves import LeafSpec

if TYPE_CHECKING:
    from imqd.config import ClassSpec, Config, ConfigDelta

__all__ = ["Settings", "MatchRest", "Row", "Rows", "WorkerConfig", "WorkerDelta", "worker_config", "worker_delta",
           "leaf_spec_for", "match_pairs"]

DIRECTIONS = ("ingress", "egress")


class MatchRest(NamedTuple):
    """A match's tests other than its addresses (``MatchSpec`` fields, stored form)."""

    proto: int | None
    sport: tuple[int, int] | None
    dport: tuple[int, int] | None
    dscp: int | None
    mark: tuple[int, int] | None
    iif: str | None
    oif: str | None


class Settings(NamedTuple):
    """Everything a worker reads of a class but its name, parent and addresses (effective values: defaults
    that depend on other fields are filled in)."""

    direction: str
    rate: int
    ceil: int
    burst: int
    cburst: int
    quantum: int
    prio: int
    overhead: int
    default: bool
    leaf: LeafSpec
    match: MatchRest | None  # None: the class has no match (src and dst are None too)


#: ``(name, parent, settings, src, dst)``; src/dst as ``MatchSpec`` stores them (a CIDR, a tuple, None)
Row = tuple[str, "str | None", Settings, "str | tuple[str, ...] | None", "str | tuple[str, ...] | None"]
COLUMNS = ("names", "parents", "settings", "src", "dst")


@dataclass(frozen=True, slots=True)
class Rows:
    """Classes in config order, as five equally long columns; iterating gives the rows."""

    names: list[str]
    parents: list[str | None]
    settings: list[Settings]
    src: list[str | tuple[str, ...] | None]
    dst: list[str | tuple[str, ...] | None]

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Rows:
        cols: tuple[list[Any], ...] = ([], [], [], [], [])
        for row in rows:
            for col, v in zip(cols, row):
                col.append(v)
        return cls(*cols)

    def __iter__(self) -> Iterator[Row]:
        return zip(self.names, self.parents, self.settings, self.src, self.dst)

    def __len__(self) -> int:
        return len(self.names)

    def check(self) -> None:
        """Raise ``ValueError`` naming the class if the columns do not make well-formed rows."""
        for col in COLUMNS:
            if not isinstance(getattr(self, col), list):
                raise ValueError(f"worker config: column {col} must be a list, got {getattr(self, col)!r}"[:300])
        lengths = {len(getattr(self, col)) for col in COLUMNS}
        if len(lengths) != 1:
            raise ValueError(f"worker config: the columns differ in length ({', '.join(map(str, lengths))})")
        _check_rows(self)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The whole configuration for a worker: the global overhead and every class's row, in config order (the
    classifier's first-match order and the default's tie-break)."""

    overhead: int
    rows: Rows

    def direction_rows(self, direction: str) -> Iterator[Row]:
        """One tree's rows, in config order (made as they are read: see :class:`Rows`)."""
        return (r for r in self.rows if r[2].direction == direction)

    def default(self, direction: str) -> str | None:
        """The name of ``direction``'s default class (the first one flagged), or None."""
        for name, s in zip(self.rows.names, self.rows.settings):
            if s.default and s.direction == direction:
                return name
        return None

    def check(self) -> None:
        """Raise ``ValueError`` naming the class if this is not a well-formed worker configuration."""
        if not _is_int(self.overhead) or self.overhead < 0:
            raise ValueError(f"worker config: overhead must be an int >= 0, got {self.overhead!r}")
        if not isinstance(self.rows, Rows):
            raise ValueError(f"worker config: rows must be Rows, got {type(self.rows).__name__}")
        self.rows.check()


@dataclass(frozen=True, slots=True)
class WorkerDelta:
    """A :class:`~imqd.config_delta.ConfigDelta` for a worker: ``upserted`` as rows (see the module doc)."""

    removed: tuple[str, ...] = ()
    upserted: Rows = field(default_factory=lambda: Rows([], [], [], [], []))
    overhead: int | None = None
    order: tuple[str, ...] | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the class if this is not a well-formed worker delta."""
        if not isinstance(self.removed, (tuple, list)) or not all(isinstance(n, str) for n in self.removed):
            raise ValueError(f"worker delta: removed must be a tuple of class names, got {self.removed!r}")
        if self.overhead is not None and (not _is_int(self.overhead) or self.overhead < 0):
            raise ValueError(f"worker delta: overhead must be None or an int >= 0, got {self.overhead!r}")
        if self.order is not None and not isinstance(self.order, (tuple, list)):
            raise ValueError(f"worker delta: order must be None or a tuple of names, got {self.order!r}")
        if not isinstance(self.upserted, Rows):
            raise ValueError(f"worker delta: upserted must be Rows, got {type(self.upserted).__name__}")
        self.upserted.check()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_rows(rows: Iterable[Row]) -> None:
    seen: set[str] = set()
    for i, (name, parent, s, src, dst) in enumerate(rows):
        if not isinstance(name, str) or not name:
            raise ValueError(f"worker config: class #{i}: name must be a non-empty string, got {name!r}")
        if name in seen:
            raise ValueError(f"worker config: class {name!r} is given twice")
        seen.add(name)
        if parent is not None and not isinstance(parent, str):
            raise ValueError(f"worker config: class {name!r}: parent must be None or a name, got {parent!r}")
        if not isinstance(s, Settings):
            raise ValueError(f"worker config: class {name!r}: settings must be a Settings, got {s!r}"[:300])
        if s.direction not in DIRECTIONS:
            raise ValueError(f"worker config: class {name!r}: direction must be ingress or egress, "
                             f"got {s.direction!r}")
        for attr in ("rate", "ceil", "burst", "cburst", "quantum", "prio", "overhead"):
            if not _is_int(getattr(s, attr)):
                raise ValueError(f"worker config: class {name!r}: {attr} must be an int, got "
                                 f"{getattr(s, attr)!r}")
        if not isinstance(s.default, bool) or not isinstance(s.leaf, LeafSpec):
            raise ValueError(f"worker config: class {name!r}: default must be a bool and leaf a LeafSpec")
        if s.match is None:
            if src is not None or dst is not None:
                raise ValueError(f"worker config: class {name!r}: addresses without a match")
        elif not isinstance(s.match, MatchRest):
            raise ValueError(f"worker config: class {name!r}: match must be a MatchRest or None, "
                             f"got {s.match!r}")
        for label, v in (("src", src), ("dst", dst)):
            if not (v is None or isinstance(v, str) or (isinstance(v, tuple) and v
                                                         and all(isinstance(a, str) for a in v))):
                raise ValueError(f"worker config: class {name!r}: {label} must be a CIDR, a tuple of them or "
                                 f"None, got {v!r}"[:300])


def match_pairs(row: Row) -> Iterator[tuple[str | None, str | None]]:
    """The single-address (src, dst) pairs of a row's match (``MatchSpec.alternatives``)."""
    return address_pairs(row[3], row[4])


# --- building it from a validated configuration (the supervisor) -----------------------------------------


_LEAF_SPECS: dict[LeafSpec, LeafSpec] = {}  # one object per distinct leaf: 10,000 subscribers share a handful


_FIFO_SPECS: dict[tuple[int, int | None], LeafSpec] = {}  # (limit, limit_bytes) -> the plain FIFO's spec


def leaf_spec_for(cls: ClassSpec) -> LeafSpec:
    """The leaf qdisc a config class asks for (a tail-drop FIFO unless told otherwise); equal specs are one
    object (a worker keeps one per class). The plain FIFO, what subscriber classes have, is looked up by its
    two numbers without building a spec (a 20,000-class import asks 40,000 times)."""
    plain = cls.qdisc is None and cls.per_host is None and cls.delay is None and cls.jitter is None \
        and cls.loss is None
    if plain:
        spec = _FIFO_SPECS.get((cls.limit, cls.limit_bytes))
        if spec is not None:
            return spec
    spec = shared_leaf_spec(_leaf_spec(cls))
    if plain:
        _FIFO_SPECS[(cls.limit, cls.limit_bytes)] = spec
    return spec


def shared_leaf_spec(spec: LeafSpec) -> LeafSpec:
    """The one object equal to ``spec`` (a worker canonicalises what it unpickles with it)."""
    return _LEAF_SPECS.setdefault(spec, spec)


def _leaf_spec(cls: ClassSpec) -> LeafSpec:
    params: dict[str, Any]
    if cls.per_host is not None:
        ph = cls.per_host
        params = {"key": ph.key, "prefix": ph.prefix, "prefix6": ph.prefix6, "rate": ph.rate, "ceil": ph.ceil,
                  "burst": ph.burst, "limit": ph.limit, "total_limit": ph.total_limit,
                  "idle_timeout": ph.idle_timeout}
        return LeafSpec.of("perhost", **{k: v for k, v in params.items() if v is not None})
    if cls.delay is not None or cls.jitter is not None or cls.loss is not None:
        params = {"delay": cls.delay or 0.0, "jitter": cls.jitter or 0.0, "loss": cls.loss or 0.0,
                  "limit": cls.limit, "reorder": cls.reorder}
        return LeafSpec.of("delay", **params)
    q = cls.qdisc
    if q is None or q.kind == "fifo":
        params = {"limit_packets": q.limit if q is not None and q.limit else cls.limit}
        if cls.limit_bytes is not None:
            params["limit_bytes"] = cls.limit_bytes
        return LeafSpec.of("fifo", **params)
    params = {"flows": q.flows, "quantum": q.quantum, "limit": q.limit or cls.limit}
    if q.kind == "fq_codel":
        params.update(target=q.target, interval=q.interval)
    return LeafSpec.of(q.kind, **{k: v for k, v in params.items() if v is not None})


def _rows(classes: Iterable[ClassSpec], overhead: int) -> Rows:
    """Rows of validated classes; equal settings (and equal match rests) are one object each."""
    shared: dict[Any, Any] = {}
    out = Rows([], [], [], [], [])
    for c in classes:
        m = c.match
        rest = None
        if m is not None:
            rest = MatchRest(m.proto, m.sport, m.dport, m.dscp, m.mark, m.iif, m.oif)
            rest = shared.setdefault(rest, rest)
        s = Settings(c.direction, c.rate, c.effective_ceil, c.effective_burst, c.effective_cburst,
                     c.effective_quantum, c.prio, overhead if c.overhead is None else c.overhead, c.default,
                     leaf_spec_for(c), rest)
        out.names.append(c.name)
        out.parents.append(c.parent)
        out.settings.append(shared.setdefault(s, s))
        out.src.append(m.src if m is not None else None)
        out.dst.append(m.dst if m is not None else None)
    return out


def worker_config(config: Config) -> WorkerConfig:
    """The whole validated ``config`` as a worker receives it (~10 ms for 10,000 classes)."""
    return WorkerConfig(config.overhead, _rows(config.classes, config.overhead))


def worker_delta(delta: ConfigDelta, overhead: int) -> WorkerDelta:
    """``delta`` as a worker receives it; ``overhead``: the global overhead of the configuration it leads to
    (for the upserted classes' effective overhead)."""
    return WorkerDelta(delta.removed, _rows(delta.upserted, overhead), delta.overhead, delta.order)
