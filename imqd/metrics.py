"""``GET /metrics``: the Prometheus text format, read from the supervisor's latest counter sample.

Follows Prometheus's naming conventions (``promtool check metrics`` passes, a test runs it): base units
(bytes, seconds), ``_total`` counters.  No measured rate is exported: a scraper computes rates from
``imqd_class_bytes_total`` itself (``rate(imqd_class_bytes_total[1m]) * 8`` is bit/s); configured rates are
in bytes per second.  Per class: 5 counters and 4 gauges (9 series), plus a few for non-FIFO leaves;
per worker: 10.  With 10,000 classes that is ~90,000 series in one scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["StatsCollector", "metrics_registry"]

CLASS_LABELS = ["class", "direction"]
#: counter (exported as NAME_total) -> (snapshot column, help)
CLASS_COUNTERS = {
    "imqd_class_bytes": ("bytes", "bytes sent by the class (a scraper's rate() of it is the class's rate)"),
    "imqd_class_packets": ("packets", "packets sent by the class"),
    "imqd_class_drops": ("drops", "packets dropped by the class"),
    "imqd_class_borrowed": ("borrows", "times the class borrowed from its parent"),
    "imqd_class_lends": ("lends", "times the class lent to its children"),
}
CLASS_GAUGES = {
    "imqd_class_backlog_packets": ("backlog_packets", "packets held now (an inner class: its subtree's)"),
    "imqd_class_backlog_bytes": ("backlog_bytes", "bytes held now (an inner class: its subtree's)"),
}
LEAF_GAUGES = {  # details of non-FIFO leaves, one series per class: workers summed, the longest sojourn taken
    "codel_drops": ("imqd_class_codel_drops", "packets dropped by CoDel (fq_codel leaves)"),
    "max_sojourn": ("imqd_class_max_sojourn_seconds", "longest queueing delay seen now (fq_codel leaves)"),
    "active_hosts": ("imqd_class_active_hosts", "hosts with a sub-queue now (per_host leaves)"),
    "loss_drops": ("imqd_class_loss_drops", "packets dropped by loss emulation"),
}
WORKER_COUNTERS = {
    "packets": "packets the worker received",
    "verdicts": "verdicts the worker issued",
    "drops": "packets the worker dropped",
    "malformed": "packets the worker could not parse (accepted unshaped)",
    "batch_verdicts": "batch verdict messages (each accepts every packet of a socket drain)",
    "host_bucket_overflows": "per-host caps this worker kept alone (the shared table had no room)",
    "restarts": "times the worker was restarted",
    "lost_on_crash": "held packets lost when the worker died",
}


class StatsCollector:
    """Prometheus collector over the controller: its config and the latest counter sample (no state of its own)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def collect(self) -> Iterable[Metric]:
        c = self.controller
        yield GaugeMetricFamily("imqd_enabled", "1 when shaping is on, 0 when every packet passes unshaped",
                                value=1 if c.workers.enabled else 0)
        if c.last_apply_s is not None:
            yield GaugeMetricFamily("imqd_last_apply_seconds", "time the last change took to reach every worker",
                                    value=float(c.last_apply_s))
        yield from self._classes(c.config, c.workers.counter_snapshot())
        yield from self._workers(c.workers.worker_stats())

    @staticmethod
    def _classes(config: Any, snap: Any) -> Iterable[Metric]:
        counters = {name: CounterMetricFamily(name, doc, labels=CLASS_LABELS)
                    for name, (_, doc) in CLASS_COUNTERS.items()}
        gauges = {name: GaugeMetricFamily(name, doc, labels=CLASS_LABELS) for name, (_, doc) in CLASS_GAUGES.items()}
        conf_rate = GaugeMetricFamily("imqd_class_configured_rate_bytes_per_second",
                                      "configured (guaranteed) rate", labels=CLASS_LABELS)
        conf_ceil = GaugeMetricFamily("imqd_class_configured_ceil_bytes_per_second", "configured ceiling",
                                      labels=CLASS_LABELS)
        leaf_gauges = {key: GaugeMetricFamily(name, doc, labels=CLASS_LABELS)
                       for key, (name, doc) in LEAF_GAUGES.items()}
        slots, cols = snap.tree.slots, snap.columns
        families: list[tuple[Callable[..., None], Any]] = [
            (counters[name].add_metric, cols[col]) for name, (col, _) in CLASS_COUNTERS.items()]
        families += [(gauges[name].add_metric, cols[col]) for name, (col, _) in CLASS_GAUGES.items()]
        for cls in config.classes:
            labels = [cls.name, cls.direction]
            slot = slots.get(cls.name)
            known = slot is not None and slot < len(snap.rates)
            for add, column in families:
                add(labels, column[slot] if known else 0)
            conf_rate.add_metric(labels, cls.rate / 8)
            conf_ceil.add_metric(labels, cls.effective_ceil / 8)
            leaves = snap.leaves.get(cls.name)
            if leaves:
                for key, fam in leaf_gauges.items():
                    values = [float(leaf[key] or 0) for leaf in leaves if key in leaf]
                    if values:
                        fam.add_metric(labels, max(values) if key == "max_sojourn" else sum(values))
        yield from counters.values()
        yield from gauges.values()
        yield conf_rate
        yield conf_ceil
        yield from leaf_gauges.values()

    @staticmethod
    def _workers(workers: list[dict[str, Any]]) -> Iterable[Metric]:
        labels = ["queue", "cpu"]
        counters = {key: CounterMetricFamily("imqd_worker_" + key, doc, labels=labels)
                    for key, doc in WORKER_COUNTERS.items()}
        held = GaugeMetricFamily("imqd_worker_held_packets", "packets the worker holds now", labels=labels)
        up = GaugeMetricFamily("imqd_worker_up", "1 when the worker is alive and bound to its queue", labels=labels)
        for w in workers:
            lv = [str(w.get("queue", "")), "" if w.get("cpu") is None else str(w.get("cpu"))]
            for key, fam in counters.items():
                fam.add_metric(lv, float(w.get(key) or 0))
            held.add_metric(lv, float(w.get("held") or 0))
            up.add_metric(lv, 1.0 if w.get("alive", True) and w.get("ready", True) else 0.0)
        yield from counters.values()
        yield held
        yield up


def metrics_registry(controller: Any) -> CollectorRegistry:
    """A registry of its own per app (two apps in one process must not share series)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(controller))
    return registry
