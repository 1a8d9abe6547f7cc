"""The rules that tie a configuration's classes into trees: checked in full, or for one change.

The rules (each refusal names the class and the field):

* a class's ``parent`` exists and is in the same direction;
* parent links form no cycle, and a tree is at most ``MAX_DEPTH`` levels deep;
* an inner class (one with children) is neither the ``default`` nor has a ``match``;
* the children's rates add up to at most the parent's ceil (the error is on the parent's ``ceil``);
* each direction has at most one ``default`` class (the later one in config order is refused);
* there are at most ``MAX_CLASSES`` classes.

``check_tree`` checks a whole class list (a file being loaded, a bulk replace) and
returns the :class:`TreeIndex` a :class:`~imqd.config.Config` keeps.  ``check_upsert``
and ``check_remove`` check one change against that index, in time proportional to what
the change touches (its parent, its children, the subtree it moves), not to the size
of the tree: with 10,000 classes a change costs microseconds instead of a full
validation.  ``check_tree`` stays the reference: a differential property test holds
the incremental checks to it (same refusals, same error locations).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imqd.units import format_rate

if TYPE_CHECKING:
    from imqd.config import ClassSpec

__all__ = ["MAX_CLASSES", "MAX_DEPTH", "TreeIndex", "check_tree", "check_upsert",
           "index_tree", "capped", "too_many_classes"]

MAX_DEPTH = 8  # levels in one tree, as the kernel's TC_HTB_MAXDEPTH
# Classes of both trees together.  Each needs a slot in the workers' shared token store (65,536 slots,
# imqd.shared_tokens.DEFAULT_SLOTS), and a kernel HTB qdisc numbers its classes with 16 bits (minor ids
# 1..0xffff), so a tree imqd accepts could also be expressed there.
MAX_CLASSES = 65_535
LISTED = 5  # names an error message lists before "and N more"

Error = dict[str, Any]


def capped(items: Iterable[str], total: int, limit: int = LISTED) -> str:
    """``"a, b, c, d, e and 9,995 more"``: a list in an error message stays one readable line."""
    shown = list(itertools.islice(items, limit))
    text = ", ".join(shown)
    return f"{text} and {total - len(shown):,} more" if total > len(shown) else text


def too_many_classes(count: int) -> Error:
    return {"loc": ("classes",), "msg": f"{count:,} classes: imqd supports at most {MAX_CLASSES:,} (both directions "
                                        "together; one shared token slot each, and kernel HTB's 16-bit class ids)"}


@dataclass
class TreeIndex:
    """What the rules need to know about a valid tree, kept so one change is checked without a full pass.

    Copy-on-write: a change builds a new index that shares the untouched inner dicts with the old one
    (:meth:`updated`), so a ``Config`` that was handed out never changes.
    """

    by_name: dict[str, ClassSpec] = field(default_factory=dict)
    pos: dict[str, int] = field(default_factory=dict)  # index in Config.classes
    kids: dict[str, dict[str, None]] = field(default_factory=dict)  # children, in config order
    kid_rate: dict[str, int] = field(default_factory=dict)  # sum of the children's rates
    depth: dict[str, int] = field(default_factory=dict)  # a root is at depth 1
    defaults: dict[str, str] = field(default_factory=dict)  # direction -> its default class

    def children_text(self, name: str, extra: ClassSpec | None = None) -> str:
        """The children of ``name`` with their rates for an error message (``extra`` joins them), capped."""
        names = [n for n in self.kids[name] if extra is None or n != extra.name]
        specs = [self.by_name[n] for n in names]
        if extra is not None:
            at = self.pos.get(extra.name, len(self.pos))
            specs = sorted([*specs, extra], key=lambda c: self.pos.get(c.name, len(self.pos)) if c is not extra else at)
        return capped((f"{c.name} {format_rate(c.rate)}" for c in specs), len(specs))

    def updated(self, classes: Sequence[ClassSpec], removed: Sequence[str], upserted: Sequence[ClassSpec]
                ) -> TreeIndex:
        """The index of ``classes``: this tree with ``removed`` gone and ``upserted`` replaced in place or added
        at the end (no other reordering), trusting that the result is valid.  Python work only for the
        changed classes, their parents and the subtrees that moved; the outer dicts are copied at C speed
        (~0.1 ms at 10,000 classes), a parent's children dict only when its children change."""
        by_name, kids, kid_rate = dict(self.by_name), dict(self.kids), dict(self.kid_rate)
        depth, defaults = dict(self.depth), dict(self.defaults)
        own: set[str] = set()  # parents whose children dict belongs to the new index already

        def siblings(parent: str) -> dict[str, None]:
            if parent not in own:
                kids[parent] = dict(kids[parent])
                own.add(parent)
            return kids[parent]

        if removed:
            pos = {c.name: i for i, c in enumerate(classes)}
        elif len(classes) > len(self.pos):  # added classes go at the end
            pos = dict(self.pos)
            for c in upserted:
                pos.setdefault(c.name, len(pos))
        else:
            pos = self.pos

        def unlink(c: ClassSpec) -> None:
            if c.parent is not None and c.parent in kids and c.name in kids[c.parent]:
                del siblings(c.parent)[c.name]
                kid_rate[c.parent] -= c.rate

        def link(c: ClassSpec) -> None:
            if c.parent is None:
                return
            group = siblings(c.parent)
            last = next(reversed(group), None)
            group[c.name] = None
            if last is not None and pos[last] > pos[c.name]:  # moved under a parent whose later children exist
                kids[c.parent] = dict.fromkeys(sorted(group, key=pos.__getitem__))
            kid_rate[c.parent] += c.rate

        for name in removed:
            old = by_name.pop(name)
            unlink(old)
            if defaults.get(old.direction) == name:
                del defaults[old.direction]
            del kids[name], kid_rate[name], depth[name]
        moved: list[str] = []
        for c in upserted:
            old = by_name.get(c.name)
            by_name[c.name] = c
            if old is not None and defaults.get(old.direction) == c.name:
                del defaults[old.direction]
            if c.default:
                defaults[c.direction] = c.name
            if old is not None and old.parent == c.parent:
                if c.parent is not None and c.rate != old.rate:
                    kid_rate[c.parent] += c.rate - old.rate
                continue
            if old is not None:
                unlink(old)
            else:
                kids[c.name], kid_rate[c.name] = {}, 0
            link(c)
            moved.append(c.name)
        for name in moved:  # depths last: a moved subtree may hang under another moved class
            _set_depths(name, by_name, kids, depth)
        return TreeIndex(by_name, pos, kids, kid_rate, depth, defaults)


def _set_depths(name: str, by_name: Mapping[str, ClassSpec], kids: Mapping[str, Mapping[str, None]],
                depth: dict[str, int]) -> None:
    """Depth of ``name`` (counted up its parent links: at most MAX_DEPTH steps in a valid tree) and of its
    subtree, which moved with it."""
    d = 1
    parent = by_name[name].parent
    while parent is not None:
        d += 1
        parent = by_name[parent].parent
    depth[name] = d
    frontier = list(kids[name])
    while frontier:
        d += 1
        for n in frontier:
            depth[n] = d
        frontier = [k for n in frontier for k in kids[n]]


def index_tree(classes: Sequence[ClassSpec]) -> TreeIndex:
    """The index of a class list known to be valid (no checks: ``check_tree`` does both)."""
    return check_tree(classes, trusted=True)[1]


def check_tree(classes: Sequence[ClassSpec], trusted: bool = False) -> tuple[list[Error], TreeIndex]:
    """Every tree rule over the whole list: ``(errors, index)``; the index is meaningful only without errors.

    ``trusted``: the list is known to be valid (a delta applied to a valid tree): only build the index.
    """
    errors: list[Error] = []

    def err(name: str, loc: tuple[Any, ...], msg: str) -> None:
        errors.append({"loc": ("classes", name, *loc), "msg": msg})

    if len(classes) > MAX_CLASSES:
        return [too_many_classes(len(classes))], TreeIndex()
    by_name: dict[str, ClassSpec] = {}
    pos: dict[str, int] = {}
    for i, c in enumerate(classes):
        if c.name in by_name:
            err(c.name, ("name",), f"duplicate class name {c.name!r}")
        else:
            by_name[c.name] = c
            pos[c.name] = i
    uniq = list(by_name.values())  # config order, first of each name

    # parent links that are usable: known and in the same direction
    parent_of: dict[str, str] = {}
    for c in uniq:
        if c.parent is None:
            continue
        p = by_name.get(c.parent)
        if p is None:
            err(c.name, ("parent",), f"unknown parent {c.parent!r}")
        elif p.direction != c.direction:
            err(c.name, ("parent",), f"parent {p.name!r} is {p.direction}, this class is {c.direction}")
        else:
            parent_of[c.name] = p.name

    # depth (root = 1) and cycles; a class under a cycle gets no depth and no extra error
    depth: dict[str, int | None] = {}
    for c in uniq:
        chain: list[str] = []
        cur: str | None = c.name
        base: int | None = 0
        while cur is not None:
            if cur in depth:
                base = depth[cur]
                break
            if cur in chain:
                loop = chain[chain.index(cur):]
                for name in loop:
                    err(name, ("parent",), "parent chain forms a cycle: " + " -> ".join([*loop, loop[0]]))
                base = None
                break
            chain.append(cur)
            cur = parent_of.get(cur)
        for name in reversed(chain):
            base = None if base is None else base + 1
            depth[name] = base
            if base == MAX_DEPTH + 1:
                err(name, ("parent",), f"tree deeper than {MAX_DEPTH} levels")

    kids: dict[str, dict[str, None]] = {c.name: {} for c in uniq}
    kid_rate: dict[str, int] = dict.fromkeys(kids, 0)
    for c in uniq:
        if c.name in parent_of and depth[c.name] is not None:
            kids[parent_of[c.name]][c.name] = None
            kid_rate[parent_of[c.name]] += c.rate

    index = TreeIndex(by_name, pos, kids, kid_rate, depth, {})  # type: ignore[arg-type]
    for c in uniq:
        if kids[c.name] and not trusted:
            _inner_rules(index, c, kid_rate[c.name], err)
        if c.default:
            if c.direction in index.defaults:
                err(c.name, ("default",), f"{c.direction} already has the default class {index.defaults[c.direction]!r}")
            else:
                index.defaults[c.direction] = c.name
    return errors, index


def _inner_rules(t: TreeIndex, c: ClassSpec, total: int, err: Any, extra: ClassSpec | None = None) -> None:
    """The rules for a class that has children (``total``: their rates; ``extra``: a child joining them)."""
    if c.default:
        err(c.name, ("default",), "only a leaf class (no children) can be the default")
    if c.match is not None:
        err(c.name, ("match",), "only a leaf class (no children) can have a match")
    if total > c.effective_ceil:
        err(c.name, ("ceil",), f"children's rates add up to {format_rate(total)} ({t.children_text(c.name, extra)}), "
                               f"more than ceil {format_rate(c.effective_ceil)}")


def check_upsert(t: TreeIndex, old: ClassSpec | None, c: ClassSpec) -> list[Error]:
    """The tree rules that adding ``c`` (``old`` None, placed last) or replacing ``old`` with ``c`` (same name,
    same place) can break, checked against the valid tree ``t``.  Same refusals and error locations as
    ``check_tree`` on the changed list (the order of the errors may differ)."""
    errors: list[Error] = []

    def err(name: str, loc: tuple[Any, ...], msg: str) -> None:
        errors.append({"loc": ("classes", name, *loc), "msg": msg})

    name = c.name
    if old is None and len(t.by_name) >= MAX_CLASSES:
        return [too_many_classes(len(t.by_name) + 1)]
    # the new parent link
    link: str | None = None
    if c.parent is not None:
        p = c if c.parent == name else t.by_name.get(c.parent)
        if p is None:
            err(name, ("parent",), f"unknown parent {c.parent!r}")
        elif p.direction != c.direction:
            err(name, ("parent",), f"parent {p.name!r} is {p.direction}, this class is {c.direction}")
        else:
            link = c.parent
    # the children keep their link to this class only if it stays in their direction
    kids = t.kids[name] if old is not None else {}
    kids_linked = bool(kids)
    if kids and old is not None and old.direction != c.direction:
        kids_linked = False
        for k in kids:
            err(k, ("parent",), f"parent {name!r} is {c.direction}, this class is {old.direction}")

    loop = _cycle(t, name, link)
    for member in loop:
        err(member, ("parent",), "parent chain forms a cycle: " + " -> ".join([*loop, loop[0]]))
    if not loop:
        d = 1 if link is None else t.depth[link] + 1
        if old is None or d > t.depth[name]:
            for deep in _at_depth(t, name, d, MAX_DEPTH + 1, kids_linked):
                err(deep, ("parent",), f"tree deeper than {MAX_DEPTH} levels")
        if kids_linked:
            _inner_rules(t, c, t.kid_rate[name], err)
        if link is not None:
            parent = t.by_name[link]
            was_child = old is not None and old.parent == link
            total = t.kid_rate[link] - (old.rate if was_child and old is not None else 0) + c.rate
            if not t.kids[link]:  # a leaf until now: its leaf-only settings become errors
                _inner_rules(t, parent, total, err, extra=c)
            elif total > parent.effective_ceil:
                err(link, ("ceil",), f"children's rates add up to {format_rate(total)} "
                                     f"({t.children_text(link, extra=c)}), more than ceil "
                                     f"{format_rate(parent.effective_ceil)}")
    if c.default:
        current = t.defaults.get(c.direction)
        if current is not None and current != name:
            mine = t.pos[name] if old is not None else len(t.pos)
            if t.pos[current] < mine:
                err(name, ("default",), f"{c.direction} already has the default class {current!r}")
            else:
                err(current, ("default",), f"{c.direction} already has the default class {name!r}")
    return errors


def _cycle(t: TreeIndex, name: str, link: str | None) -> list[str]:
    """The classes of the cycle that linking ``name`` under ``link`` closes (empty: none).  The walk up from
    ``link`` follows the valid tree's links, so it ends at a root within MAX_DEPTH steps or at ``name``."""
    chain = [name]
    cur = link
    while cur is not None:
        if cur == name:
            return chain
        chain.append(cur)
        cur = t.by_name[cur].parent
    return []


def _at_depth(t: TreeIndex, name: str, d: int, target: int, kids_linked: bool) -> list[str]:
    """Classes of ``name``'s subtree that sit at depth ``target`` when ``name`` sits at depth ``d``."""
    if d >= target or not kids_linked:
        return [name] if d == target else []
    frontier = list(t.kids[name])
    level = d + 1
    while frontier and level < target:
        frontier = [k for n in frontier for k in t.kids[n]]
        level += 1
    return frontier if level == target else []
