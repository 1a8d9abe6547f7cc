"""``imqd run --apply-rules``: install the rules for the config, keep them and the address sets in step with every
change (API add/change/remove, PUT /classes, import), remove both at exit.

Per change, in this order, so that no rule ever references a missing set and no packet a class can take stops
being queued half-way: (1) sets that are new get created and filled, sets that stay get the prefixes that
changed (:func:`imqd.ipsets.update`: adds, then deletes); (2) the iptables rules are re-applied if their shape
changed (:func:`imqd.rules.apply`, atomic per family); (3) sets no rule references any more are destroyed.
A failed set update leaves the members unknown: the next change rebuilds them whole (``ipset swap``).
"""

from __future__ import annotations

import logging
import subprocess
from typing import TYPE_CHECKING

from imqd import address_sets as sets_mod
from imqd import ipsets
from imqd import rules as rules_mod
from imqd.address_sets import SetKey, SetPlan

if TYPE_CHECKING:
    from imqd.config import Config

log = logging.getLogger("imqd")


class RulesFollower:
    """Installed rules and address sets for one ``imqd run``; call it with each new config."""

    def __init__(self, base: rules_mod.RuleOptions, *, address_sets: bool = True,
                 runner: rules_mod.Runner = subprocess.run) -> None:
        self.base = base
        self.address_sets = address_sets
        self.runner = runner
        self.prefix = sets_mod.set_prefix(base.queues[0])
        self.families = (4, 6) if base.ipv6 else (4,)
        self.installed: rules_mod.RuleOptions | None = None
        self.members: dict[SetKey, frozenset[str]] | None = {}  # what the kernel's sets hold; None: unknown
        self._shape: dict[str, str] = {}  # per direction, the log line last said about it

    def start(self, config: Config) -> None:
        """Install for `config`; leftovers of a run that crashed are replaced (sets) or destroyed."""
        if self.address_sets and (why := ipsets.available(self.runner)) is not None:
            log.warning("address sets off, queueing by interface as before: %s", why)
            self.address_sets = False
        self.members = None  # sets of an earlier run may exist: rebuild whatever is wanted, destroy the rest
        self(config)

    def __call__(self, config: Config) -> None:
        plans = self._plans(config)
        wanted_opts = rules_mod.for_config(self.base, config, plans)
        wanted = self._wanted(wanted_opts, plans)
        known = self.members
        try:
            if known is None:
                ipsets.rebuild(self.runner, [(self._name(k), k.family, v) for k, v in wanted.items()])
            else:
                fresh = [(self._name(k), k.family, v) for k, v in wanted.items() if k not in known]
                ipsets.rebuild(self.runner, fresh)
                ipsets.update(self.runner, [(self._name(k), add, dele)
                                            for k, (add, dele) in sets_mod.delta(known, wanted).items()
                                            if k in known and k in wanted])
        except rules_mod.RulesError:
            self.members = None
            raise
        self.members = wanted
        if wanted_opts != self.installed:
            rules_mod.apply(wanted_opts, self.runner)
            self.installed = wanted_opts
        if known is None or set(known) - set(wanted):
            self._destroy_unwanted()
        self._log_shape(wanted_opts, plans)

    def stop(self) -> None:
        """Remove imqd's rules, then its sets (a set in use by a rule cannot be destroyed)."""
        rules_mod.remove(self.runner, ipv6=self.base.ipv6)
        if self.address_sets:
            ipsets.destroy_stale(self.runner, f"{self.prefix}-.*")

    # -- helpers ----------------------------------------------------------------------------------
    def _name(self, key: SetKey) -> str:
        return sets_mod.set_name(self.prefix, key)

    def _plans(self, config: Config) -> dict[str, SetPlan] | None:
        if not self.address_sets:
            return None
        return {d: sets_mod.plan(config, d, self.families) for d in sets_mod.DIRECTIONS}

    @staticmethod
    def _wanted(opts: rules_mod.RuleOptions, plans: dict[str, SetPlan] | None) -> dict[SetKey, frozenset[str]]:
        """The members of every set the rules `opts` reference."""
        out: dict[SetKey, frozenset[str]] = {}
        for d, plan in (plans or {}).items():
            if getattr(opts, f"{d}_sets") and plan.members is not None:
                out.update(plan.members)
        return out

    def _destroy_unwanted(self) -> None:
        if not self.address_sets:
            return
        keep = [self._name(k) for k in self.members or ()]
        ipsets.destroy_stale(self.runner, f"{self.prefix}-.*", keep)

    def _log_shape(self, opts: rules_mod.RuleOptions, plans: dict[str, SetPlan] | None) -> None:
        """One log line per direction whose rule shape changed (address sets, or not and why not)."""
        for d, plan in (plans or {}).items():
            if not getattr(opts, d):
                shape, line = "", ""
            elif plan.members is not None:
                count = sum(len(v) for v in plan.members.values())
                shape = "sets"
                line = (f"{d}: queueing only packets to or from the classes' {count} prefixes "
                        f"(ipsets {self.prefix}-{d}-*)")
            else:
                shape = line = (f"{d}: queueing every packet of the direction, address sets do not apply: "
                                f"{plan.reason}")
            if shape and shape != self._shape.get(d):
                log.info("%s", line)
            self._shape[d] = shape
