"""The I/O around :mod:`imqd.hook_checks` in a running imqd: the nat table, the clock, the warnings in /stats.

`RunChecks` is the controller's ``stats_hook``: each ``GET /stats`` (and /metrics scrape) adds every class's
``matched`` counter and a ``warnings`` list -- the placement warnings for the current config and nat table, then
the classes that have matched nothing while their direction saw traffic.  The nat table is read (never changed)
at most every `NAT_REFRESH_S`, so a firewall reload shows within that time and a busy /stats does not run
``iptables-save`` per request.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from imqd import rules
from imqd.config import Config
from imqd.hook_checks import MatchWatch, NatRule, capped, class_placement_warning, parse_nat

NAT_REFRESH_S = 30.0
PLACEMENT_MORE = "classes the ingress hook cannot see (imqd check-config lists them all)"

log = logging.getLogger("imqd.checks")


def read_nat_rules(runner: rules.Runner = subprocess.run, *, ipv6: bool = True) -> list[NatRule]:
    """The MASQUERADE / SNAT / DNAT rules of both families' nat tables (read-only); RulesError if unreadable."""
    return [r for family, text in rules.read_nat(runner, ipv6=ipv6).items() for r in parse_nat(text, family)]




class RunChecks:
    """``Controller.stats_hook`` for ``imqd run``: ``matched`` per class and the ``warnings`` list."""

    def __init__(self, config: Config, ingress_hook: str, *,
                 read_nat: Callable[[], list[NatRule]] = read_nat_rules,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ingress_hook = ingress_hook
        self.read_nat = read_nat
        self.clock = clock
        self.watch = MatchWatch(config, clock())  # created before the workers start: their counters start at 0
        self._nat: list[NatRule] = []
        self._nat_read_at: float | None = None
        self._nat_error: str | None = None
        self._placement: tuple[Config, list[NatRule], list[str]] | None = None
        self._per_class: dict[tuple[Any, ...], str | None] = {}  # (name, direction, match) -> warning, for _nat

    def nat_rules(self, now: float | None = None) -> list[NatRule]:
        """The nat table's rules, re-read when older than NAT_REFRESH_S; [] (logged once) when unreadable."""
        now = self.clock() if now is None else now
        if self._nat_read_at is None or now - self._nat_read_at >= NAT_REFRESH_S:
            self._nat_read_at = now
            try:
                nat, self._nat_error = self.read_nat(), None
            except rules.RulesError as exc:
                if self._nat_error != str(exc):
                    log.warning("cannot read the nat table, NAT placement checks skipped: %s", exc)
                nat, self._nat_error = [], str(exc)
            if nat != self._nat:  # the same rules read again keep every cached result
                self._nat, self._per_class = nat, {}
        return self._nat

    def placement(self, config: Config, now: float | None = None) -> list[str]:
        """The placement warnings for ``config``, recomputed only when the config or the nat table changed."""
        nat = self.nat_rules(now)
        cached = self._placement
        if cached is None or cached[0] is not config or cached[1] is not nat:
            cached = self._placement = (config, nat, self._placement_lines(config, nat))
        return cached[2]

    def _placement_lines(self, config: Config, nat: list[NatRule]) -> list[str]:
        """placement_lines, each class computed once per nat table: an API change re-checks the changed class."""
        if not nat:
            return []
        memo, lines = self._per_class, []
        for c in self.watch.tree(config).matching:
            key = (c.name, c.direction, c.match)
            if key not in memo:
                memo[key] = class_placement_warning(c, self.ingress_hook, nat)
            if memo[key] is not None:
                lines.append(memo[key])
        return capped(lines, PLACEMENT_MORE)

    @property
    def matched(self) -> Mapping[str, int]:
        """Per class, the packets classified into it as the last call counted them."""
        return self.watch.matched

    def __call__(self, config: Config, stats: dict[str, Any], counters: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
        """Add ``matched`` to ``stats``'s classes and the warnings; ``counters``: every class's counters (the
        answer may hold only the classes a query selected), default ``stats["classes"]``."""
        now = self.clock()
        stats["warnings"] = [*self.placement(config, now), *self.watch.observe(now, config, stats, counters)]
        return stats
