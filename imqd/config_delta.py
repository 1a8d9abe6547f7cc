"""A change to a configuration as data: what the supervisor sends the workers and the journal keeps.

Sending every worker the whole configuration on every change costs ~215 bytes per
class to pickle and a full rebuild to apply (seconds at 10,000 classes).  A
:class:`ConfigDelta` names only what changed: classes removed, classes added or
changed (their complete new, validated spec) and a new global overhead.  Each
worker applies it to its own copy of the configuration as one version
(:meth:`imqd.shaper.Shaper.apply_delta`); ``order`` is set only when a bulk
replace reorders the surviving classes (then a worker may rebuild).

``diff(old, new)`` and ``apply_delta(config, delta)`` are exact inverses:
``apply_delta(old, diff(old, new)) == new``.  ``apply_delta`` trusts the delta (it
came from a validated change) and works in proportion to it: the class list and
the name index are copied at C speed, everything else is touched only for the
changed classes, their parents and subtrees that moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imqd.config_tree import index_tree

if TYPE_CHECKING:
    from imqd.config import ClassSpec, Config

__all__ = ["ConfigDelta", "diff", "apply_delta", "BULK_REBUILD"]

# Past this many changed classes apply_delta indexes the new list from scratch (O(n), ~10 ms at 10,000):
# cheaper than that many incremental steps when subtrees move.
BULK_REBUILD = 512
# The fields of a class that decide which packets it takes (and so the rules and address sets that follow it)
_WHO_IT_TAKES = ("direction", "parent", "default", "match")


@dataclass(frozen=True, slots=True)
class ConfigDelta:
    """Classes ``removed`` by name, classes ``upserted`` (added or changed: the full new spec, in config
    order), a new global ``overhead`` (None: unchanged), and ``order``: None when every surviving class keeps
    its relative position and added classes go at the end, else the complete new class order."""

    removed: tuple[str, ...] = ()
    upserted: tuple[ClassSpec, ...] = ()
    overhead: int | None = None
    order: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        return not self.removed and not self.upserted and self.overhead is None and self.order is None

    def only_tunes(self, old: Config) -> bool:
        """Whether this delta only re-tunes classes ``old`` has (rates, bursts, priorities, queue settings):
        nothing about which packets each class takes (its match, direction, parent, the default), so rules and
        address sets that follow the classes stay as they are.  A PATCH of a subscriber's plan is one."""
        if self.removed or self.order is not None:
            return False
        for c in self.upserted:
            o = old.class_by_name(c.name)
            if o is None or any(getattr(o, f) != getattr(c, f) for f in _WHO_IT_TAKES):
                return False
        return True

    def counts(self, old: Config) -> dict[str, int]:
        """``{"added", "changed", "removed"}``: how many classes this delta adds to, changes in, removes from
        ``old``."""
        added = sum(1 for c in self.upserted if old.class_by_name(c.name) is None)
        return {"added": added, "changed": len(self.upserted) - added, "removed": len(self.removed)}


def diff(old: Config, new: Config) -> ConfigDelta:
    """The delta that turns ``old`` into ``new`` (both validated)."""
    old_names = {c.name: c for c in old.classes}
    new_names = {c.name for c in new.classes}
    removed = tuple(n for n in old_names if n not in new_names)
    upserted = tuple(c for c in new.classes if (o := old_names.get(c.name)) is not c and o != c)
    order: tuple[str, ...] | None = None
    survivors_new = [c.name for c in new.classes if c.name in old_names]
    survivors_old = [n for n in old_names if n in new_names]
    # added classes must all come after the last survivor, and survivors keep their relative order
    last_survivor = max((i for i, c in enumerate(new.classes) if c.name in old_names), default=-1)
    added_early = any(c.name not in old_names for c in new.classes[: last_survivor + 1])
    if survivors_new != survivors_old or added_early:
        order = tuple(c.name for c in new.classes)
    overhead = new.overhead if new.overhead != old.overhead else None
    return ConfigDelta(removed=removed, upserted=upserted, overhead=overhead, order=order)


def apply_delta(config: Config, delta: ConfigDelta) -> Config:
    """``config`` with ``delta`` applied (trusted: no validation; see the module doc)."""
    from imqd.config import Config

    overhead = config.overhead if delta.overhead is None else delta.overhead
    if not delta.removed and not delta.upserted and delta.order is None:
        return config if overhead == config.overhead else Config.trusted(overhead, config.classes, config._tree)
    tree = config._tree
    if delta.order is not None:
        specs = {c.name: c for c in config.classes}
        for name in delta.removed:
            del specs[name]
        specs.update((c.name, c) for c in delta.upserted)
        classes = [specs[n] for n in delta.order]
        return Config.trusted(overhead, classes, index_tree(classes))
    if delta.removed:
        gone = set(delta.removed)
        replaced = {c.name: c for c in delta.upserted}
        classes = [replaced.pop(c.name, c) for c in config.classes if c.name not in gone]
        classes.extend(replaced.values())  # what remains is new: at the end
    else:
        classes = list(config.classes)
        for c in delta.upserted:
            i = tree.pos.get(c.name)
            if i is None:
                classes.append(c)
            else:
                classes[i] = c
    if len(delta.removed) + len(delta.upserted) > BULK_REBUILD:
        return Config.trusted(overhead, classes, index_tree(classes))
    return Config.trusted(overhead, classes, tree.updated(classes, delta.removed, delta.upserted))
