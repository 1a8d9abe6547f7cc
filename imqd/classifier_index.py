"""The address index behind :class:`imqd.classifier.Classifier`: rules looked up by one address prefix.

Why not a trie: a longest-prefix match answers "which rule is most specific", but a classifier's config means
"which rule comes first" -- a /24 listed before a /32 inside it must win.  So the index keeps one dict per
``(field, family, prefix length)`` present, keyed by the masked address, and a packet probes every present
length and keeps the smallest *order* found.  A probe costs one dict lookup whatever the number of rules.

A rule is indexed by one of its address tests (the longer prefix; ``dst`` on a tie).  Its remaining tests
(ports, protocol, the other address, DSCP, mark, interfaces) become a small compiled *check*, tried only for
the packets whose probe finds the rule.  Rules with no address test of at least /1 are not indexed: the
classifier keeps them as generated ``if`` statements.

What a table holds per key (a *slot*; the generated probe reads ``slot[0]`` order, ``slot[1]`` class name,
``slot[2]`` checks to try first):

* the common case, one rule without further tests: its :data:`Record` itself, ``(order, name, None, match)``;
* otherwise ``(order, name, conds)``: the first rule without further tests (``NO_ORDER, None`` if none),
  and ``conds`` the rules *before* it that have a check, in order, or ``None``.  All the rules on that key
  are kept, in order, in :attr:`AddressIndex.shared` to rebuild the slot when one changes.

Every change is O(1) (plus O(k) for k rules sharing one masked key, which real configs rarely have).
"""

from __future__ import annotations

from bisect import insort
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imqd.classifier import Match

__all__ = ["NO_ORDER", "Record", "TableKey", "AddressIndex", "index_key", "check_for", "pick"]

#: larger than every rule's order: "no rule found"
NO_ORDER = 1 << 62

#: ``(order, class name, check or None, Match)``: one rule
Record = tuple[int, str, "Callable[..., bool] | None", "Match"]
#: ``(field, family, prefix length)``: one table, e.g. ``("dst", 4, 32)``
TableKey = tuple[str, int, int]

#: the packet fields a check receives, in this order (the family is implied by the table it sits in)
CHECK_ARGS = ("src", "dst", "proto", "sport", "dport", "dscp", "mark", "iif", "oif")


def index_key(m: Match) -> tuple[TableKey, int] | None:
    """The table and masked key that index ``m``, or None when ``m`` has no address test of /1 or longer."""
    if not m.family:
        return None
    dlen = m.dst_mask.bit_count()
    slen = m.src_mask.bit_count()
    if dlen == 0 and slen == 0:
        return None
    if dlen >= slen:
        return ("dst", m.family, dlen), m.dst_net
    return ("src", m.family, slen), m.src_net


def rest_conditions(m: Match, field: str) -> list[tuple[str, str | None]]:
    """``m``'s conditions (:meth:`Match.conditions`) but the family and the address test the index holds."""
    return [(expr, var) for expr, var in m.conditions() if var not in ("family", field)]


@lru_cache(maxsize=4096)
def _compile_check(expr: str) -> Callable[..., bool]:
    """One check function per distinct condition text: subscribers with the same extra tests share it."""
    namespace: dict[str, Any] = {}
    exec(f"def check({', '.join(CHECK_ARGS)}):\n    return {expr}\n", namespace)  # noqa: S102 -- ints and reprs
    return namespace["check"]  # type: ignore[no-any-return]


def check_for(m: Match, field: str) -> tuple[Callable[..., bool] | None, frozenset[str]]:
    """The compiled test of what ``m`` asks beyond its indexed address (None: nothing), and the fields it reads."""
    cond = rest_conditions(m, field)
    if not cond:
        return None, frozenset()
    return _compile_check(" and ".join(expr for expr, _ in cond)), frozenset(v for _, v in cond if v)


def pick(slot: tuple[Any, ...], miss: tuple[Any, ...], src: Any, dst: Any, proto: Any, sport: Any, dport: Any,
         dscp: Any, mark: Any, iif: Any, oif: Any) -> tuple[Any, ...]:  # fmt: skip
    """The first rule of a slot whose check holds for the packet, else the slot's first unchecked rule, else
    ``miss``."""
    for rec in slot[2]:
        if rec[2](src, dst, proto, sport, dport, dscp, mark, iif, oif):
            return rec  # type: ignore[no-any-return]
    return slot if slot[1] is not None else miss


def _order(rec: Record) -> int:
    return rec[0]


def _slot(members: list[Record]) -> tuple[Any, ...]:
    """What a table holds for the rules ``members`` (sorted by order) sharing one key."""
    first = members[0]
    if len(members) == 1 and first[2] is None:
        return first
    conds: list[Record] = []
    for rec in members:
        if rec[2] is None:
            return (rec[0], rec[1], tuple(conds) or None)
        conds.append(rec)
    return (NO_ORDER, None, tuple(conds))


class AddressIndex:
    """Per ``(field, family, prefix length)`` a dict masked address -> slot; see the module doc."""

    __slots__ = ("tables", "shared", "check_fields")

    def __init__(self) -> None:
        self.tables: dict[TableKey, dict[int, tuple[Any, ...]]] = {}
        #: per table, the keys holding more than one rule or a checked rule: all their rules, by order
        self.shared: dict[TableKey, dict[int, list[Record]]] = {}
        #: how many indexed rules' checks read each packet field (the generated code loads those fields)
        self.check_fields: Counter[str] = Counter()

    def add(self, tk: TableKey, key: int, rec: Record, fields: frozenset[str]) -> None:
        """Index ``rec`` under ``key`` of table ``tk`` (created if new); ``fields``: what its check reads."""
        table = self.tables.get(tk)
        if table is None:
            table = self.tables[tk] = {}
            self.shared[tk] = {}
        self.check_fields.update(fields)
        shared = self.shared[tk]
        members = shared.get(key)
        if members is None:
            current = table.get(key)
            if current is None and rec[2] is None:
                table[key] = rec
                return
            members = shared[key] = [] if current is None else [current]  # type: ignore[list-item]
        insort(members, rec, key=_order)
        table[key] = _slot(members)

    def remove(self, tk: TableKey, key: int, rec: Record, fields: frozenset[str]) -> None:
        """Undo :meth:`add` of ``rec`` (which must be indexed there); drops the table when it empties."""
        table = self.tables[tk]
        self.check_fields.subtract(fields)
        for f in fields:
            if self.check_fields[f] <= 0:
                del self.check_fields[f]
        shared = self.shared[tk]
        members = shared.get(key)
        if members is None:
            del table[key]
        else:
            members.remove(rec)
            if len(members) == 1 and members[0][2] is None:
                table[key] = members[0]
                del shared[key]
            elif members:
                table[key] = _slot(members)
            else:
                del table[key]
                del shared[key]
        if not table:
            del self.tables[tk]
            del self.shared[tk]
