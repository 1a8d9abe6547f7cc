"""Packet classification: the rule that comes first in the config wins, else the default class, else None.

A rule is ``(class name, Match)`` with an ``order`` (an int; the smallest order among the matching rules
wins -- the class's position in the config).  ``Match.matches`` is the plain interpreted test: the reference
the tests hold everything else to.

:class:`Classifier` answers in a time that does not grow with the number of rules when the rules test
addresses, the common case (one /32 or prefix per subscriber): it indexes each rule that has a ``src`` or
``dst`` prefix in a dict per prefix length (:mod:`imqd.classifier_index`), and a packet probes each length
present.  Rules without an address prefix (ports only, DSCP, marks, interfaces, catch-alls) stay generated
``if`` statements (:mod:`imqd.classifier_codegen`), tested in order.  :meth:`Classifier.update` changes rules
in place: O(1) per indexed rule.  :class:`LinearClassifier` is the older design, every rule one ``if``
(O(rules) per packet), kept for the microbenchmark (``python -m bench.micro_classifier``) and the
differential tests.

The worker's entry is ``classify_packet(pkt, data, names) -> (IP length, class)`` over the raw header bytes of
a netfilterqueue packet: IPv4 without options is read straight from the bytes, anything else goes through
:func:`imqd.packet.parse_headers` (which raises ``MalformedPacket``); the mark and interface names are read
from the packet only if a rule tests them.  ``classify_bytes`` is the same with the mark and the interface
names given, ``classify`` the same over a parsed :class:`PacketInfo`.  Property tests hold all of them to
``Match.matches`` over random rule sets, packets and update sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from imqd.classifier_codegen import Shape, classify_packet_source, classify_source, compile_function, reset_caches
from imqd.cidr import net_bits
from imqd.classifier_index import NO_ORDER, AddressIndex, Record, check_for, index_key
from imqd.packet import PacketInfo
from imqd.worker_config import Row, WorkerConfig, match_pairs, worker_config

if TYPE_CHECKING:
    from imqd.config import Config, Direction, MatchSpec

__all__ = ["Match", "Classifier", "LinearClassifier", "MAX_RULES", "MAX_LINEAR_RULES"]

U32 = 0xFFFFFFFF
ClassifyFn = Callable[[PacketInfo, int, "str | None", "str | None"], "str | None"]

#: most rules one classifier holds: 10x the design target of 10,000 subscribers, ~20 MB per worker and
#: direction (about 200 bytes per indexed rule)
MAX_RULES = 100_000
#: most rules without an address prefix: each is an ``if`` every packet may walk (4,096 of them cost tens
#: of µs per packet); beyond that give the rules ``src``/``dst`` prefixes
MAX_LINEAR_RULES = 4_096


def _if_test(name: str | None, have: str | None) -> bool:
    if name is None:
        return True
    if have is None:
        return False
    if name.endswith("+"):
        return have.startswith(name[:-1])
    return have == name


@dataclass(frozen=True, slots=True)
class Match:
    """A compiled match.  All given fields must hold; a Match with no fields matches everything.

    ``src``/``dst`` are CIDR strings (a v4 CIDR never matches a v6 packet),
    ``sport``/``dport`` inclusive ``(lo, hi)`` ranges, ``mark`` a ``(value, mask)``
    pair tested as ``mark & mask == value``, ``iif``/``oif`` interface names
    where a trailing ``+`` matches any name with that prefix (as iptables).
    """

    src: str | None = None
    dst: str | None = None
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    dscp: int | None = None
    mark: tuple[int, int] | None = None
    iif: str | None = None
    oif: str | None = None
    family: int = field(init=False)
    src_net: int = field(init=False)
    src_mask: int = field(init=False)
    dst_net: int = field(init=False)
    dst_mask: int = field(init=False)

    def __post_init__(self) -> None:
        sfam, snet, smask = net_bits(self.src)
        dfam, dnet, dmask = net_bits(self.dst)
        if sfam and dfam and sfam != dfam:
            raise ValueError(f"src {self.src} and dst {self.dst} are of different IP families")
        for name, rng in (("sport", self.sport), ("dport", self.dport)):
            if rng is not None and not (0 <= rng[0] <= rng[1] <= 65535):
                raise ValueError(f"invalid {name} range {rng!r}")
        if self.mark is not None and self.mark[0] & ~self.mark[1] & U32:
            raise ValueError(f"mark value {self.mark[0]:#x} has bits outside mask {self.mark[1]:#x}")
        object.__setattr__(self, "family", sfam or dfam)
        object.__setattr__(self, "src_net", snet)
        object.__setattr__(self, "src_mask", smask)
        object.__setattr__(self, "dst_net", dnet)
        object.__setattr__(self, "dst_mask", dmask)

    @classmethod
    def from_spec(cls, spec: MatchSpec) -> Match:
        return cls(
            src=spec.src, dst=spec.dst, proto=spec.proto, sport=spec.sport, dport=spec.dport,
            dscp=spec.dscp, mark=spec.mark, iif=spec.iif, oif=spec.oif,
        )  # fmt: skip

    def matches(self, info: PacketInfo, mark: int, iif: str | None, oif: str | None) -> bool:
        """Interpreted test (slow path, reference for the compiled classifier)."""
        if self.family and info.family != self.family:
            return False
        if self.src is not None and info.src & self.src_mask != self.src_net:
            return False
        if self.dst is not None and info.dst & self.dst_mask != self.dst_net:
            return False
        if self.proto is not None and info.proto != self.proto:
            return False
        if self.sport is not None and not self.sport[0] <= info.sport <= self.sport[1]:
            return False
        if self.dport is not None and not self.dport[0] <= info.dport <= self.dport[1]:
            return False
        if self.dscp is not None and info.dscp != self.dscp:
            return False
        if self.mark is not None and mark & self.mark[1] != self.mark[0]:
            return False
        return _if_test(self.iif, iif) and _if_test(self.oif, oif)

    def conditions(self) -> list[tuple[str, str | None]]:
        """``(expression, field it reads)`` pairs over the generated classifier's locals, cheapest and most
        selective first; ``mark``/``iif``/``oif`` are arguments, not ``PacketInfo`` attributes."""
        cond: list[tuple[str, str | None]] = []
        if self.family:
            cond.append((f"family == {self.family}", "family"))
        if self.proto is not None:
            cond.append((f"proto == {self.proto}", "proto"))
        for var, rng in (("dport", self.dport), ("sport", self.sport)):
            if rng is not None:
                lo, hi = rng
                cond.append((f"{var} == {lo}" if lo == hi else f"{lo} <= {var} <= {hi}", var))
        full = (1 << (32 if self.family == 4 else 128)) - 1
        for var, cidr, net, mask in (("dst", self.dst, self.dst_net, self.dst_mask),
                                     ("src", self.src, self.src_net, self.src_mask)):  # fmt: skip
            if cidr is None or mask == 0:
                continue  # /0 needs the family test only
            cond.append((f"{var} == {net}" if mask == full else f"{var} & {mask} == {net}", var))
        if self.dscp is not None:
            cond.append((f"dscp == {self.dscp}", "dscp"))
        if self.mark is not None:
            value, mask = self.mark
            cond.append((f"mark == {value}" if mask & U32 == U32 else f"mark & {mask} == {value}", "mark"))
        for var, name in (("iif", self.iif), ("oif", self.oif)):
            if name is None:
                continue
            if name.endswith("+"):
                cond.append((f"{var} is not None and {var}.startswith({name[:-1]!r})", var))
            else:
                cond.append((f"{var} == {name!r}", var))
        return cond



def _plain(m: Match, field: str) -> bool:
    """True when ``m`` tests nothing but its ``field`` prefix (and the family): the common subscriber rule."""
    other_mask = m.src_mask if field == "dst" else m.dst_mask
    return (other_mask == 0 and m.proto is None and m.sport is None and m.dport is None and m.dscp is None
            and m.mark is None and m.iif is None and m.oif is None)  # fmt: skip


class _Given:
    """A stand-in packet for classify_bytes: this mark, interfaces 1 (in) and 2 (out)."""

    __slots__ = ("mark",)
    indev, outdev = 1, 2

    def __init__(self, mark: int) -> None:
        self.mark = mark

    def get_mark(self) -> int:
        return self.mark


def _rec_order(rec: Record) -> int:
    return rec[0]


def matches_of(row: Row) -> Match | tuple[Match, ...]:
    """A worker config row's match (:mod:`imqd.worker_config`) as the classifier takes it: one Match, or one
    per address pair it lists (``MatchSpec.alternatives``)."""
    r = row[2].match
    assert r is not None
    alts = tuple(Match(src=s, dst=d, proto=r.proto, sport=r.sport, dport=r.dport, dscp=r.dscp, mark=r.mark,
                       iif=r.iif, oif=r.oif) for s, d in match_pairs(row))
    return alts[0] if len(alts) == 1 else alts


class _Keep:
    """``update(default=...)`` not given: keep the default class."""


_KEEP = _Keep()

#: Rule orders are configuration positions times this: a class that gains a match by a live change takes an
#: order between its neighbours' (:meth:`imqd.shaper.Shaper.apply_delta`), where its position says.
ORDER_STRIDE = 1 << 20

#: ``(class name, Match or Matches, order)``: a class's rule to add.  Several Matches are alternatives (a class
#: that lists several addresses: ``MatchSpec.alternatives``): the class matches when any of them does.
NewRule = tuple[str, "Match | tuple[Match, ...]", int]


class Classifier:
    """Rules ``(class name, Match)`` with orders; the matching rule of smallest order wins, else the default.

    ``classify_packet(pkt, data, names)`` is an instance attribute holding the generated function (no method
    binding per call) and stays the same function object for the classifier's life: :meth:`update` swaps its
    code in place, so a caller that bound it once sees every change.  ``source`` is its code.
    ``classify(info, mark, iif, oif)``, the same over a parsed ``PacketInfo``, is compiled on first use (the
    worker never needs it).
    """

    __slots__ = ("classify_packet", "source", "_default", "_records", "_orders", "_linear", "_index",
                 "_n_indexed", "_n_linear", "_shape", "_ns", "_classify", "_rules")

    #: False: no index, every rule an ``if`` (LinearClassifier)
    indexed: ClassVar[bool] = True
    #: most rules without an address prefix
    max_linear: ClassVar[int] = MAX_LINEAR_RULES

    #: ``classify_packet(pkt, data, names) -> (IP length, class or None)``: classify_bytes with the mark and
    #: the interface names (``names`` maps ifindex -> name) taken from a netfilterqueue packet, only when some
    #: rule tests them
    classify_packet: Callable[[Any, bytes, Any], "tuple[int, str | None]"]

    def __init__(self, rules: Sequence[tuple[str, Match | tuple[Match, ...]]], default: str | None) -> None:
        """``rules`` in first-match order (rule i gets order i)."""
        self._default: str | None = None
        self._records: dict[str, tuple[Record, ...]] = {}  # every class's rules (one per alternative) by class name
        self._orders: dict[int, str] = {}  # order -> class name: orders are unique
        self._linear: dict[str, list[Record]] = {}  # the rules not in the index
        self._index = AddressIndex()
        self._n_indexed = 0
        self._n_linear = 0  # rules (alternatives) not in the index
        self._shape: Shape | None = None
        self._ns: dict[str, Any] = {}  # the generated functions' globals
        self._classify: ClassifyFn | None = None
        self._rules: tuple[tuple[str, Match], ...] | None = None
        new: list[NewRule] = []
        for i, rule in enumerate(rules):
            if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
                raise TypeError(f"a rule is (class name, Match), got {rule!r}")
            new.append((rule[0], rule[1], i))
        self.update(add=new, default=default)

    @classmethod
    def from_config(cls, config: WorkerConfig | Config, direction: Direction) -> Classifier:
        """Rules from the leaf classes of ``direction`` that have a match (a match listing several addresses
        gives one alternative per address, ``MatchSpec.alternatives``); a class's order is its position in
        the configuration times :data:`ORDER_STRIDE`.  A ``Config`` is read as a worker reads it
        (:func:`~imqd.worker_config.worker_config`)."""
        if not isinstance(config, WorkerConfig):
            config = worker_config(config)
        parents = {r[1] for r in config.rows}  # (the config allows a match on leaves only)
        # i counts here: a worker keeps the orders, and ints of its own do not pin the memory of the config it
        # drops after applying (see supervisor.kept_strings)
        rules = [(r[0], matches_of(r), i * ORDER_STRIDE) for i, r in enumerate(config.rows)
                 if r[2].match is not None and r[2].direction == direction and r[0] not in parents]
        new = cls([], None)
        new.update(add=rules, default=config.default(direction))
        return new

    # --- changes ---------------------------------------------------------------------------------

    def update(self, remove: Iterable[str] = (), add: Iterable[NewRule] = (),
               default: str | None | _Keep = _KEEP) -> None:  # fmt: skip
        """Remove the rules of the classes ``remove``, add ``add`` (``(name, Match, order)``; a name that has a
        rule already gets the new one), set the default class if given.

        All or nothing: a bad change (an unknown name to remove, a name added twice, an order another rule
        keeps, a wrong type, a limit passed) raises ``ValueError``/``TypeError`` naming the class, and
        changes nothing.  Cost: O(1) per rule the index holds; a change to the rules it does not hold (no
        address prefix), to the set of prefix lengths present or to the default regenerates the per-packet
        code, whose size depends on those rules and lengths only, not on the indexed rules.  Call it between
        packets (the worker is single-threaded): a packet classified during an update may see part of it.
        """
        removing = list(remove)
        adding = [tuple(rule) if isinstance(rule, list) else rule for rule in add]
        self._check(removing, adding, default)
        for name in removing:
            self._drop(name)
        for name, _, _ in adding:  # every replaced rule first: an added rule may take a replaced one's order
            if name in self._records:
                self._drop(name)
        for name, m, order in adding:
            self._put(name, m, order)
        if not isinstance(default, _Keep):
            self._default = default
        self._rules = None
        self._regenerate()

    def check_update(self, remove: Iterable[str] = (), add: Iterable[NewRule] = (),
                     default: str | None | _Keep = _KEEP) -> None:
        """Raise what :meth:`update` would raise for this change; change nothing."""
        self._check(list(remove), [tuple(rule) if isinstance(rule, list) else rule for rule in add], default)

    def _check(self, removing: list[str], adding: list[NewRule], default: str | None | _Keep) -> None:
        """Raise for anything :meth:`update` must refuse, before it changes anything."""
        if not (default is None or isinstance(default, (str, _Keep))):
            raise TypeError(f"the default class must be a class name or None, got {default!r}")
        gone: set[str] = set()
        for name in removing:
            if not isinstance(name, str):
                raise TypeError(f"a class to remove must be a name, got {name!r}")
            if name not in self._records:
                raise ValueError(f"class {name!r} has no rule to remove")
            if name in gone:
                raise ValueError(f"class {name!r} is removed twice")
            gone.add(name)
        for rule in adding:
            if not (isinstance(rule, (tuple, list)) and len(rule) == 3):
                raise TypeError(f"a rule to add is (class name, Match, order), got {rule!r}")
            name, m, order = rule
            ms = m if isinstance(m, tuple) else (m,)
            if not isinstance(name, str) or not ms or not all(isinstance(x, Match) for x in ms):
                raise TypeError(f"a rule is (class name, Match or a tuple of Matches), got ({name!r}, {m!r})")
            if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order < NO_ORDER:
                raise ValueError(f"class {name!r}: order must be an int from 0 to 2**62-1, got {order!r}")
        names = {name for name, _, _ in adding}  # their old rules go, and free their orders
        seen: set[str] = set()
        orders: dict[int, str] = {}
        leaving = gone | (names & self._records.keys())
        linear_left = self._n_linear - sum(len(self._linear[n]) for n in leaving if n in self._linear)
        total = self._n_indexed + self._n_linear - sum(len(self._records[n]) for n in leaving)
        for name, m, order in adding:
            ms = m if isinstance(m, tuple) else (m,)
            total += len(ms)
            if total > MAX_RULES:
                raise ValueError(f"class {name!r}: more than {MAX_RULES} rules in one classifier")
            if name in seen:
                raise ValueError(f"class {name!r} is added twice")
            seen.add(name)
            if order in orders:
                raise ValueError(f"class {name!r}: order {order} is also given to class {orders[order]!r}")
            orders[order] = name
            owner = self._orders.get(order)
            if owner is not None and owner not in gone and owner not in names:
                raise ValueError(f"class {name!r}: order {order} is taken by class {owner!r}")
            linear_left += sum(1 for x in ms if not (self.indexed and x.family and (x.dst_mask or x.src_mask)))
            if linear_left > self.max_linear:  # (what index_key cannot take)
                raise ValueError(f"class {name!r}: more than {self.max_linear} rules without a src or dst prefix "
                                 "(each is tested one by one on every packet); give them address prefixes")

    def _put(self, name: str, m: Match | tuple[Match, ...], order: int) -> None:
        recs: list[Record] = []
        for alt in m if isinstance(m, tuple) else (m,):
            found = index_key(alt) if self.indexed else None
            if found is None:
                rec: Record = (order, name, None, alt)
                self._linear.setdefault(name, []).append(rec)
                self._n_linear += 1
            else:
                tk, key = found
                check, fields = (None, frozenset()) if _plain(alt, tk[0]) else check_for(alt, tk[0])
                rec = (order, name, check, alt)
                self._index.add(tk, key, rec, fields)
                self._n_indexed += 1
            recs.append(rec)
        self._records[name] = tuple(recs)  # (a tuple of one is 40 bytes smaller than a list of one)
        self._orders[order] = name

    def _drop(self, name: str) -> None:
        recs = self._records.pop(name)
        del self._orders[recs[0][0]]
        self._n_linear -= len(self._linear.pop(name, ()))
        for rec in recs:
            found = index_key(rec[3]) if self.indexed else None
            if found is not None:
                tk, key = found
                fields = frozenset() if rec[2] is None else check_for(rec[3], tk[0])[1]
                self._index.remove(tk, key, rec, fields)
                self._n_indexed -= 1


    # --- the generated code ----------------------------------------------------------------------

    def _regenerate(self) -> None:
        """Point the generated functions at the current tables; recompile them if their shape changed."""
        tables = tuple(sorted(self._index.tables))
        linear = tuple((o, n, m) for o, n, _, m in sorted((r for rs in self._linear.values() for r in rs),
                                                          key=_rec_order))  # (stable: alternatives keep theirs)
        shape = Shape(linear, tables, frozenset(self._index.check_fields), self._default)
        for i, tk in enumerate(tables):  # a table emptied and made again in one update is a new dict
            self._ns[f"_g{i}"] = self._index.tables[tk].get
        reset_caches(self._ns)
        if shape == self._shape:
            return
        self.source = classify_packet_source(shape)
        fn = self._compile(self.source, "classify_packet", shape)
        if self._shape is None:
            self.classify_packet = fn
        else:
            self.classify_packet.__code__ = fn.__code__  # the same function object: see the class doc
        if self._classify is not None:
            self._classify.__code__ = self._compile(classify_source(shape), "classify", shape).__code__
        self._shape = shape

    def _compile(self, source: str, name: str, shape: Shape) -> Any:
        tables = [self._index.tables[tk] for tk in shape.tables]
        return compile_function(source, name, tables, shape.default, self._ns)

    # --- queries ---------------------------------------------------------------------------------

    @property
    def classify(self) -> ClassifyFn:
        """``classify(info, mark, iif, oif)`` over a parsed PacketInfo (compiled on first use)."""
        if self._classify is None:
            assert self._shape is not None
            self._classify = self._compile(classify_source(self._shape), "classify", self._shape)
        return self._classify

    def classify_bytes(self, data: bytes, mark: int, iif: str | None, oif: str | None) -> tuple[int, str | None]:
        """``(IP length, class)`` of the raw header bytes -- ``classify_packet`` with the mark and interface
        names given directly (tests and tools; the worker calls ``classify_packet``)."""
        return self.classify_packet(_Given(mark), data, {1: iif, 2: oif})

    @property
    def rules(self) -> tuple[tuple[str, Match], ...]:
        """``(class name, Match)`` in order (built on first use after a change)."""
        if self._rules is None:
            recs = sorted((r for rs in self._records.values() for r in rs), key=_rec_order)
            self._rules = tuple((name, m) for _, name, _, m in recs)
        return self._rules

    def order(self, name: str) -> int:
        """The order of class ``name``'s rule (KeyError if it has none)."""
        return self._records[name][0][0]

    @property
    def default(self) -> str | None:
        return self._default

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self._records)} rules, {self._n_indexed} indexed in "
                f"{len(self._index.tables)} tables, default={self._default!r})")


class LinearClassifier(Classifier):
    """The reference design: every rule one generated ``if``, tested in order -- O(rules) per packet, and an
    update regenerates everything.  Kept to compare against (the microbenchmark, differential tests)."""

    __slots__ = ()
    indexed = False
    max_linear = MAX_RULES
