"""The per-worker shaping engine: classify, queue, release -- pure, ``now`` passed in.

A :class:`Shaper` is what a worker process runs for every packet.  Like the
two IMQ devices (imq0 for PREROUTING, imq1 for POSTROUTING) it holds one HTB
tree per direction, each with its own classifier.  It knows nothing about
netfilterqueue: the packet ``handle`` is opaque, and the caller issues the
verdicts for what :meth:`admit` and :meth:`release` hand back.

``apply()`` is the only way to (re)configure it -- used at start and for live
changes alike (the kernel's init = defaults + change()).  A change keeps every
held packet: packets of a class that disappears move to the direction's
default class, or are handed back for immediate release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imqd.classifier import ORDER_STRIDE, Classifier, matches_of
from imqd.config import Config, ConfigDelta
from imqd.packet import parse_headers
from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.counters import CounterStore, LocalCounters
from imqd.qdisc.held_pool import HeldPool
from imqd.qdisc.host_buckets import HostBucketTable, class_tag
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.htb_class import shared_float
from imqd.qdisc.perhost import PerHost
from imqd.qdisc.tokens import LocalTokenStore, SlotMap, TokenStore
from imqd.rules import INGRESS_HOOKS
from imqd.worker_config import Row, WorkerConfig, WorkerDelta, leaf_spec_for, shared_leaf_spec, worker_config, \
    worker_delta

__all__ = ["Shaper", "DirectionTree", "NeedsWholeConfig", "leaf_spec_for", "htb_params", "host_keys", "DIRECTIONS"]

if TYPE_CHECKING:
    from imqd.links import LinkCosts  # the worker's devices (I/O): only its floor and charge() are used here

DIRECTIONS = ("ingress", "egress")
# netfilter hook number (NF_INET_*, 0..4) -> the tree that shapes it, like IMQ's imq0 and imq1 (imqd.rules)
HOOK_DIRECTIONS = tuple("ingress" if hook in INGRESS_HOOKS else "egress" for hook in range(5))


HOST_NONE, HOST_SRC, HOST_DST = 0, 1, 2


def host_keys(rows: Iterable[Row]) -> dict[str, int]:
    """Which address a per-host leaf is keyed by (the worker fills ``QueuedPacket.host`` with it)."""
    return {r[0]: (HOST_SRC if r[2].leaf.get("key") == "src" else HOST_DST) for r in rows
            if r[2].leaf.kind == "perhost"}


def htb_params(rows: Iterable[Row], slots: Mapping[str, int]) -> list[HTBClassParams]:
    """Translate one direction's classes (worker config rows) into HTB parameters (slots index the token
    store); classes on the same plan share their rate and ceil objects."""
    out = []
    for name, parent, s, _, _ in rows:
        out.append(HTBClassParams(name=name, parent=parent, rate=shared_float(float(s.rate)),
                                  ceil=shared_float(float(s.ceil)), burst=s.burst, cburst=s.cburst, prio=s.prio,
                                  quantum=s.quantum, slot=slots.get(name, -1), leaf=shared_leaf_spec(s.leaf)))
    return out


class DirectionTree:
    """One direction's scheduler (IMQ's imq0 or imq1): classifier + HTB + per-class overhead."""

    __slots__ = ("classifier", "htb", "overhead", "host_key", "needs_info", "_classify_packet",
                 "_send_now_reference", "_lanes")

    def __init__(self, classifier: Classifier, htb: HTB, overhead: dict[str, int], host_key: dict[str, int],
                 needs_info: set[str]) -> None:
        self.classifier = classifier
        self.htb = htb
        self.overhead = overhead
        self.host_key = host_key
        self.needs_info = needs_info  # leaves whose qdisc reads QueuedPacket.flow or .host
        self._classify_packet = classifier.classify_packet  # bound once: admit runs per packet
        self._send_now_reference = htb.send_now_reference  # for leaves without a lane, and a lane's -1
        self._lanes = htb.lanes  # the C fast path of send_now, when compiled (the same dict for the HTB's life)

    def admit(self, pkt: Any, data: bytes, names: Mapping[int, str | None], now: float, links: LinkCosts
              ) -> list[QueuedPacket] | None:
        """Classify one packet from its header bytes, then let it through at once or queue it.

        ``pkt`` is the netfilterqueue packet (its mark and ``indev``/``outdev`` are read only when a rule
        tests them; ``names`` maps an ifindex to its name) and becomes the queued packet's handle.
        A packet longer than ``links.floor`` (the smallest MTU) may be a GSO super-packet: ``links``
        charges it for every segment the wire will carry (:mod:`imqd.gso`).
        Returns ``None`` when the packet may go now -- no class takes it, or HTB lets it straight through
        (:meth:`HTB.send_now`) -- and the caller accepts it.  Otherwise the scheduler holds it and the
        returned list holds what its leaf dropped (maybe the packet itself): the caller drops those.
        Raises :class:`~imqd.packet.MalformedPacket` for bytes that are no IP packet.
        """
        length, leaf = self._classify_packet(pkt, data, names)
        if leaf is None:
            return None
        size = length + self.overhead[leaf]
        if length > links.floor:
            size = links.charge(pkt, data, self.overhead[leaf])
        lane = self._lanes.get(leaf)
        sent = lane.send(size, now) if lane is not None else -1  # HTB.lanes: 1 sent, 0 queue it, -1 ask
        if sent == 1 or (sent < 0 and self._send_now_reference(leaf, size, now)):
            return None
        flow = 0
        host = None
        if leaf in self.needs_info:  # flow-aware and per-host leaves want the parsed 5-tuple
            info = parse_headers(data)
            flow = info.flow
            key = self.host_key.get(leaf, HOST_NONE)
            if key != HOST_NONE:
                host = info.src if key == HOST_SRC else info.dst
        return self.htb.enqueue(QueuedPacket(size, pkt, now, flow, host), leaf, now)


class NeedsWholeConfig(ValueError):
    """A delta a worker cannot apply in place: it installs the whole new configuration instead."""


@dataclass
class TreeDelta:
    """One direction's part of a config delta, checked before it is applied (see ``Shaper.apply_delta``)."""

    shaper: Shaper
    direction: str
    tree: DirectionTree
    gone: list[str]
    ups: list[Row]
    params: list[HTBClassParams]
    drop: list[str]
    add: list[Any]
    default: str | None
    prepared: Any = None  # the HTB's plan from check(), so apply() does not plan a big delta twice

    def check(self) -> None:
        self.prepared = self.tree.htb.check_update(self.params, self.gone, fallback=self.default)
        self.tree.classifier.check_update(remove=self.drop, add=self.add, default=self.default)

    def apply(self, now: float) -> list[QueuedPacket]:
        tree = self.tree
        released = tree.htb.update(self.params, self.gone, now=now, fallback=self.default, prepared=self.prepared)
        tree.classifier.update(remove=self.drop, add=self.add, default=self.default)
        for name in self.gone:
            tree.overhead.pop(name, None)
            tree.host_key.pop(name, None)
            tree.needs_info.discard(name)
        host_buckets = self.shaper.host_buckets
        for row in self.ups:
            name, s = row[0], row[2]
            tree.overhead[name] = s.overhead
            tree.host_key.pop(name, None)
            tree.host_key.update(host_keys([row]))
            if s.leaf.kind != "fifo":
                tree.needs_info.add(name)
            else:
                tree.needs_info.discard(name)
            if host_buckets is not None and s.leaf.kind == "perhost":
                leaf = tree.htb.leaf(name)
                if isinstance(leaf, PerHost):
                    leaf.share_buckets(host_buckets, class_tag(self.direction, name))
        return released


@dataclass
class Shaper:
    """Both directions' trees, the on/off switch, and counters."""

    tokens: TokenStore = field(default_factory=LocalTokenStore)
    #: per-class counters (imqd.qdisc.counters), at the same slots as the tokens; a worker's block of the
    #: shared counters segment, so statistics are read without asking the worker
    counters: CounterStore = field(default_factory=LocalCounters)
    trees: dict[str, DirectionTree | None] = field(default_factory=lambda: {d: None for d in DIRECTIONS})
    enabled: bool = True
    version: int = 0
    _own_slots: SlotMap | None = None  # slots when the caller gives none (a private store)
    #: where per_host leaves keep their hosts' caps so they hold across workers (imqd.shared_hosts);
    #: None: each leaf keeps its own (one worker)
    host_buckets: HostBucketTable | None = None
    #: hook number -> the tree that shapes it, None when nothing does (or shaping is off): the worker's
    #: per-packet lookup, kept current by apply() and set_enabled()
    by_hook: tuple[DirectionTree | None, ...] = (None,) * len(HOOK_DIRECTIONS)
    #: what apply_delta needs of the configuration installed last (a worker keeps no copy of 10,000 classes):
    #: the global overhead and each direction's default class; None until apply() ran
    overhead: int | None = None
    defaults: dict[str, str | None] = field(default_factory=dict)
    _next_order: int = 0  # the classifier order of the next class a delta adds (after every config position)
    #: the packets this worker may hold, shared by both trees' classes (imqd.qdisc.held_pool); no bound by default
    pool: HeldPool = field(default_factory=HeldPool)

    def apply(self, config: WorkerConfig | Config, now: float, slots: dict[str, int] | None = None,
              version: int | None = None) -> list[QueuedPacket]:
        """Install ``config`` (validated already); return held packets to release now.

        ``config`` is what the supervisor sends a worker (:class:`~imqd.worker_config.WorkerConfig`); a
        ``Config`` is read the same way (:func:`~imqd.worker_config.worker_config`).  Either the whole change
        is installed or, if it is malformed or HTB refuses it, nothing changes and the error propagates.
        """
        if not isinstance(config, WorkerConfig):
            config = worker_config(config)
        config.check()
        if slots is None:  # both trees share the store: give every class its own slot across directions
            if self._own_slots is None:
                self._own_slots = SlotMap(self.tokens)
            slots = self._own_slots.assign(r[0] for r in config.rows)
        new_trees: dict[str, DirectionTree | None] = {}
        released: list[QueuedPacket] = []
        pending: list[tuple[HTB, list[HTBClassParams], str | None]] = []
        for direction in DIRECTIONS:
            params = htb_params(config.direction_rows(direction), slots)
            default = config.default(direction)
            old = self.trees.get(direction)
            if not params:
                new_trees[direction] = None
                if old is not None:
                    released.extend(old.htb.drain())
                continue
            if old is None:
                htb = HTB(params, now, tokens=self.tokens, counters=self.counters, pool=self.pool)
            else:
                htb = old.htb
                pending.append((htb, params, default))
            overhead = {r[0]: r[2].overhead for r in config.direction_rows(direction)}
            needs_info = {r[0] for r in config.direction_rows(direction) if r[2].leaf.kind != "fifo"}
            new_trees[direction] = DirectionTree(Classifier.from_config(config, direction), htb, overhead,
                                                 host_keys(config.direction_rows(direction)), needs_info)
        # Validate every existing tree's change before touching any (HTB.change is all-or-nothing per tree).
        for htb, params, default in pending:
            released.extend(htb.change(params, now, fallback=default))
        if self.host_buckets is not None:
            for direction in DIRECTIONS:
                tree = new_trees[direction]
                for name, _, s, _, _ in config.direction_rows(direction):
                    leaf = tree.htb.leaf(name) if tree is not None and s.leaf.kind == "perhost" else None
                    if isinstance(leaf, PerHost):
                        leaf.share_buckets(self.host_buckets, class_tag(direction, name))
        self.trees = new_trees
        self._index_hooks()
        self.overhead = config.overhead
        self.defaults = {d: config.default(d) for d in DIRECTIONS}
        self._next_order = len(config.rows) * ORDER_STRIDE  # orders: config positions x stride; later ones follow
        if version is not None:
            self.version = version
        return released

    def apply_delta(self, delta: WorkerDelta | ConfigDelta, now: float, slots_added: dict[str, int] | None = None,
                    version: int | None = None) -> list[QueuedPacket]:
        """Apply ``delta`` (validated already) to the configuration installed last: the same contract as
        :meth:`apply` -- held packets to release are returned, and either all of it is installed or nothing.
        ``slots_added``: token slots of the classes the delta adds (removed classes free theirs); None when
        the caller gives no slots (a private store).

        In place, in time proportional to the delta (``HTB.update``, ``Classifier.update``): the other
        classes keep their queues, tokens and scheduler state, and nothing is rebuilt.  A delta that reorders
        the classes, changes the global overhead, moves a class to the other direction, or gives a direction
        its first class or takes its last raises :class:`NeedsWholeConfig` and changes nothing: the caller
        installs the whole new configuration with :meth:`apply` instead (the worker asks the supervisor)."""
        if self.overhead is None:
            raise NeedsWholeConfig("no configuration installed yet")
        if not isinstance(delta, WorkerDelta):  # read as a worker receives it (imqd.worker_config)
            delta = worker_delta(delta, self.overhead if delta.overhead is None else delta.overhead)
        delta.check()
        reason = self._whole_needed(delta)
        if reason is not None:
            raise NeedsWholeConfig(reason)
        if slots_added is None:  # a private store: our own slot map, changed by the delta alone
            if self._own_slots is None:
                self._own_slots = SlotMap(self.tokens)
            self._own_slots.release(delta.removed)
            slots_added = self._own_slots.add(r[0] for r in delta.upserted if self._tree_of(r[0]) is None)
        defaults = dict(self.defaults)
        for name in delta.removed:
            for d, n in defaults.items():
                if n == name:
                    defaults[d] = None
        for name, _, s, _, _ in delta.upserted:
            if s.default:
                defaults[s.direction] = name
            elif defaults.get(s.direction) == name:
                defaults[s.direction] = None
        plans = [p for d in DIRECTIONS if (p := self._tree_delta(d, delta, slots_added, defaults[d])) is not None]
        for plan in plans:  # check every tree's part before changing any: one version, never half of one
            plan.check()
        released: list[QueuedPacket] = []
        for plan in plans:
            released.extend(plan.apply(now))
        self.defaults = defaults
        if version is not None:
            self.version = version
        return released

    def _tree_of(self, name: str) -> str | None:
        """The direction whose tree has class ``name`` (None: neither)."""
        for direction, tree in self.trees.items():
            if tree is not None and name in tree.htb:
                return direction
        return None

    def _whole_needed(self, delta: WorkerDelta) -> str | None:
        """Why ``delta`` cannot be applied tree by tree (None: it can)."""
        if delta.order is not None:
            return "the delta reorders the classes (the classifiers' first-match order changes)"
        if delta.overhead is not None and delta.overhead != self.overhead:
            return "the delta changes the global overhead"
        size = {d: len(t.htb) if t is not None else 0 for d, t in self.trees.items()}
        for name in delta.removed:
            d = self._tree_of(name)
            if d is None:  # not a delta for the configuration installed: refused (the caller asks for the whole)
                raise ValueError(f"the delta removes class {name!r}, which this worker does not have")
            size[d] -= 1
        for name, _, s, _, _ in delta.upserted:
            d = self._tree_of(name)
            if d is not None and d != s.direction:
                return f"the delta moves class {name!r} to {s.direction}"
            if self.trees.get(s.direction) is None:
                return f"the delta gives {s.direction} its first class"
            if d is None:
                size[s.direction] += 1
        if any(self.trees[d] is not None and not n for d, n in size.items()):
            return "the delta removes the last class of a direction"
        return None

    def _orders_between(self, tree: DirectionTree, names: set[str]) -> dict[str, int]:
        """Rule orders for classes of ``tree`` that gain a match: between the rules of their neighbours in
        configuration order (the tree's definition order), so the first match is the one the configuration
        says -- not the end, where a class new to the configuration goes.  One pass over the tree (a rare
        change); :class:`NeedsWholeConfig` if no order is left between two rules."""
        cls = tree.classifier
        out: dict[str, int] = {}
        waiting: list[str] = []
        below = -1  # the order of the last rule passed

        def spread(above: int) -> None:
            step = (above - below) // (len(waiting) + 1)
            if step < 1:
                raise NeedsWholeConfig(f"no rule order is left for class {waiting[0]!r} between its neighbours'")
            out.update((n, below + step * (i + 1)) for i, n in enumerate(waiting))
            waiting.clear()

        for p in tree.htb.classes:
            if p.name in names:
                waiting.append(p.name)
            elif p.name in cls:
                above = cls.order(p.name)
                if waiting:
                    spread(above)
                below = above
        if waiting:
            spread(self._next_order)
        return out

    def _tree_delta(self, direction: str, delta: WorkerDelta, slots_added: dict[str, int], default: str | None
                    ) -> TreeDelta | None:
        """One direction's part of a delta (None when it has none)."""
        tree = self.trees[direction]
        if tree is None:
            return None
        htb = tree.htb
        gone = [n for n in delta.removed if n in htb]
        ups = [r for r in delta.upserted if r[2].direction == direction]
        if not gone and not ups and tree.classifier.default == default:
            return None
        cls = tree.classifier
        drop = [n for n in gone if n in cls]
        add = []
        gaining = {r[0] for r in ups if r[2].match is not None and r[0] not in cls and r[0] in htb}
        between = self._orders_between(tree, gaining) if gaining else {}
        for row in ups:
            name = row[0]
            if row[2].match is not None:  # (the config allows a match on leaves only)
                if name in cls:
                    order = cls.order(name)
                elif name in between:
                    order = between[name]
                else:
                    order = self._next_order
                    self._next_order += ORDER_STRIDE
                add.append((name, matches_of(row), order))
            elif name in cls:
                drop.append(name)
        slots = {r[0]: slots_added[r[0]] if r[0] in slots_added else htb.slot_of(r[0]) for r in ups}
        return TreeDelta(self, direction, tree, gone, ups, htb_params(ups, slots), drop, add, default)

    def _index_hooks(self) -> None:
        """Recompute ``by_hook``: after every change of the trees or of the switch."""
        self.by_hook = tuple(self.trees[d] if self.enabled else None for d in HOOK_DIRECTIONS)

    def release(self, now: float) -> list[QueuedPacket]:
        """Every packet the schedulers release at ``now`` (in release order)."""
        out: list[QueuedPacket] = []
        for tree in self.trees.values():
            if tree is None or not tree.htb.busy:
                continue
            dequeue = tree.htb.dequeue
            pkt = dequeue(now)
            while pkt is not None:
                out.append(pkt)
                pkt = dequeue(now)
        return out

    def take_dropped(self) -> list[QueuedPacket]:
        """Packets the schedulers dropped outside enqueue (AQM in dequeue, a shrunk or replaced leaf).

        The caller must give each of them a drop verdict.
        """
        out: list[QueuedPacket] = []
        for tree in self.trees.values():
            if tree is not None:
                out.extend(tree.htb.take_dropped())
        return out

    def next_event(self, now: float) -> float | None:
        """When the next packet may be released (the worker's watchdog), or None."""
        best: float | None = None
        for tree in self.trees.values():
            if tree is None:
                continue
            t = tree.htb.next_event(now)
            if t is not None and (best is None or t < best):
                best = t
        return best

    def drain(self) -> list[QueuedPacket]:
        """Hand back every held packet (shutdown, or shaping switched off)."""
        out: list[QueuedPacket] = []
        for tree in self.trees.values():
            if tree is not None:
                out.extend(tree.htb.drain())
        return out

    def set_enabled(self, enabled: bool) -> list[QueuedPacket]:
        """Switch shaping on/off; switching off releases everything held (no reordering)."""
        self.enabled = enabled
        self._index_hooks()
        return [] if enabled else self.drain()

    @property
    def busy(self) -> bool:
        """Whether any packet is held (O(1)); ``held`` counts them."""
        for t in self.trees.values():
            if t is not None and t.htb.busy:
                return True
        return False

    @property
    def held(self) -> int:
        return sum(t.htb.backlog_packets for t in self.trees.values() if t is not None)

    def class_stats(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Every class's counters and token state, tokens projected to ``now`` (see HTB.class_stats)."""
        out: dict[str, dict[str, Any]] = {}
        for direction, tree in self.trees.items():
            if tree is None:
                continue
            for name, st in tree.htb.class_stats(now).items():
                st = dict(st)
                st["direction"] = direction
                out[name] = st
        return out

