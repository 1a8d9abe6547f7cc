"""Can the hooks imqd queues at see the addresses its classes name?  Warnings instead of a silent no-match.

A shaper whose class never matches does nothing and says nothing: on a masquerading router, ingress taken
before de-NAT sees every download addressed to the router's public address, so a class for an internal host
never matches and the host downloads at line rate.  Two checks catch that:

* :func:`placement_warnings` (``imqd check-config``, ``imqd run`` at start, ``GET /stats``): from the config,
  the ingress placement and the nat table (:func:`parse_nat` of ``iptables-save``), the classes whose
  addresses the placement cannot see -- an internal ``dst`` at ingress before de-NAT while the nat table
  masquerades, a ``dst`` that is the SNAT address at ingress after de-NAT, a ``src`` that is the SNAT address
  at egress (always before SNAT).
* :class:`MatchWatch` (``GET /stats``): a leaf class that has matched no packet since it got its match, for at
  least `WARN_AFTER_S` seconds during which its direction saw at least `MIN_PACKETS` packets.  A class that
  matched once proves its placement sees its addresses, so later idleness is not reported; an idle host that
  never sent anything is (the list is capped at `MAX_LISTED` lines plus a count).

Pure: the caller reads the nat table and the clock and passes them in.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imqd.config import ClassSpec, Config

__all__ = ["ClassTree", "NatRule", "parse_nat", "placement_warnings", "class_placement_warning",
           "matched_counts", "MatchWatch", "capped",
           "WARN_AFTER_S", "MIN_PACKETS", "MAX_LISTED"]

WARN_AFTER_S = 10.0  # a class is reported after this long of traffic in its direction without a match
MIN_PACKETS = 100  # ... provided its direction saw at least this many packets meanwhile
MAX_LISTED = 10  # warnings listed one by one in GET /stats; the rest are counted in one more line

INGRESS_HOOK_NAMES = ("prerouting", "input", "forward")  # imqd.rules.HOOK_NAMES by direction
EGRESS_HOOK_NAMES = ("output", "postrouting")
SOURCE_NAT = frozenset({"MASQUERADE", "SNAT"})
AFTER_NAT_HINT = "use --ingress-hook after-nat (the default)"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ClassTree:
    """What the checks need of a config, in one pass over its classes (Config.is_leaf costs ~10 us a call, too
    much 10,000 times per GET /stats): the matching leaves, and every leaf's ancestors.

    Kept for as long as the config runs, so per class it holds references only: ``ancestors[i]`` is the chain
    of ``leaves[i]``, one tuple shared by all the leaves of a parent (10,000 subscribers: one chain)."""

    matching: tuple[ClassSpec, ...]  # leaves with a match, not default: ingress ones first, each in config order
    leaves: tuple[str, ...]
    ancestors: tuple[tuple[str, ...], ...]  # per leaf, its ancestors nearest first
    names: tuple[str, ...]

    @property
    def chains(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(leaf, its ancestors nearest first) for every leaf."""
        return zip(self.leaves, self.ancestors)

    @classmethod
    def of(cls, config: Config) -> ClassTree:
        parent_of = {c.name: c.parent for c in config.classes}
        inner = set(parent_of.values())
        leaves = [c for c in config.classes if c.name not in inner]
        chains: dict[str | None, tuple[str, ...]] = {}  # parent -> the chain its leaves share
        for c in leaves:
            if c.parent not in chains:
                up, p = [], c.parent
                while p is not None and len(up) < len(parent_of):
                    up.append(p)
                    p = parent_of.get(p)
                chains[c.parent] = tuple(up)
        matching = tuple(c for d in ("ingress", "egress") for c in leaves
                         if c.direction == d and c.match is not None and not c.default)
        return cls(matching, tuple(c.name for c in leaves), tuple(chains[c.parent] for c in leaves),
                   tuple(parent_of))


@dataclass(frozen=True)
class NatRule:
    """One MASQUERADE / SNAT / DNAT rule of the nat table, reduced to what the checks need."""

    family: str  # "ipv4" | "ipv6"
    target: str  # MASQUERADE, SNAT or DNAT
    sources: Network | None  # ``-s``; None: any source (also for ``! -s``: the set is not a prefix)
    to: tuple[tuple[Address, Address], ...]  # ``--to-source`` / ``--to-destination`` address ranges
    line: str  # the rule as iptables-save printed it, for messages

    @property
    def source_nat(self) -> bool:
        return self.target in SOURCE_NAT


def _address_ranges(spec: str) -> tuple[tuple[Address, Address], ...]:
    """``203.0.113.7``, ``10.0.0.5-10.0.0.9:80``, ``[2001:db8::5]:80`` -> address ranges (ports dropped)."""
    out = []
    for part in spec.split(","):
        if part.startswith("["):  # [v6]:port or [v6]-[v6]:port
            addrs = [a.strip("[]") for a in part.rsplit("]:", 1)[0].split("-")] if "]" in part else []
        elif part.count(":") == 1:  # v4:port
            addrs = part.split(":")[0].split("-")
        else:
            addrs = part.split("-")
        try:
            first, last = ipaddress.ip_address(addrs[0]), ipaddress.ip_address(addrs[-1])
        except (ValueError, IndexError):
            continue  # a port-only spec (REDIRECT-like) or something this check does not need
        out.append((first, last))
    return tuple(out)


def parse_nat(saved: str, family: str = "ipv4") -> list[NatRule]:
    """The MASQUERADE, SNAT and DNAT rules of an ``iptables-save`` nat table (any chain); the rest is ignored."""
    rules = []
    for line in saved.splitlines():
        if not line.startswith("-A "):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        target, sources, to, negated = None, None, "", False
        for i, tok in enumerate(tokens):
            arg = tokens[i + 1] if i + 1 < len(tokens) else ""
            if tok in ("-j", "--jump"):
                target = arg
            elif tok in ("-s", "--source"):
                if i > 0 and tokens[i - 1] == "!":
                    negated = True
                else:
                    sources = arg
            elif tok in ("--to-source", "--to-destination", "--to"):
                to = arg
        if target not in (*SOURCE_NAT, "DNAT"):
            continue
        net = None
        if sources and not negated:
            try:
                net = ipaddress.ip_network(sources.split(",")[0], strict=False)
            except ValueError:
                net = None
        rules.append(NatRule(family, target, net, _address_ranges(to) if to else (), line))
    return rules


def _family(net: Network) -> str:
    return "ipv4" if net.version == 4 else "ipv6"


def _in_ranges(net: Network, ranges: Iterable[tuple[Address, Address]]) -> bool:
    first, last = net.network_address, net.broadcast_address
    return any(a.version == net.version and a <= last and first <= b for a, b in ranges)


def _source_nat_hiding(dst: Network, nat: Sequence[NatRule]) -> tuple[NatRule, bool] | None:
    """The source-NAT rule that makes replies to ``dst`` arrive addressed to the router, and whether that is
    certain (its ``-s`` covers ``dst``) rather than likely (no ``-s``, and ``dst`` is a non-global address)."""
    fam = _family(dst)
    likely = None
    for rule in nat:
        if rule.family != fam or not rule.source_nat:
            continue
        if rule.sources is not None:
            if rule.sources.version == dst.version and rule.sources.overlaps(dst):
                return rule, True
        elif likely is None and not dst.is_global:
            likely = rule
    return (likely, False) if likely is not None else None


def class_placement_warning(c: ClassSpec, ingress_hook: str, nat: Sequence[NatRule]) -> str | None:
    """Why the placement cannot see the address ``c`` names, or None (``nat`` not empty: the caller skips that)."""
    match = c.match
    text = None if match is None else match.dst if c.direction == "ingress" else match.src
    if not text:
        return None  # ingress is only hidden by NAT in its destination, egress in its source
    family = "ipv6" if ":" in text else "ipv4"
    if c.direction == "ingress" and ingress_hook == "prerouting":
        fam_nat = [r for r in nat if r.family == family]  # source NAT or port forwards: both hide the host
    else:
        fam_nat = [r for r in nat if r.family == family and r.target == "SNAT" and r.to]
    if not fam_nat:
        return None  # nothing to compare with: no address to parse (10,000 classes, ~8 us each)
    dst = ipaddress.ip_network(text) if c.direction == "ingress" else None
    src = ipaddress.ip_network(text) if c.direction == "egress" else None
    if c.direction == "ingress" and dst is not None and ingress_hook == "prerouting":
        hidden = _source_nat_hiding(dst, fam_nat)
        if hidden is not None:
            rule, certain = hidden
            who = f"replies to {dst}" if certain else f"if {dst} is an internal host, replies to it"
            return (f"class {c.name} matches dst {dst}, but ingress is taken at mangle PREROUTING, before de-NAT, "
                    f"and the nat table masquerades ({rule.line}): {who} are still addressed to the router's "
                    f"public address there, so the class never sees them; {AFTER_NAT_HINT}")
        dnat = next((r for r in fam_nat if r.target == "DNAT" and _in_ranges(dst, r.to)), None)
        if dnat is not None:
            return (f"class {c.name} matches dst {dst}, but ingress is taken at mangle PREROUTING, before de-NAT: "
                    f"connections port-forwarded to it ({dnat.line}) are still addressed to the router there; "
                    f"{AFTER_NAT_HINT}")
    if c.direction == "ingress" and dst is not None and ingress_hook == "after-nat":
        snat = next((r for r in fam_nat if r.target == "SNAT" and _in_ranges(dst, r.to)), None)
        if snat is not None:
            return (f"class {c.name} matches dst {dst}, an address the nat table translates to ({snat.line}): "
                    "ingress is taken after de-NAT (mangle FORWARD/INPUT), where forwarded replies are addressed to "
                    "the internal hosts, so the class sees only traffic to the router itself; match the internal "
                    "addresses, or use --ingress-hook prerouting")
    if c.direction == "egress" and src is not None:
        snat = next((r for r in fam_nat if _in_ranges(src, r.to)), None)
        if snat is not None:
            return (f"class {c.name} matches src {src}, an address the nat table translates to ({snat.line}): "
                    "egress is taken at mangle POSTROUTING, before SNAT, where forwarded packets still carry the "
                    "internal source, so the class sees only the router's own traffic; match the internal addresses "
                    "(egress after SNAT cannot be built with iptables)")
    return None


def placement_warnings(config: Config, ingress_hook: str, nat: Sequence[NatRule]) -> list[str]:
    """One line per class whose addresses the ingress placement (``after-nat`` | ``prerouting``) or egress (always
    before SNAT) cannot see, given the nat table's rules; empty when there is no NAT or nothing to see."""
    if not nat:
        return []
    warnings = (class_placement_warning(c, ingress_hook, nat) for c in ClassTree.of(config).matching)
    return [w for w in warnings if w is not None]


def capped(lines: Sequence[str], what: str, limit: int = MAX_LISTED) -> list[str]:
    """At most ``limit`` lines, then one that counts the rest (10,000 idle classes must not flood /stats)."""
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"... and {len(lines) - limit:,} more {what}"]


# ---------------------------------------------------------------------------- matched no packet
def matched_counts(tree: ClassTree, classes: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Per class, the packets classified into it: sent + dropped + still queued (``GET /stats`` counters);
    a parent's is the sum of its leaves'.  Counters of several workers are already summed by the caller."""
    out = dict.fromkeys(tree.names, 0)
    for leaf, ancestors in tree.chains:
        st = classes.get(leaf)
        if not st:
            continue
        backlog = st.get("backlog") or {}
        n = (st.get("packets") or 0) + (st.get("drops") or 0) + (backlog.get("packets") or 0)
        out[leaf] = n
        for name in ancestors:
            out[name] += n
    return out


def describe_match(c: ClassSpec) -> str:
    """``dst 198.18.1.2/32, dport 5001`` -- a class's match as an operator wrote it."""
    fields = c.match.model_dump(exclude_none=True) if c.match is not None else {}
    parts = []
    for key, value in fields.items():
        if key == "mark":
            value = f"{value[0]:#x}/{value[1]:#x}"
        elif isinstance(value, (tuple, list)):
            value = str(value[0]) if value[0] == value[-1] else f"{value[0]}-{value[-1]}"
        parts.append(f"{key} {value}")
    return ", ".join(parts) or "everything"


@dataclass(slots=True)
class _Quiet:
    """A class's state in the watch: since when (and since which direction packet count) it has not matched."""

    spec: ClassSpec  # the class as last seen: a changed direction or match starts it over
    matched: int
    since: float
    traffic: int
    ever: bool = False  # matched at least once with this match: its placement can see it


def _same_match(a: ClassSpec, b: ClassSpec) -> bool:
    """Whether ``b`` (a class now) has the direction and match ``a`` (as last seen) had."""
    return a is b or (a.direction == b.direction and a.match == b.match)


class MatchWatch:
    """Tells which classes have matched nothing while their direction saw traffic, from successive stats.

    ``observe`` is given the stats of ``GET /stats`` each time they are read (with the workers' per-hook
    packet counters, ``hook_packets``); counters of a restarted worker start over, so direction traffic is
    summed from each queue's increments (a count that falls is a new worker's, counted from zero) and a class
    counter that falls starts the class's wait over.  Classes of the
    config given at construction count from ``started`` with zero counters (the workers start then), so the
    first ``GET /stats`` after ten seconds of traffic already reports; classes added later count from the
    first time they are observed."""

    def __init__(self, config: Config, started: float, *, warn_after: float = WARN_AFTER_S,
                 min_packets: int = MIN_PACKETS) -> None:
        self.started = started
        self.warn_after = warn_after
        self.min_packets = min_packets
        self._traffic = {"ingress": 0, "egress": 0, "prerouting": 0}  # packets seen since start, monotone
        self.matched: Mapping[str, int] = {}  # per class, what the last observe() counted
        self._worker_seen: dict[Any, dict[str, int]] = {}  # queue -> its worker's counters last time
        tree = ClassTree.of(config)
        self._tree: tuple[Config, ClassTree] | None = (config, tree)
        self._classes: dict[str, _Quiet] = {c.name: _Quiet(c, 0, started, 0) for c in tree.matching}

    def tree(self, config: Config) -> ClassTree:
        """``ClassTree.of(config)``, rebuilt only when the config changed (a Config is immutable)."""
        if self._tree is None or self._tree[0] is not config:
            self._tree = (config, ClassTree.of(config))
        return self._tree[1]

    def _count_traffic(self, workers: Iterable[Mapping[str, Any]]) -> None:
        for w in workers:
            hooks = w.get("hook_packets") or {}
            now = {"ingress": sum(int(hooks.get(h, 0) or 0) for h in INGRESS_HOOK_NAMES),
                   "egress": sum(int(hooks.get(h, 0) or 0) for h in EGRESS_HOOK_NAMES),
                   "prerouting": int(hooks.get("prerouting", 0) or 0)}
            key = w.get("queue")
            before = self._worker_seen.get(key, {})
            for name, value in now.items():
                old = before.get(name, 0)
                self._traffic[name] += value - old if value >= old else value  # fell: a new worker counts anew
            self._worker_seen[key] = now

    def observe(self, now: float, config: Config, stats: dict[str, Any],
                counters: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
        """Record ``stats`` (adds ``matched`` to each of its classes) and return the no-match warnings.

        ``counters``: every class's counters when ``stats`` holds only some (a filtered ``GET /stats``)."""
        self._count_traffic(stats.get("workers") or [])
        classes = stats.get("classes") or {}
        tree = self.tree(config)
        matched = self.matched = matched_counts(tree, classes if counters is None else counters)
        for name, st in classes.items():
            st["matched"] = matched.get(name, 0)
        enabled = stats.get("enabled", True)
        quiet: list[tuple[ClassSpec, _Quiet]] = []
        old_states = self._classes
        states: dict[str, _Quiet] = {}
        for c in tree.matching:
            name = c.name
            state = old_states.get(name)
            if state is not None and _same_match(state.spec, c):
                state.spec = c  # (the newest object: the next look is an identity test, the old one is freed)
                if state.ever and enabled:
                    states[name] = state  # matched before with this match: nothing to watch (most classes)
                    continue
            else:
                state = None  # new, or its direction or match changed: it starts over
            traffic, n = self._traffic[c.direction], matched[name]
            if state is None or not enabled:
                state = _Quiet(c, n, now, traffic)  # new, changed, or not classifying: start over
            elif n > state.matched:
                state.matched, state.ever = n, True
            elif n < state.matched:  # a restarted worker's share is gone: it may have matched meanwhile
                state = _Quiet(c, n, now, traffic, state.ever)
            states[name] = state
            if not state.ever and now - state.since >= self.warn_after and \
                    traffic - state.traffic >= self.min_packets:
                quiet.append((c, state))
        self._classes = states
        lines = [self._no_match_line(c, s, now) for c, s in quiet]
        return capped(lines, "classes that have matched no packet while their direction saw traffic")

    def _no_match_line(self, c: ClassSpec, state: _Quiet, now: float) -> str:
        direction = c.direction
        seen = self._traffic[direction] - state.traffic
        line = (f"class {c.name} ({direction}, match {describe_match(c)}) has matched no packet in "
                f"{now - state.since:.0f} s while {direction} saw {seen:,} packets")
        if direction == "ingress" and self._traffic["prerouting"] and c.match is not None and c.match.dst:
            return (f"{line}; ingress is taken at mangle PREROUTING, before de-NAT: on a NAT router a download is "
                    f"still addressed to the router's public address there, so classes for internal hosts "
                    f"never match; {AFTER_NAT_HINT}")
        return f"{line}; check its match (first match wins: an earlier class may take its packets)"
