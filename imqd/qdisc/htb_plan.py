"""Checking a new HTB class set before anything changes (the validation half of ``HTB.change``).

``plan_change`` does everything that can fail -- tree shape, slots, building the new leaf queues -- and
returns a :class:`ChangePlan` that ``HTB._commit`` applies without any further possibility of error: a
refused change leaves the running tree exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imqd.qdisc.fifo import Fifo
from imqd.qdisc.htb_class import IDX_GAP, MAX_DEPTH, ClassState, HTBClassParams
from imqd.qdisc.leaves import make_leaf

LAZY_KINDS = frozenset(("fifo",))  # leaves that keep nothing worth keeping while empty: built on demand


@dataclass
class NewLeaf:
    """A validated leaf queue for a class: the object, or (lazy) what is needed to build it later."""

    q: Any
    lazy: bool
    passthrough: int


@dataclass
class ChangePlan:
    params: list[HTBClassParams]
    kids: dict[str | None, list[str]]  # parent (None: roots) -> children, definition order
    depth: dict[str, int]
    slot_of: dict[str, int]
    fresh: set[int]  # slots HTB picked itself: reset them
    new_leaves: dict[str, NewLeaf]
    positions: dict[str, tuple[int, int]]  # DRR span (lo, hi) of every class


def build_leaf(p: HTBClassParams) -> NewLeaf:
    """Build (and so validate) the leaf queue ``p`` asks for; ValueError names the class."""
    try:
        q = make_leaf(p.leaf)
    except ValueError as exc:
        raise ValueError(f"class {p.name!r}: leaf: {exc}") from None
    lazy = p.leaf.kind in LAZY_KINDS and isinstance(q, Fifo)
    return NewLeaf(q, lazy, q.passthrough_max if lazy else 0)


def check_slot(slot: int, name: str, owner: Mapping[int, str]) -> None:
    if slot in owner and owner[slot] != name:
        raise ValueError(f"class {name!r}: slot {slot} is already used by class {owner[slot]!r}")


def plan_change(current: Mapping[str, ClassState], classes: Sequence[HTBClassParams], fallback: str | None,
                tokens: Any, counters: Any) -> ChangePlan:
    """Check the new tree and prepare everything that can fail; mutate nothing but the stores' sizes."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(f"classes must be a sequence of HTBClassParams, got {classes!r}")
    params = list(classes)
    by_name: dict[str, HTBClassParams] = {}
    for p in params:
        if not isinstance(p, HTBClassParams):
            raise ValueError(f"classes: expected HTBClassParams, got {p!r}")
        if p.name in by_name:
            raise ValueError(f"class {p.name!r}: name: duplicate class name")
        by_name[p.name] = p
    kids: dict[str | None, list[str]] = {None: []}
    for p in params:
        if p.parent is not None and p.parent not in by_name:
            raise ValueError(f"class {p.name!r}: parent {p.parent!r} is not a class of this tree")
        kids.setdefault(p.parent, []).append(p.name)
    depth: dict[str, int] = {}
    for p in params:
        path = []
        n: str | None = p.name
        while n is not None and n not in depth:
            if n in path:
                raise ValueError(f"class {p.name!r}: parent: cycle through {' -> '.join(path + [n])}")
            path.append(n)
            n = by_name[n].parent
        d = -1 if n is None else depth[n]
        for m in reversed(path):
            d += 1
            depth[m] = d
    for p in params:
        # An inner class at depth d has level 7-d; level 0 is for leaves only (kernel: "tree is too deep").
        if p.name in kids and depth[p.name] >= MAX_DEPTH - 1:
            raise ValueError(
                f"class {p.name!r}: parent: tree too deep (inner classes may be at most {MAX_DEPTH - 1} deep)"
            )
    if fallback is not None and (fallback not in by_name or fallback in kids):
        raise ValueError(f"fallback: {fallback!r} is not a leaf class of the new tree")

    # Slots: explicit ones are the caller's; survivors keep theirs; new ones get the lowest free.
    slot_of: dict[str, int] = {}
    owner: dict[int, str] = {}
    for p in params:
        if p.slot >= 0:
            check_slot(p.slot, p.name, owner)
            owner[p.slot] = p.name
            slot_of[p.name] = p.slot
    fresh: set[int] = set()
    for p in params:
        old = current.get(p.name)
        if p.slot < 0 and old is not None and old.slot not in owner:
            owner[old.slot] = p.name
            slot_of[p.name] = old.slot
    nxt = 0
    for p in params:
        if p.name not in slot_of:
            while nxt in owner:
                nxt += 1
            owner[nxt] = p.name
            slot_of[p.name] = nxt
            fresh.add(nxt)  # HTB picked it: whatever a removed class left there is not ours
    if owner:
        top = max(owner) + 1
        tokens.ensure(top)  # raises ValueError if a fixed-size store is too small
        counters.ensure(top)

    # Build every new or re-parameterised leaf now, so bad leaf parameters fail before any change.
    new_leaves: dict[str, NewLeaf] = {}
    for p in params:
        if p.name in kids:
            continue
        old = current.get(p.name)
        if old is not None and old.spec is not None and old.spec == p.leaf:
            continue
        new_leaves[p.name] = build_leaf(p)
    return ChangePlan(params, kids, depth, slot_of, fresh, new_leaves, tree_positions(kids))


def tree_positions(kids: Mapping[str | None, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """Each class's DRR span: leaves numbered in tree order, ``IDX_GAP`` apart; an inner class spans its
    first to its last leaf.  ``kids[None]`` are the roots; children are visited in definition order."""
    out: dict[str, tuple[int, int]] = {}
    pos = 0
    stack: list[tuple[str, bool]] = [(name, False) for name in reversed(kids.get(None, ()))]
    first: dict[str, int] = {}
    while stack:
        name, done = stack.pop()
        children = kids.get(name)
        if not children:
            pos += IDX_GAP
            out[name] = (pos, pos)
            continue
        if done:
            out[name] = (first[name], pos)
            continue
        first[name] = pos + IDX_GAP
        stack.append((name, True))
        stack.extend((child, False) for child in reversed(children))
    return out
