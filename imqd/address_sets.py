"""Which addresses imqd's rules queue: the ipset members a config needs, and the change between two configs.

Pure (no I/O).  IMQ queued only what ``-j IMQ`` selected; imqd's rules queue every packet of a shaped direction
unless they can tell that no class takes it.  When every class of a direction that can match a packet names a
``dst`` or ``src`` prefix, and the direction has no default class, a packet whose addresses are in none of those
prefixes can only be accepted unshaped: the ACKs of a shaped download, the traffic of hosts no class names.  Then
the rules match the prefixes through ipsets (``hash:net``, one per direction / address field / family) and such
packets never cross the NFQUEUE.  Otherwise (`plan` says why) the rules queue by interface as before.

Each class puts its prefixes into one set: ``dst`` when it names a destination, else ``src``.  A packet the class
matches has its destination (source) in one of them, so the sets select a superset of what the classes take; the
worker's classifier still decides.  Only the (src, dst) pairs of one family that a class can match are used
(``MatchSpec.alternatives``).  ``hash:net`` cannot hold a /0: a class that names one falls back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imqd.config_fields import cidr_family

if TYPE_CHECKING:
    from imqd.config import Config

__all__ = ["SetKey", "SetPlan", "plan", "set_name", "set_prefix", "delta", "FIELDS", "FAMILIES", "IMQD_SET_RE"]

FIELDS = ("dst", "src")
FAMILIES = (4, 6)
DIRECTIONS = ("ingress", "egress")
# imqd-q<first queue>-<direction>-<field><family>[-tmp]: at most 28 chars (ipset's limit is 31); the queue
# number keeps two instances apart, the "imqd-q" prefix the operator's own sets
IMQD_SET_RE = r"imqd-q\d{1,5}-(ingress|egress)-(src|dst)[46](-tmp)?"


@dataclass(frozen=True, order=True)
class SetKey:
    """One ipset: the prefixes a direction's packets are matched against by one address field in one family."""

    direction: str
    field: str
    family: int


Members = Mapping[SetKey, frozenset[str]]


@dataclass(frozen=True)
class SetPlan:
    """A direction's rule shape: `members` (every key of the direction, possibly empty) when the address sets
    apply, else None and `reason`, one line saying which class keeps them from applying."""

    direction: str
    members: dict[SetKey, frozenset[str]] | None
    reason: str = ""


def set_prefix(first_queue: int) -> str:
    return f"imqd-q{first_queue}"


def set_name(prefix: str, key: SetKey) -> str:
    return f"{prefix}-{key.direction}-{key.field}{key.family}"


def keys(direction: str, families: tuple[int, ...] = FAMILIES) -> list[SetKey]:
    return [SetKey(direction, f, fam) for f in FIELDS for fam in families]


def plan(config: Config, direction: str, families: tuple[int, ...] = FAMILIES) -> SetPlan:
    """The address sets `direction` needs under `config`, or why it cannot use them (see the module docstring).

    A direction without classes that can match anything (no matching leaf, no default) queues nothing at all:
    its plan has empty members (:func:`imqd.rules.for_config` leaves its chain empty)."""
    default = config.default_class(direction)  # type: ignore[arg-type]
    if default is not None:
        return SetPlan(direction, None, f"class {default.name!r} is the default (it takes any packet)")
    members: dict[SetKey, set[str]] = {k: set() for k in keys(direction, families)}
    for c in config.matching_leaves(direction):  # type: ignore[arg-type]
        m = c.match
        assert m is not None
        field = "dst" if m.dst is not None else "src" if m.src is not None else None
        if field is None:
            return SetPlan(direction, None, f"class {c.name!r} names no src or dst address")
        for alt in m.alternatives():
            cidr = getattr(alt, field)
            if cidr is None:
                continue
            if cidr.endswith("/0"):
                return SetPlan(direction, None, f"class {c.name!r} matches every address ({cidr})")
            fam = cidr_family(cidr)
            if fam in families:
                members[SetKey(direction, field, fam)].add(cidr)
    return SetPlan(direction, {k: frozenset(v) for k, v in members.items()})


def delta(old: Members, new: Members) -> dict[SetKey, tuple[frozenset[str], frozenset[str]]]:
    """Per set whose members differ: (prefixes to add, prefixes to delete) that turn `old` into `new`.

    A key missing on one side counts as an empty set there (the caller creates / destroys whole sets)."""
    out: dict[SetKey, tuple[frozenset[str], frozenset[str]]] = {}
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key, frozenset()), new.get(key, frozenset())
        if was != now:
            out[key] = (now - was, was - now)
    return out
