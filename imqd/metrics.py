"""``GET /metrics``: the Prometheus text format, read from the supervisor's latest counter sample.

Follows Prometheus's naming conventions (``promtool check metrics`` passes, a test runs it): base units
(bytes, seconds), ``_total`` counters.  No measured rate is exported: a scraper computes rates from
``imqd_class_bytes_total`` itself (``rate(imqd_class_bytes_total[1m]) * 8`` is bit/s); configured rates are
in bytes per second.  Per class: 5 counters and 4 gauges (9 series), plus a few for non-FIFO leaves;
per worker: 10.  With 10,000 classes that is ~90,000 series in one scrape.

The per-class series are written by :class:`ClassSeries` rather than through prometheus_client's
families: 90,000 samples cost ~1.2 s through ``generate_latest`` (a Sample tuple and a float formatting each)
and ~0.1 s as one string join over label texts cached per configuration.  The rest (worker series, leaf
details, the switch) stays with prometheus_client; the test suite checks the whole page with its parser and
with ``promtool check metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from imqd.stats_view import in_pieces

__all__ = ["StatsCollector", "metrics_registry", "ClassSeries"]

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
    "drain_pauses": "socket drains cut short to serve control messages and stats (a sign of overload)",
    "host_bucket_overflows": "per-host caps this worker kept alone (the shared table had no room)",
    "restarts": "times the worker was restarted",
    "lost_on_crash": "held packets lost when the worker died",
    "gso_packets": "GSO/GRO super-packets the worker charged as several segments",
    "gso_segments": "the wire segments those super-packets stand for",
    "pool_drops": "packets refused because their class held more than its share of what the worker may hold "
                  "(--max-held; the longest queues drop first)",
    "queue_dropped": "packets the kernel dropped because the worker's queue was full",
    "user_dropped": "packets the kernel dropped because the worker's socket buffer was full",
    "unshaped_overflow": "packets the kernel passed unshaped because the socket buffer was full "
                         "(--on-overflow accept)",
    "queue_full_samples": "stats samples that found the worker's kernel queue full (with --on-overflow accept "
                          "the kernel passes such packets unshaped without counting them)",
}
WORKER_FLAGS = {
    "gso": "1 when the kernel queues GSO/GRO super-packets whole for the worker",
    "fail_open": "1 when a full queue or socket passes packets unshaped instead of dropping them",
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
        yield from self._leaves(c.config, c.workers.counter_snapshot())
        yield from self._workers(c.workers.worker_stats())

    @staticmethod
    def _leaves(config: Any, snap: Any) -> Iterable[Metric]:
        leaf_gauges = {key: GaugeMetricFamily(name, doc, labels=CLASS_LABELS)
                       for key, (name, doc) in LEAF_GAUGES.items()}
        for name, leaves in snap.leaves.items():
            cls = config.class_by_name(name)
            if cls is None or not leaves:
                continue
            for key, fam in leaf_gauges.items():
                values = [float(leaf[key] or 0) for leaf in leaves if key in leaf]
                if values:
                    fam.add_metric([name, cls.direction], max(values) if key == "max_sojourn" else sum(values))
        yield from leaf_gauges.values()

    @staticmethod
    def _workers(workers: list[dict[str, Any]]) -> Iterable[Metric]:
        labels = ["queue", "cpu"]
        counters = {key: CounterMetricFamily("imqd_worker_" + key, doc, labels=labels)
                    for key, doc in WORKER_COUNTERS.items()}
        held = GaugeMetricFamily("imqd_worker_held_packets", "packets the worker holds now", labels=labels)
        held_max = GaugeMetricFamily("imqd_worker_held_max_packets", "packets the worker's classes may hold "
                                     "together (--max-held)", labels=labels)
        up = GaugeMetricFamily("imqd_worker_up", "1 when the worker is alive and bound to its queue", labels=labels)
        flags = {key: GaugeMetricFamily("imqd_worker_" + key, doc, labels=labels) for key, doc in WORKER_FLAGS.items()}
        for w in workers:
            lv = [str(w.get("queue", "")), "" if w.get("cpu") is None else str(w.get("cpu"))]
            for key, fam in counters.items():
                fam.add_metric(lv, float(w.get(key) or 0))
            held.add_metric(lv, float(w.get("held") or 0))
            if w.get("held_max") is not None:
                held_max.add_metric(lv, float(w["held_max"]))
            up.add_metric(lv, 1.0 if w.get("alive", True) and w.get("ready", True) else 0.0)
            flags["gso"].add_metric(lv, 1.0 if w.get("gso") else 0.0)
            flags["fail_open"].add_metric(lv, 1.0 if w.get("on_overflow") == "accept" else 0.0)
        yield from counters.values()
        yield held
        yield held_max
        yield up
        yield from flags.values()


def metrics_registry(controller: Any) -> CollectorRegistry:
    """A registry of its own per app (two apps in one process must not share series)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(controller))
    return registry


def _escape(value: str) -> str:
    """A label value in the text exposition format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ClassSeries:
    """Writes every class's series, ``stats_view.PIECE`` classes at a time.

    Why in pieces: 10,000 classes' label texts and values at once are a few MB of small strings and ints that
    live for one scrape, and the API process's long-lived objects made meanwhile land among them, so the memory
    stays after the scrape (~200 bytes a class of RSS after a few).  A piece's are freed before the next piece
    is made, which reuses their memory; what stays until the end is one string per family and piece."""

    def text(self, config: Any, snap: Any) -> str:
        """Counters, backlogs and configured rate/ceil in the text format (HELP/TYPE per family)."""
        classes = config.classes
        known = len(snap.rates)
        slots = snap.tree.slots
        counted = [(name + "_total", "counter", doc, snap.columns[col]) for name, (col, doc) in CLASS_COUNTERS.items()]
        counted += [(name, "gauge", doc, snap.columns[col]) for name, (col, doc) in CLASS_GAUGES.items()]
        rate = "imqd_class_configured_rate_bytes_per_second"
        ceil = "imqd_class_configured_ceil_bytes_per_second"
        heads = [(name, kind, doc) for name, kind, doc, _ in counted]
        heads += [(rate, "gauge", "configured (guaranteed) rate"), (ceil, "gauge", "configured ceiling")]
        parts: list[list[str]] = [[f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"] for name, kind, doc in heads]
        for chunk in in_pieces(classes):
            labels = [f'{{class="{_escape(c.name)}",direction="{c.direction}"}} ' for c in chunk]
            where = [slots.get(c.name, known) for c in chunk]
            for (name, _, _, column), out in zip(counted, parts):
                out.append("".join([f"{name}{label}{column[s] if s < known else 0}\n"
                                    for label, s in zip(labels, where)]))
            parts[-2].append("".join([f"{rate}{label}{c.rate / 8}\n" for label, c in zip(labels, chunk)]))
            parts[-1].append("".join([f"{ceil}{label}{c.effective_ceil / 8}\n" for label, c in zip(labels, chunk)]))
        return "".join([piece for out in parts for piece in out])
