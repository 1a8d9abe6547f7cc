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

from dataclasses import dataclass, field
from typing import Any

from imqd.classifier import Classifier
from imqd.config import ClassSpec, Config
from imqd.packet import PacketInfo
from imqd.qdisc.base import QueuedPacket
from imqd.qdisc.htb import HTB, HTBClassParams
from imqd.qdisc.leaves import LeafSpec
from imqd.qdisc.tokens import LocalTokenStore, TokenStore

DIRECTIONS = ("ingress", "egress")

# What admit() decided for a packet.
PASS = 0  # not shaped: accept now
QUEUED = 1  # held by the scheduler: released later by release()


def leaf_spec_for(cls: ClassSpec) -> LeafSpec:
    """The leaf qdisc a config class asks for (a tail-drop FIFO unless told otherwise)."""
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


HOST_NONE, HOST_SRC, HOST_DST = 0, 1, 2


def host_keys(classes: list[ClassSpec]) -> dict[str, int]:
    """Which address a per-host leaf is keyed by (the worker fills ``QueuedPacket.host`` with it)."""
    return {c.name: (HOST_SRC if c.per_host.key == "src" else HOST_DST) for c in classes if c.per_host}


def htb_params(classes: list[ClassSpec], slots: dict[str, int]) -> list[HTBClassParams]:
    """Translate one direction's classes into HTB parameters (slots index the token store)."""
    out = []
    for cls in classes:
        out.append(
            HTBClassParams(
                name=cls.name,
                parent=cls.parent,
                rate=float(cls.rate),
                ceil=float(cls.effective_ceil),
                burst=cls.effective_burst,
                cburst=cls.effective_cburst,
                prio=cls.prio,
                quantum=cls.effective_quantum,
                slot=slots.get(cls.name, -1),
                leaf=leaf_spec_for(cls),
            )
        )
    return out


@dataclass(slots=True)
class DirectionTree:
    """One direction's scheduler: classifier + HTB + per-class overhead."""

    classifier: Classifier
    htb: HTB
    overhead: dict[str, int]
    host_key: dict[str, int]


@dataclass
class Shaper:
    """Both directions' trees, the on/off switch, and counters."""

    tokens: TokenStore = field(default_factory=LocalTokenStore)
    trees: dict[str, DirectionTree | None] = field(default_factory=lambda: {d: None for d in DIRECTIONS})
    enabled: bool = True
    version: int = 0

    def apply(self, config: Config, now: float, slots: dict[str, int] | None = None,
              version: int | None = None) -> list[QueuedPacket]:
        """Install ``config`` (validated already); return held packets to release now.

        Either the whole change is installed or, if HTB refuses it, nothing
        changes and the error propagates.
        """
        if slots is None:
            slots = {}
        new_trees: dict[str, DirectionTree | None] = {}
        released: list[QueuedPacket] = []
        pending: list[tuple[HTB, list[HTBClassParams], str | None]] = []
        for direction in DIRECTIONS:
            classes = config.direction_classes(direction)
            params = htb_params(classes, slots)
            default = config.default_class(direction)
            old = self.trees.get(direction)
            if not params:
                new_trees[direction] = None
                if old is not None:
                    released.extend(old.htb.drain())
                continue
            if old is None:
                htb = HTB(params, now, tokens=self.tokens)
            else:
                htb = old.htb
                pending.append((htb, params, default.name if default else None))
            overhead = {c.name: config.effective_overhead(c) for c in classes}
            new_trees[direction] = DirectionTree(Classifier.from_config(config, direction), htb, overhead,
                                                 host_keys(classes))
        # Validate every existing tree's change before touching any (HTB.change is all-or-nothing per tree).
        for htb, params, default in pending:
            released.extend(htb.change(params, now, fallback=default))
        self.trees = new_trees
        if version is not None:
            self.version = version
        return released

    def admit(self, info: PacketInfo, direction: str, mark: int, iif: str | None, oif: str | None,
              handle: Any, now: float) -> tuple[int, list[QueuedPacket]]:
        """Classify and queue one packet; return (PASS|QUEUED, packets to drop)."""
        tree = self.trees[direction]
        if tree is None or not self.enabled:
            return PASS, []
        leaf = tree.classifier.classify(info, mark, iif, oif)
        if leaf is None:
            return PASS, []
        key = tree.host_key.get(leaf, HOST_NONE) if tree.host_key else HOST_NONE
        host = None if key == HOST_NONE else (info.src if key == HOST_SRC else info.dst)
        pkt = QueuedPacket(info.length + tree.overhead[leaf], handle, now, info.flow, host)
        return QUEUED, tree.htb.enqueue(pkt, leaf, now)

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

    def shapes(self, direction: str) -> bool:
        """Whether packets of ``direction`` can be shaped at all (else they pass without a look)."""
        return self.enabled and self.trees[direction] is not None

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
        return [] if enabled else self.drain()

    @property
    def busy(self) -> bool:
        """Whether any packet is held (O(1)); ``held`` counts them."""
        return any(t is not None and t.htb.busy for t in self.trees.values())

    @property
    def held(self) -> int:
        return sum(t.htb.backlog_packets for t in self.trees.values() if t is not None)

    def class_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for direction, tree in self.trees.items():
            if tree is None:
                continue
            for name, st in tree.htb.class_stats().items():
                st = dict(st)
                st["direction"] = direction
                out[name] = st
        return out

