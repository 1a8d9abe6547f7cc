"""A change's way from the controller to the workers: token slots, the delta message, its application.

The central property: any sequence of accepted changes, sent as deltas, leaves a worker's Shaper in the
same state as a fresh start from the final configuration (``shaper_state``: HTB classes and parameters,
token slots, overheads, classifier answers on packets hitting every address).
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP
from shaper_state import sample_packets, shaper_state

from imqd.config import Config, ConfigDelta, ConfigError, parse_config
from imqd.links import LinkCosts
from imqd.qdisc.tokens import LocalTokenStore, SlotMap
from imqd.queue_worker import QueueWorker, WorkerOptions
from imqd.shaper import NeedsWholeConfig, Shaper
from imqd.worker_config import worker_config, worker_delta

# -- token slots ------------------------------------------------------------------------------------


def test_slots_are_kept_added_and_freed_one_by_one() -> None:
    store = LocalTokenStore()
    slots = SlotMap(store, capacity=4)
    assert slots.add(["a", "b"]) == {"a": 0, "b": 1}
    assert slots.add(["a", "c"]) == {"c": 2}, "a name keeps its slot"
    slots.release(["b"])
    assert slots.add(["d"]) == {"d": 3}, "a never-used slot first"
    assert slots.add(["e"]) == {"e": 1}, "then the slot freed longest ago"
    with pytest.raises(ValueError, match="holds 4"):
        slots.add(["f", "g"])
    assert slots.slots == {"a": 0, "c": 2, "d": 3, "e": 1}, "a refused add changes nothing"
    slots.release(["a", "nosuch"])
    assert slots.add(["f"]) == {"f": 0}


def test_a_reused_slot_starts_fresh() -> None:
    store = LocalTokenStore()
    slots = SlotMap(store, capacity=1)
    slots.add(["a"])
    store.values[0:3] = type(store.values)("d", [5.0, 6.0, 7.0])
    slots.release(["a"])
    slots.add(["b"])
    assert store.values[2] != store.values[2], "t_c is NaN: the new class starts with full buckets"


def test_assign_keeps_slots_and_frees_the_rest() -> None:
    slots = SlotMap(LocalTokenStore())
    slots.assign(["a", "b", "c"])
    assert slots.assign(["c", "d"]) == {"c": 2, "d": 0}, "a private store reuses freed slots at once"


def test_the_shared_store_holds_every_class_the_config_allows() -> None:
    from imqd.config import MAX_CLASSES
    from imqd.shared_tokens import DEFAULT_SLOTS

    assert MAX_CLASSES <= DEFAULT_SLOTS
    slots = SlotMap(LocalTokenStore(), capacity=DEFAULT_SLOTS)
    slots.add(f"c{i}" for i in range(MAX_CLASSES))
    slots.release(f"c{i}" for i in range(0, MAX_CLASSES, 2))
    assert len(slots.add(f"n{i}" for i in range(MAX_CLASSES // 2))) == MAX_CLASSES // 2, \
        "a change frees slots before it takes new ones, so it never needs more than the store has"


# -- deltas on a Shaper vs a fresh start ------------------------------------------------------------

NAMES = [f"k{i}" for i in range(10)]


def base_config() -> Config:
    return parse_config({"overhead": 14, "classes": [
        {"name": "down", "direction": "ingress", "rate": "100mbit", "ceil": "1gbit"},
        {"name": "up", "direction": "egress", "rate": "100mbit", "ceil": "1gbit"},
        {"name": "k0", "direction": "ingress", "parent": "down", "rate": "1mbit", "match": {"dst": "198.18.0.0/24"}},
        {"name": "k1", "direction": "egress", "parent": "up", "rate": "1mbit", "default": True},
    ]})


@st.composite
def changes(draw: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Operations as the API would receive them (some refused: those change nothing)."""
    ops = []
    for _ in range(draw(st.integers(1, 12))):
        name = draw(st.sampled_from(NAMES))
        direction = draw(st.sampled_from(["ingress", "egress"]))
        i = NAMES.index(name)
        spec = {"direction": direction, "parent": draw(st.sampled_from([None, "down", "up", "k2"])),  # k2: leaf or not
                "rate": draw(st.sampled_from(["1mbit", "2mbit", "5mbit"])),
                "ceil": draw(st.sampled_from([None, "10mbit", "50mbit"])),
                "prio": draw(st.integers(0, 7)),
                "match": draw(st.sampled_from([None, {"dst": f"198.18.{i}.0/24"},
                                               {"src": [f"198.18.{i}.1", f"2001:db8:{i}::/64"]},
                                               {"proto": "udp", "dport": 5060}])),
                "default": draw(st.booleans()),
                "qdisc": draw(st.sampled_from([None, {"kind": "fq_codel"}]))}
        spec = {k: v for k, v in spec.items() if v is not None}
        ops.append((draw(st.sampled_from(["add", "change", "remove", "overhead", "bulk", "swap"])), name, spec))
    return ops


def accepted(config: Config, op: str, name: str, spec: dict[str, Any]) -> tuple[Config, ConfigDelta] | None:
    try:
        if op == "add":
            new = config.with_class_added({"name": name, **spec})
        elif op == "change":
            new = config.with_class_changed(name, spec)
        elif op == "remove":
            new = config.with_class_removed(name)
        elif op == "overhead":
            new = config.apply_delta(ConfigDelta(overhead=spec["prio"] * 4))
        elif op == "swap":  # a bulk replace without reordering: the first leaf k* gone, this class (re)added last
            gone = next((c.name for c in config.classes if c.name.startswith("k") and config.is_leaf(c.name)), None)
            others = [c.model_dump() for c in config.classes if c.name not in (name, gone)]
            new = parse_config({"overhead": config.overhead, "classes": [*others, {"name": name, **spec}]})
        else:  # a bulk replace: this class moved to the front, the rest in reverse order
            others = [c.model_dump() for c in reversed(config.classes) if c.name != name]
            new = parse_config({"overhead": config.overhead, "classes": [{"name": name, **spec}, *others]})
    except ConfigError:
        return None
    return new, config.diff(new)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes())
def test_any_sequence_of_deltas_ends_where_a_fresh_start_does(ops: list[tuple[str, str, dict[str, Any]]]) -> None:
    config = base_config()
    slots = SlotMap(LocalTokenStore(), capacity=64)  # the supervisor's
    worker = Shaper()
    worker.apply(config, 0.0, slots.assign(c.name for c in config.classes), version=1)
    version = 1
    for op, name, spec in ops:
        result = accepted(config, op, name, spec)
        if result is None:
            continue
        config, delta = result
        slots.release(delta.removed)  # as Supervisor.push_delta does
        added = slots.add(c.name for c in delta.upserted)
        version += 1
        try:
            worker.apply_delta(delta, float(version), added, version)
        except NeedsWholeConfig:  # (a reorder, the global overhead, a direction's first or last class)
            worker.apply(config, float(version), dict(slots.slots), version)  # what a resync installs
    fresh = Shaper()
    fresh.apply(config, 0.0, dict(slots.slots), version=version)
    packets = sample_packets(config)
    assert shaper_state(worker, packets) == shaper_state(fresh, packets)


LINKS = LinkCosts(mtu_of=lambda index: 1500, all_mtus=lambda: [1500])  # no super-packets here


def test_apply_delta_keeps_held_packets_of_unchanged_classes() -> None:
    config = base_config()
    shaper = Shaper()
    shaper.apply(config, 0.0)
    for _ in range(5):
        pkt = bytes(IP(src="203.0.113.9", dst="198.18.0.7") / TCP() / (b"x" * 1400))
        shaper.trees["ingress"].admit(_Pkt(), pkt, {}, 0.0, LINKS)
    held = shaper.held
    assert held > 0
    new = config.with_class_added({"name": "k5", "direction": "ingress", "parent": "down", "rate": "1mbit"})
    released = shaper.apply_delta(config.diff(new), 0.001, None, 2)
    assert released == [] and shaper.held == held and shaper.version == 2


class _Pkt:
    """A netfilterqueue packet stand-in for admit (no mark, no interfaces)."""

    indev = outdev = 0

    def get_mark(self) -> int:
        return 0


# -- the worker's message handling -------------------------------------------------------------------


class Pipe:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, msg: tuple[Any, ...]) -> None:
        self.sent.append(msg)


def worker_at_version_1() -> tuple[QueueWorker, Pipe, Config]:
    pipe = Pipe()
    worker = QueueWorker(WorkerOptions(queue=0, cpu=None), Shaper(), pipe)
    worker._clock = lambda: 1.0
    config = base_config()
    worker.handle_message(("config", 1, (), {c.name: i for i, c in enumerate(config.classes)}, worker_config(config),
                           True))
    return worker, pipe, config


def test_a_delta_is_applied_as_the_next_version() -> None:
    worker, pipe, config = worker_at_version_1()
    new = config.with_class_changed("k0", {"rate": "3mbit"})
    worker.handle_message(("delta", 2, worker_delta(config.diff(new), new.overhead), {}, True))
    assert pipe.sent[-1] == ("applied", 2) and worker.shaper.version == 2
    packets = sample_packets(new)
    fresh = Shaper()
    fresh.apply(new, 0.0, {c.name: i for i, c in enumerate(config.classes)}, version=2)
    assert shaper_state(worker.shaper, packets) == shaper_state(fresh, packets)
    added = new.with_class_added({"name": "k9", "direction": "ingress", "parent": "down", "rate": "1mbit"})
    worker.handle_message(("delta", 3, worker_delta(new.diff(added), added.overhead), {"k9": 7}, False))
    assert pipe.sent[-1] == ("applied", 3) and not worker.shaper.enabled
    assert worker.shaper.trees["ingress"].htb.class_stats(0.0)["k9"]["slot"] == 7


def test_a_delta_already_applied_is_acknowledged_again() -> None:
    worker, pipe, config = worker_at_version_1()
    worker.handle_message(("delta", 1, ConfigDelta(removed=("k0",)), {}, True))
    assert pipe.sent[-1] == ("applied", 1) and "k0" in worker.shaper.trees["ingress"].htb, "not applied twice"


def test_a_gap_asks_for_the_whole_configuration() -> None:
    worker, pipe, config = worker_at_version_1()
    worker.handle_message(("delta", 3, ConfigDelta(removed=("k0",)), {}, True))
    assert pipe.sent[-1] == ("resync", 3, 1) and "k0" in worker.shaper.trees["ingress"].htb


def test_a_refused_delta_keeps_the_old_tree_and_asks_for_the_whole() -> None:
    worker, pipe, config = worker_at_version_1()
    bad = ConfigDelta(removed=("nosuch",))  # cannot apply: a delta for another configuration
    worker.handle_message(("delta", 2, bad, {}, True))
    assert pipe.sent[-2][0] == "error" and pipe.sent[-1] == ("resync", 2, 1)
    assert worker.shaper.version == 1 and "k0" in worker.shaper.trees["ingress"].htb


# -- the supervisor's side (no worker processes: messages captured) ---------------------------------


@pytest.fixture
def supervisor() -> Any:
    from imqd.supervisor import Supervisor

    sup = Supervisor([0, 1], base_config())
    sent: list[tuple[int, tuple[Any, ...]]] = []
    # (a broadcast arrives pickled once for all workers: what the worker's recv() unpickles)
    sup._send = lambda w, msg: sent.append(  # type: ignore[method-assign]
        (w.queue, msg if isinstance(msg, tuple) else pickle.loads(msg))) or True
    sup.sent = sent  # type: ignore[attr-defined]
    yield sup
    sup.stop()


def test_push_delta_sends_only_the_delta_and_new_slots(supervisor: Any) -> None:
    sup = supervisor
    config = sup.config
    before = dict(sup.slots)
    new = config.with_class_added({"name": "k9", "direction": "ingress", "parent": "down", "rate": "1mbit"})
    new = new.with_class_removed("k0")
    delta = config.diff(new)
    sup.push_delta(delta, new)
    (q0, msg0), (q1, msg1) = sup.sent
    assert (q0, q1) == (0, 1) and msg0 == msg1
    kind, version, sent_delta, added, enabled = msg0
    assert (kind, version, sent_delta, enabled) == ("delta", 2, worker_delta(delta, new.overhead), True)
    assert added == {"k9": len(before)} and "k0" not in sup.slots, "a never-used slot; the removed one freed"
    msg = sup._config_message()
    assert sup.config is new and (msg[0], msg[1], msg[4]) == ("config", 2, worker_config(new))


def test_a_worker_that_asks_gets_the_whole_configuration(supervisor: Any) -> None:
    sup = supervisor
    w = sup.workers[1]
    sup._on_message(w, ("resync", 5, 3))
    assert w.resync
    sup._receive(w)  # no connection: only the pending resync is served
    queue, msg = sup.sent[-1]
    assert queue == 1 and (msg[0], msg[1], msg[4]) == ("config", 1, worker_config(sup.config))


def test_a_delta_that_reorders_asks_for_the_whole_configuration_and_changes_nothing() -> None:
    worker, pipe, config = worker_at_version_1()
    reordered = parse_config({"overhead": config.overhead,
                              "classes": [c.model_dump() for c in reversed(config.classes)]})
    delta = config.diff(reordered)
    assert delta.order is not None
    before = shaper_state(worker.shaper, sample_packets(config))
    worker.handle_message(("delta", 2, delta, {}, True))
    assert pipe.sent[-1] == ("resync", 2, 1) and not any(m[0] == "error" for m in pipe.sent)
    assert shaper_state(worker.shaper, sample_packets(config)) == before
