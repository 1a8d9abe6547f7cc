"""A counter snapshot made from per-class numbers, as the supervisor's sampler would make it (for API fakes)."""

from __future__ import annotations

from array import array
from typing import Any

from imqd.config import Config
from imqd.shared_counters import COUNTER_FIELDS, FIELDS_PER_COUNTER_SLOT
from imqd.stats_sampler import CounterSnapshot, TreeIndex, build_snapshot


def fake_snapshot(config: Config, counters: dict[str, dict[str, Any]], now: float = 100.0) -> CounterSnapshot:
    """``counters``: class -> the shared-memory fields (a leaf's own backlog), ``rate_bps`` and ``qdisc``."""
    slots = {c.name: i for i, c in enumerate(config.classes)}
    tree = TreeIndex.of(config, slots)
    totals = [0] * (tree.rows * FIELDS_PER_COUNTER_SLOT)
    rates = array("d", bytes(8 * tree.rows))
    for name, st in counters.items():
        if name not in slots:
            continue
        slot = slots[name]
        for i, key in enumerate(COUNTER_FIELDS):
            totals[slot * FIELDS_PER_COUNTER_SLOT + i] = int(st.get(key, 0))
        rates[slot] = float(st.get("rate_bps", 0.0)) / 8
    leaves = {name: st["qdisc"] for name, st in counters.items() if st.get("qdisc")}
    return build_snapshot(tree, totals, rates, now, 1_700_000_000.0 + now, leaves)
